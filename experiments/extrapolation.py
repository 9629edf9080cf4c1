"""Which training ingredients make adaptive depth extrapolate: one run of the grid, or the grid.

    python launch.py --config=experiments/extrapolation.py
    python launch.py --config=experiments/extrapolation.py:task=mano,decider=online,seed=1
    python launch.py --config=experiments/extrapolation.py:decider=tied,iteration_loss=1,solvable=0.5
    python -m experiments.extrapolation --out=workdirs/extrapolation      # the whole grid

One run (`get_config`): a tiny recurrent model on
- `task=parity` (default): running parity behind a `<s>` marker, trained on lengths 1-16,
  evaluated on 1-16, 17-32 and 33-64 (without the marker, relative positions cap token accuracy
  near 0.96: a leading run of ones is one state, see `tasks/parity.py`);
- `task=mano`: MANO with addition only, mod 5 and no length markers (a marker names L, so an
  unseen L would bring an untrained token), trained on trees of L = 1-4 operations, evaluated
  on 1-4, 5-8 and 9-12 (a MANO-like DAG task as Altabaa et al.'s ADD-only graphs);
with RoPE (relative) positions by default, so nothing absolute ties the model to the trained
lengths, and these knobs (each off by default), the ingredients under study:
- `decider=NAME`: any registered decider (`tied` is Fan et al.'s T(n), `supervised` the oracle
  learned, `confidence` / `convergence` / `fixed_point` the zero-shot exits);
- `random_depth=batch|example`: a random depth cap per batch or example, uniform on 1..D;
- `iteration_loss=w`, `solvable=r`: per-iteration supervision, optionally only of tokens with
  complexity c <= t / r at iteration t;
- `position=rope|none|sinusoidal|learned`; `depth=D` (default 8); `seed`, `steps`, `quick`;
- `window=W`: every layer attends to a position and the W - 1 before it (0, the default: all
  earlier ones). Not from the papers above: it makes the model a scan whose reach grows by W - 1
  a layer, so no depth can answer every length and the one a token needs grows with its
  position, as in Fan et al.'s T(n), but chosen per token.

The grid (`python -m experiments.extrapolation`, module docstring of `main` below) trains a
factorial subset of these, three seeds each, evaluates every checkpoint at the trained D and at
a raised D, and writes `extrapolation.json`, `extrapolation.md` and a figure. Reruns resume
unfinished runs and read finished ones.
"""

from __future__ import annotations

import json
import pathlib
import time

import matplotlib

matplotlib.use('Agg')
import matplotlib.pyplot as plt  # noqa: E402  (after choosing the non-interactive backend)
import numpy as np  # noqa: E402
from absl import app, flags, logging  # noqa: E402

from anira_jax import config as config_lib  # noqa: E402
from anira_jax import deciders, host_memory, inspect  # noqa: E402
from anira_jax.training import loop  # noqa: E402
from experiments import common  # noqa: E402

TASKS = ('parity', 'mano')
# (train sizes, evaluation splits) per task; the first split is the training range.
SIZES = {
    'parity': ('1-16', {'in_distribution': '1-16', 'longer': '17-32', 'longest': '33-64'}),
    'mano': ('1-4', {'in_distribution': '1-4', 'longer': '5-8', 'longest': '9-12'}),
}
RAISED_DEPTH = {'parity': 64, 'mano': 64}  # T of the evaluation past the trained D


def get_config(arg=None):
  args = common.parse_arg(arg, task='parity', decider='online', seed=0, depth=8, position='rope',
                          random_depth='none', iteration_loss=0.0, solvable=0.0, steps=0,
                          width=64, window=0, quick=False)
  if args.task not in TASKS:
    raise ValueError(f'task={args.task!r}; choose one of {", ".join(TASKS)}')
  train, splits = SIZES[args.task]
  options = ({'ops': '+', 'modulus': 5, 'max_ops': 12, 'length_marker': False,
              'knowledge_augment': False} if args.task == 'mano' else {'bos': True})
  config = common.task_experiment(args.task, train=train, options=options, decider=args.decider)
  config.seed = args.seed
  config.eval.splits.update(splits)
  config.model.update(width=args.width, num_heads=4, max_depth=args.depth,
                      position=args.position, attention_window=args.window)
  config.train.update(steps=args.steps or 1500, batch_size=64, warmup_steps=100, log_every=100,
                      checkpoint_every=500, random_depth=args.random_depth,
                      iteration_loss=args.iteration_loss,
                      iteration_loss_solvable=args.solvable)
  config.eval.update(every_steps=1000, batch_size=128, num_batches=2)
  # ANIRA-E and -O share the paper's depth prior; the oracle and the supervised decider map the
  # largest training size to D; T(n) is the line through (0, 0) and (largest size, D).
  common.share_depth_prior(config, gamma=0.01, prior_base=1.5)
  config.decider.tied.slope = args.depth / max(config_lib.parse_sizes(train))
  if args.quick:
    common.make_quick(config)
  return config


# --- the grid ------------------------------------------------------------------------------
# A factorial subset: the deciders alone (the paper's negative result and its comparisons), then
# each ingredient on the deciders it concerns: per-iteration supervision on fixed depth and
# ANIRA-O, random depth on fixed depth (where Kuo et al. use it); depth tied to size is the
# `tied` decider, a raised test-time depth every evaluation at `RAISED_DEPTH`. Left out, and
# why (a training costs ~20 minutes on the shared 2-core CPU): every ingredient on every
# decider, and the supervised decider with per-iteration supervision (the single-ingredient
# rows already say which ingredient moves accuracy past the training range); the zero-shot exits
# as training deciders (they learn nothing: they are evaluated on the checkpoints trained with
# depth given from outside, one training for every exit and threshold); positions other than
# RoPE (absolute ones give the counting shortcut; `position=none` is a variant of a single run);
# ACT and PonderNet get one seed (the README's decider table already shows neither extrapolates).
GRID = {
    'parity': {
        'fixed + iteration loss': 'decider=fixed,iteration_loss=1,solvable=0.5',
        'online + iteration loss': 'decider=online,iteration_loss=1,solvable=0.5',
        'online': 'decider=online',
        'fixed': 'decider=fixed',
        'tied': 'decider=tied',
        'early': 'decider=early',
        'supervised': 'decider=supervised',
        'fixed + random depth': 'decider=fixed,random_depth=example',
        'act': 'decider=act',
        'ponder': 'decider=ponder',
        # A window of 2 (see `window`): D = 20 covers the training lengths' reach.
        'online + window': 'decider=online,depth=20,window=2',
        'tied + window': 'decider=tied,depth=20,window=2',
        'early + window': 'decider=early,depth=20,window=2',
        'fixed + iteration loss + window':
            'decider=fixed,depth=20,window=2,iteration_loss=1,solvable=1',
        'online + iteration loss + window':
            'decider=online,depth=20,window=2,iteration_loss=1,solvable=1',
    },
    'mano': {
        'online': 'decider=online',
        'fixed + iteration loss': 'decider=fixed,iteration_loss=1,solvable=2',
        'tied': 'decider=tied',
    },
}
SEEDS = (0, 1, 2)
# Trained with seed 0 only: ACT and PonderNet (see above); ANIRA-E with a window (its prelude
# sees a token and its neighbour only, so it cannot know how far back the answer lies: one seed
# says whether it learns the depth anyway); fixed depth with per-iteration supervision under a
# window (every token runs all 20 iterations: ~30 minutes a run on the shared CPU).
ONE_SEED = ('act', 'ponder', 'early + window', 'fixed + iteration loss + window')
EVAL_BATCHES = 1  # evaluation batches per split (of config.eval.batch_size = 128 sequences)
# Zero-shot exits (every registered decider with a threshold sweep), evaluated on the
# checkpoints of `EXIT_HOSTS`.
EXITS = {name: cls.sweep for name, cls in deciders.DECIDERS.items() if cls.sweep}
EXIT_HOSTS = ('fixed', 'tied')  # trained with depth given from outside: the exits decide there

SPLIT_NAMES = ('in_distribution', 'longer', 'longest')


def run_variant(task: str, label: str, seed: int) -> str:
  return f'task={task},{GRID[task][label]},seed={seed}'


def _slug(label: str) -> str:
  """'fixed + iteration loss' -> 'fixed+iteration_loss' (a directory name)."""
  return label.replace(' + ', '+').replace(', ', '+').replace(' ', '_')


def evaluations(run, task: str, label: str) -> dict:
  """{evaluator: {'T': depth, split: results}} of one checkpoint: its own decider at the
  trained D and at `RAISED_DEPTH`, and on checkpoints of parameter-free deciders every
  zero-shot exit and threshold at the raised D."""
  raised = RAISED_DEPTH[task]
  plan = [('own', None, None, run.max_depth), ('own', None, None, raised)]
  if label.split(' + ')[0].split(',')[0] in EXIT_HOSTS:
    plan += [(name, name, th, raised) for name, ths in EXITS.items() for th in ths]
  out = {}
  for name, decider, threshold, depth in plan:
    key = f'{name}@T={depth}' if threshold is None else f'{name}={threshold:g}@T={depth}'
    out[key] = {'decider': decider or run.config.decider.name, 'threshold': threshold,
                'T': depth, 'splits': {split: run.evaluate(split, max_depth=depth,
                                                           decider=decider,
                                                           threshold=threshold,
                                                           num_batches=EVAL_BATCHES)
                                       for split in SPLIT_NAMES}}
  return out


def one_run(out: pathlib.Path, task: str, label: str, seed: int) -> dict:
  """Train (or resume) one grid point and evaluate it; a finished, evaluated run is read back."""
  config = get_config(run_variant(task, label, seed))
  workdir = out / task / _slug(label) / f'seed{seed}'
  record_path = workdir / 'extrapolation.json'
  if record_path.exists():
    record = json.loads(record_path.read_text())
    if record['step'] == config.train.steps:
      return record
  start = time.perf_counter()
  results_path = workdir / 'results.json'
  finished = (results_path.exists()
              and json.loads(results_path.read_text())['step'] == config.train.steps)
  if not finished:
    loop.train_and_evaluate(config, workdir)
  seconds = time.perf_counter() - start
  run = inspect.load(workdir)
  record = {'task': task, 'label': label, 'seed': seed, 'variant': run_variant(task, label, seed),
            'step': run.step, 'train_seconds': seconds if not finished else None,
            'evaluations': evaluations(run, task, label)}
  record['seconds'] = time.perf_counter() - start
  text = json.dumps(record, indent=1)
  record_path.write_text(text + '\n')
  return json.loads(text)  # as a rerun reads it back (sizes as string keys), so the two mix


def _stats(values: list) -> dict | None:
  values = [v for v in values if v is not None]
  if not values:
    return None
  return {'mean': float(np.mean(values)), 'min': float(np.min(values)),
          'max': float(np.max(values)), 'seeds': values}


def aggregate(records: list[dict]) -> list[dict]:
  """One row per (task, training, evaluator): each split's figures over seeds (mean, min,
  max, per seed) and the per-size means."""
  groups: dict[tuple, list] = {}
  for r in records:
    for key, ev in r['evaluations'].items():
      groups.setdefault((r['task'], r['label'], key), []).append(ev)
  rows = []
  for (task, label, key), evs in groups.items():
    row = {'task': task, 'training': label, 'evaluator': key, 'decider': evs[0]['decider'],
           'threshold': evs[0]['threshold'], 'T': evs[0]['T'], 'seeds': len(evs), 'splits': {},
           'per_size': {}}
    for split in SPLIT_NAMES:
      row['splits'][split] = {m: _stats([e['splits'][split][m] for e in evs])
                              for m in ('token_accuracy', 'sequence_accuracy', 'mean_depth')}
      sizes = evs[0]['splits'][split]['per_size']
      for size in sizes:
        row['per_size'][int(size)] = {
            m: float(np.mean([e['splits'][split]['per_size'][size][m] for e in evs]))
            for m in ('token_accuracy', 'sequence_accuracy', 'mean_depth')}
    rows.append(row)
  return rows


def headline(rows: list[dict]) -> list[dict]:
  """The rows of the table: each training's own decider at both T, and per zero-shot exit the
  threshold with the best in-distribution token accuracy (ties: the cheaper one) — chosen
  without looking at the longer splits."""
  out = [r for r in rows if r['threshold'] is None]
  best: dict[tuple, dict] = {}
  for r in rows:
    if r['threshold'] is None:
      continue
    ind = r['splits']['in_distribution']
    score = (round(ind['token_accuracy']['mean'], 3), -ind['mean_depth']['mean'])
    k = (r['task'], r['training'], r['decider'])
    if k not in best or score > best[k][0]:
      best[k] = (score, r)
  return out + [r for _, r in best.values()]


def _cell(stat: dict | None, digits: int = 3, spread: bool = False) -> str:
  if stat is None:
    return '–'
  text = f'{stat["mean"]:.{digits}f}'
  return text + (f' [{stat["min"]:.{digits}f}–{stat["max"]:.{digits}f}]' if spread else '')


def table(rows: list[dict]) -> str:
  lines = ['| task | training | decider at test | T | token acc train sizes | token acc longer '
           '[seed range] | seq acc longer | token acc longest | seq acc longest | depth train '
           'sizes | depth longer | depth longest |', '|' + '---|' * 12]
  for r in rows:
    s = r['splits']
    exit_ = r['decider'] + (f' τ={r["threshold"]:g}' if r['threshold'] is not None else '')
    lines.append(
        f'| {r["task"]} | {r["training"]} | {exit_} | {r["T"]} '
        f'| {_cell(s["in_distribution"]["token_accuracy"])} '
        f'| {_cell(s["longer"]["token_accuracy"], spread=True)} '
        f'| {_cell(s["longer"]["sequence_accuracy"])} '
        f'| {_cell(s["longest"]["token_accuracy"])} '
        f'| {_cell(s["longest"]["sequence_accuracy"])} '
        f'| {_cell(s["in_distribution"]["mean_depth"], 2)} '
        f'| {_cell(s["longer"]["mean_depth"], 2)} | {_cell(s["longest"]["mean_depth"], 2)} |')
  return '\n'.join(lines) + '\n'


LEARNED_OR_ZERO_SHOT = ('online', 'early', 'act', 'ponder', 'supervised', 'confidence',
                        'convergence', 'fixed_point')


def target(rows: list[dict]) -> list[dict]:
  """Parity rows that reach the issue's target on 17-32 (token acc >= 0.99, sequence acc >= 0.9,
  mean over seeds) with a decider that chooses per token, depth growing with length."""
  hits = []
  for r in rows:
    s = r['splits']
    if r['task'] != 'parity' or r['decider'] not in LEARNED_OR_ZERO_SHOT:
      continue
    depth = [s[n]['mean_depth']['mean'] for n in SPLIT_NAMES]
    if (s['longer']['token_accuracy']['mean'] >= 0.99
        and s['longer']['sequence_accuracy']['mean'] >= 0.9 and depth[0] < depth[1] < depth[2]):
      hits.append(r)
  return hits


def figure(rows: list[dict], path: pathlib.Path, tasks_: list[str]) -> pathlib.Path:
  """Token accuracy and mean executed depth against length (size), one line per training at the
  raised T with its own decider, and the best zero-shot exit on each exit host."""
  raised_rows = [r for r in headline(rows) if r['T'] == RAISED_DEPTH[r['task']]]
  fig, axes = plt.subplots(len(tasks_), 2, figsize=(13, 4.2 * len(tasks_)), squeeze=False)
  colors = plt.get_cmap('tab20')
  for i, task in enumerate(tasks_):
    mine = [r for r in raised_rows if r['task'] == task]
    lo, hi = config_lib.parse_sizes(SIZES[task][0])[0], config_lib.parse_sizes(SIZES[task][0])[-1]
    for j, r in enumerate(mine):
      sizes = sorted(r['per_size'])
      name = r['training'] + ('' if r['threshold'] is None
                              else f' → {r["decider"]} τ={r["threshold"]:g}')
      style = '-' if r['threshold'] is None else '--'
      for ax, metric in zip(axes[i], ('token_accuracy', 'mean_depth')):
        ax.plot(sizes, [r['per_size'][s][metric] for s in sizes], style, color=colors(j % 20),
                lw=1.2, label=name)
    for ax, ylabel in zip(axes[i], ('token accuracy', 'mean executed depth')):
      ax.axvspan(lo, hi, color='0.9', zorder=0)
      ax.set_xlabel('length' if task == 'parity' else 'operations L')
      ax.set_ylabel(ylabel)
      ax.set_title(f'{task}, T = {RAISED_DEPTH[task]} at test (grey: training sizes)')
    axes[i][1].set_yscale('log', base=2)
    axes[i][0].legend(fontsize=6, ncol=2)
  return _save(fig, path)


def _save(fig, path):
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)
  return pathlib.Path(path)


def main(argv):
  del argv
  host_memory.reuse_freed_memory()  # as launch.py, before JAX starts
  if not flags.FLAGS['verbosity'].present:
    logging.set_verbosity(logging.WARNING)
  out = pathlib.Path(_OUT.value)
  tasks_ = _TASKS.value
  records = []
  start = time.perf_counter()
  for task in tasks_:
    labels = [label for label in (_LABELS.value or GRID[task]) if label in GRID[task]]
    for label in labels:
      for seed in (int(s) for s in _SEEDS.value):
        if label in ONE_SEED and seed != SEEDS[0]:
          continue
        records.append(one_run(out, task, label, seed))
        print(f'{task} · {label} · seed {seed}: {records[-1]["seconds"]:.0f} s', flush=True)
  rows = aggregate(records)
  out.mkdir(parents=True, exist_ok=True)
  trained = [r['train_seconds'] for r in records if r['train_seconds'] is not None]
  summary = {'runs': len(records), 'wall_seconds_this_call': time.perf_counter() - start,
             'train_seconds_recorded': float(np.sum(trained)) if trained else None,
             'seconds_recorded': float(np.sum([r['seconds'] for r in records])),
             'target_reached_by': [f'{r["training"]} → {r["evaluator"]}' for r in target(rows)]}
  (out / 'extrapolation.json').write_text(json.dumps({'summary': summary, 'rows': rows},
                                                     indent=1) + '\n')
  text = table(headline(rows))
  (out / 'extrapolation.md').write_text(text)
  figure(rows, out / 'extrapolation.png', tasks_)
  print(text)
  print(json.dumps(summary, indent=1))


if __name__ == '__main__':
  _OUT = flags.DEFINE_string('out', 'workdirs/extrapolation', 'Directory for runs and tables.')
  _TASKS = flags.DEFINE_list('tasks', list(TASKS), 'Tasks of the grid.')
  _LABELS = flags.DEFINE_list('labels', [], 'Only these trainings (GRID keys), in this order; '
                              'default all.')
  _SEEDS = flags.DEFINE_list('seeds', [str(s) for s in SEEDS], 'Seeds of every training.')
  app.run(main)
