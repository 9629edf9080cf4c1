"""The paper's study at CPU scale: ANIRA-E and ANIRA-O, three seeds each, on LANO, MANO (with and
without its length marker) and BREVO, with an interval on every figure and a verdict per finding.

    python -m experiments.study
    python -m experiments.study --cells=lano/early/1   # one run only

Every run is `experiments/TASK.py:scale=study,decider=NAME` with `--config.seed=S`, in
OUT/CELL/NAME/seed_S; a finished run is resumed or read, never retrained, and a run the prior grid
has already trained (ANIRA-E, seed 0, the chosen γ and b) starts from its copy. Each run's
per-sequence and per-token records (`analysis.study.run_records`: every split at the trained D and
at 2·D, with the trained decider and with every token forced to T iterations) are saved there as
records.npz, stamped with the run's config (records.json): records are read only while the config
they came from is the current one (`_same_run`) and `run_records` has not changed since
(`analysis.study.RECORDS_VERSION`; older ones are read again from the run's checkpoint). The
default OUT, results/study, is where the repository keeps the records (and nothing else of a run:
.gitignore), so a study that takes longer than one machine's session is finished across several.
Then the table pools the seeds: every figure is the mean over seeds with a 95% interval that
resamples seeds and, within each, sequences (`stats.seed_bootstrap`). A verdict compares an interval
with the smallest effect that matters (`stats.verdict`; the margins are `MARGINS`), and only for a
(cell, decider) that has learned its task: in-distribution accuracy at least `LEARNED` of the
ceiling (a model that cannot do the task says nothing about where it spends depth), over at least
`MIN_SEEDS` seeds (one seed's interval says nothing of how seeds differ). Both deciders
share the task's γ, b and learning rate, chosen on ANIRA-E (`experiments/select_prior.py`), as the
paper does. Writes OUT/study.md and OUT/study.json; `--table_only` writes them from the runs
finished so far, training nothing. Each (cell, decider)'s figures are kept in OUT/.figures/ and
recomputed only when one of its runs, or the code behind them, has changed (`_cached_figures`).
"""

from __future__ import annotations

import hashlib
import json
import pathlib
import pickle
import shutil
import sys
import time

from absl import app, flags, logging

import tasks
from anira_jax import checkpoint, experiment, host_memory, inspect, stats
from anira_jax import workdir as workdir_lib
from anira_jax.analysis import study as study_lib
from anira_jax.options import ConfigError
from anira_jax.reporting import fmt
from anira_jax.training import loop
from experiments import common

_OUT = flags.DEFINE_string('out', 'results/study', 'Directory for the runs and the table '
                           '(the repository keeps its records: module docstring).')
_CELLS = flags.DEFINE_list('cells', [], 'Only these runs, as CELL/DECIDER/SEED (e.g. '
                           'lano/early/0); the table then covers what is finished.')
_SEEDS = flags.DEFINE_list('seeds', ['0', '1', '2'], 'Seeds of every (cell, decider).')
_BOOT = flags.DEFINE_integer('n_boot', 1000, 'Bootstrap draws per interval.')
_TABLE_ONLY = flags.DEFINE_bool('table_only', False, 'Only tabulate the finished runs (those '
                                'with records); train nothing.')
_PRIOR_RUNS = flags.DEFINE_string('prior_runs', 'workdirs/prior', 'Where '
                                  'experiments.select_prior trained its grid: a run there with a '
                                  "cell's config is copied, not trained again ('': never).")

CELLS, DECIDERS, config_for = common.STUDY_CELLS, common.STUDY_DECIDERS, common.study_config
# The smallest effect that matters, per kind of figure (`stats.verdict`).
MARGINS = {'rho': 0.1, 'accuracy': 0.02, 'depth': 0.1, 'r2': 0.02}
# In-distribution accuracy, as a share of the task's ceiling, from which a run counts as learned.
LEARNED = 0.95
# Fewer seeds than this and an interval covers sequences only, not how seeds differ.
MIN_SEEDS = 2
NOT_LEARNED, ONE_SEED = 'withheld: not learned', 'withheld: one seed'
FIGURES_CACHE = '.figures'  # under OUT: each (cell, decider)'s figures (`_cached_figures`)
# The paper's numbers beside ours (DESIGN.md §1).
PAPER = {'lano_rho_expansion': {'early': 0.666, 'online': 0.456}, 'brevo_r2_size_early': 0.28}


def _same_run(stored: dict, config) -> bool:
  """Whether a run started with the `stored` config is a run of `config`: a field added to the
  config since counts at its default, and the cadence of logs, checkpoints and evaluation and
  the device layout do not matter (`workdir.RESUMABLE`); the number of steps does."""
  changes = workdir_lib.config_changes(stored, config)
  return not any(path == 'train.steps' or not workdir_lib.resumable(path) for path in changes)


def _copy_prior_run(config, cell: str, workdir: pathlib.Path,
                    prior_runs: pathlib.Path | None) -> None:
  """Starts a cell's run from the prior grid's finished run of the same config, if there is one.

  `experiments.select_prior` trains ANIRA-E with seed 0 on the study preset at every (γ, b) of
  its grid, so the chosen point is already the study's `CELL/early/seed_0` run: on MANO that is
  35 minutes of training not spent twice. The grid's runs are in `common.prior_run_dir`; only
  a finished one (results.json at the last step, no owner) whose config is this one is copied,
  and the study then resumes it at its last checkpoint, which trains nothing."""
  if prior_runs is None or (workdir / workdir_lib.CONFIG_FILE).exists():
    return
  prior = config.decider.early
  source = common.prior_run_dir(prior_runs, CELLS[cell][0], 'study', gamma=prior.gamma,
                                prior_base=prior.prior_base)
  results = source / 'results.json'
  stored = workdir_lib.stored_config(source)
  if (stored is None or not results.exists() or (source / workdir_lib.LOCK_FILE).exists()
      or json.loads(results.read_text())['step'] != config.train.steps
      or not _same_run(stored, config)):
    return
  shutil.copytree(source, workdir, dirs_exist_ok=True)
  logging.warning('%s: starts from %s (the prior grid trained this config)', workdir, source)


def run_cell(out: pathlib.Path, cell: str, decider: str, seed: int, train: bool = True,
             prior_runs: pathlib.Path | None = None) -> dict | None:
  """Trains (or resumes, or reads, or copies from `prior_runs`: `_copy_prior_run`) one run
  and returns its records; None for an unfinished run when not `train`."""
  config = config_for(cell, decider, seed)
  workdir = out / cell / decider / f'seed_{seed}'
  path = workdir / 'records.npz'
  stamp = workdir / 'records.json'
  if (path.exists() and stamp.exists()
      and _same_run(json.loads(stamp.read_text()), config)):
    records = study_lib.load(path)
    if study_lib.current(records):
      return records
    # An older analysis's records: read again from the run (its last checkpoint, if there).
  if not train:
    return None
  start = time.perf_counter()
  _copy_prior_run(config, cell, workdir, prior_runs)
  loop.train_and_evaluate(config, workdir)
  run = inspect.load(workdir)
  records = study_lib.run_records(run, raised_depth=2 * run.max_depth)
  study_lib.save(records, path)
  stamp.write_text(json.dumps(workdir_lib.as_json(config), indent=1))
  logging.warning('%s/%s/seed_%d: %.0f s', cell, decider, seed, time.perf_counter() - start)
  return records


def cell_figures(cell: str, decider: str, runs: list[dict], n_boot: int) -> dict:
  """Every figure of one (cell, decider) over its runs (seeds), each {'mean', 'ci',
  'per_run', 'draws'}."""
  config = config_for(cell, decider, 0)
  task = tasks.make(config.task.name, **config.task.options.to_dict())
  splits = list(experiment.eval_splits(config))
  d = config.model.max_depth
  kind = study_lib.accuracy_kind(task)
  seq = [r['sequences'] for r in runs]
  boot = dict(n_boot=n_boot, keep_draws=True)
  figures: dict = {'splits': splits, 'accuracy_kind': kind, 'max_depth': d, 'seeds': len(runs)}
  for i, name in enumerate(splits):
    for depth in (d, 2 * d):
      figures[f'accuracy/{name}/T{depth}'] = stats.seed_bootstrap(
          seq, study_lib.accuracy(i, depth, kind), seed=i, **boot)
      figures[f'accuracy/{name}/T{depth}/forced'] = stats.seed_bootstrap(
          seq, study_lib.accuracy(i, depth, kind, forced=True), seed=i, **boot)
      figures[f'depth/{name}/T{depth}'] = stats.seed_bootstrap(
          seq, study_lib.mean_depth(i, depth), seed=i, **boot)
  for i, name in enumerate(splits[1:], start=1):
    figures[f'drop/{name}'] = stats.seed_bootstrap(
        seq, study_lib.contrast(study_lib.accuracy(0, d, kind), study_lib.accuracy(i, d, kind)),
        **boot)
    figures[f'depth_rise/{name}'] = stats.seed_bootstrap(
        seq, study_lib.contrast(study_lib.mean_depth(i, d), study_lib.mean_depth(0, d)), **boot)
    figures[f'gain_at_2D/{name}'] = stats.seed_bootstrap(
        seq, study_lib.contrast(study_lib.accuracy(i, 2 * d, kind),
                                study_lib.accuracy(i, d, kind)), **boot)
    figures[f'forced_gain/{name}'] = stats.seed_bootstrap(
        seq, study_lib.contrast(study_lib.accuracy(i, 2 * d, kind, forced=True),
                                study_lib.accuracy(i, d, kind)), **boot)
  tokens = [r['tokens'] for r in runs]
  features = ['complexity', *task.alignment_features]
  for feature in features:
    for suffix in ('', '@-1', '@+1'):
      figures[f'rho/{feature}{suffix}'] = stats.seed_bootstrap(
          tokens, study_lib.spearman(feature + suffix), **boot)
  if task.feature_groups:
    timed = [r['timing'] for r in runs]
    figures['timing/samples'] = sum(len(set(t['sequence'].tolist())) for t in timed)
    keys = ['r2_control'] + [f'groups/{g}/{part}' for g in task.feature_groups
                             for part in ('added', 'unique')]
    for key in keys:
      figures[f'timing/{key}'] = stats.seed_bootstrap(
          timed, study_lib.variance_explained(task.feature_groups, task.timing_control, key),
          n_boot=max(n_boot // 5, 50), keep_draws=True)
  return figures


def _cached_figures(out: pathlib.Path, cell: str, decider: str, runs: dict[int, dict],
                    n_boot: int) -> dict:
  """`cell_figures` over `runs` ({seed: records}), kept in OUT/.figures/ (not in git) under a
  hash of everything they depend on: each run's records file, the number of draws and the source
  of the code that computes them. A table over many cells then recomputes only those whose runs
  changed, minutes less each time a run is added."""
  key = hashlib.sha256(json.dumps([cell, decider, n_boot, sorted(runs)]).encode())
  task_module = sys.modules[tasks.TASKS[config_for(cell, decider, 0).task.name].__module__]
  sources = [pathlib.Path(m.__file__) for m in (sys.modules[__name__], common, stats, task_module)]
  sources += sorted(pathlib.Path(study_lib.__file__).parent.glob('*.py'))  # all of analysis/
  for source in sources:
    key.update(source.read_bytes())
  for seed in sorted(runs):
    key.update((out / cell / decider / f'seed_{seed}' / 'records.npz').read_bytes())
  path = out / FIGURES_CACHE / f'{cell}.{decider}.pkl'
  if path.exists():
    stored = pickle.loads(path.read_bytes())
    if stored['key'] == key.hexdigest():
      return stored['figures']
  figures = cell_figures(cell, decider, [runs[seed] for seed in sorted(runs)], n_boot)
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_bytes(pickle.dumps({'key': key.hexdigest(), 'figures': figures}))
  return figures


def learned(f: dict) -> bool:
  """Whether a (cell, decider)'s mean in-distribution accuracy reaches `LEARNED` of the
  ceiling."""
  accuracy = f[f'accuracy/in_distribution/T{f["max_depth"]}']['mean']
  return accuracy is not None and accuracy >= LEARNED


def withheld(f: dict) -> str | None:
  """Why no claim is judged on a (cell, decider), if none is: it has not learned its task, or
  it has fewer than `MIN_SEEDS` seeds."""
  if not learned(f):
    return NOT_LEARNED
  return ONE_SEED if f['seeds'] < MIN_SEEDS else None


def verdicts(figures: dict) -> dict:
  """The paper's findings as claims on intervals (`stats.verdict`), per cell and decider, each
  withheld (`withheld`) where the decider has not learned the cell's task or has one seed."""
  out = {}
  for cell, by_decider in figures.items():
    for decider, f in by_decider.items():
      first = f'rho/{tasks_headline(cell)}'
      claims = {'alignment': stats.verdict(f[first]['ci'], MARGINS['rho'])}
      beyond = [s for s in f['splits'][1:] if s != 'held_out']
      for split in f['splits'][1:]:
        claims[f'accuracy falls on {split}'] = stats.verdict(f[f'drop/{split}']['ci'],
                                                            MARGINS['accuracy'])
      for split in beyond:
        claims[f'more depth on {split}'] = stats.verdict(f[f'depth_rise/{split}']['ci'],
                                                        MARGINS['depth'])
      for split in f['splits'][1:]:
        claims[f'every token at 2D answers {split} better'] = stats.verdict(
            f[f'forced_gain/{split}']['ci'], MARGINS['accuracy'])
      if reason := withheld(f):
        claims = dict.fromkeys(claims, reason)
      out.setdefault(cell, {})[decider] = claims
  return out


def cue_verdicts(figures: dict) -> dict:
  """Does a static cue change who allocates better? Per MANO cell (with and without the marker
  naming L), ANIRA-E's alignment minus ANIRA-O's, with its verdict (E aligns better); with both
  cells, that gap with the marker minus the gap without it, judged in either direction (the
  marker changes who allocates better)."""
  out, reasons = {}, []
  for cell in ('mano', 'mano_no_marker'):
    by_decider = figures.get(cell, {})
    if set(by_decider) != set(DECIDERS):
      continue
    key = f'rho/{tasks_headline(cell)}'
    e, o = by_decider['early'], by_decider['online']
    gap = stats.difference(e[key], o[key])
    reasons.append(withheld(e) or withheld(o))
    out[cell] = {**gap, 'claim': 'E aligns better',
                 'verdict': reasons[-1] or stats.verdict(gap['ci'], MARGINS['rho'])}
  if len(out) == 2:
    change = stats.difference(out['mano'], out['mano_no_marker'])
    out['marker: with − without'] = {
        **change, 'claim': 'the marker changes E − O',
        'verdict': reasons[0] or reasons[1] or stats.change_verdict(change['ci'], MARGINS['rho'])}
  return out


def tasks_headline(cell: str) -> str:
  """The feature alignment is judged on: the task's first (LANO: parser expansion)."""
  config = config_for(cell, 'early', 0)
  return tasks.TASKS[config.task.name].alignment_features[0]


def timing_verdicts(figures: dict) -> dict:
  """Finding 3 on BREVO: ANIRA-O's depth follows execution state more than ANIRA-E's, ANIRA-E's
  static structure more than ANIRA-O's (differences of independent estimates)."""
  if 'brevo' not in figures or set(figures['brevo']) != set(DECIDERS):
    return {}
  e, o = figures['brevo']['early'], figures['brevo']['online']
  reason = withheld(e) or withheld(o)
  judge = lambda ci: reason or stats.verdict(ci, MARGINS['r2'])  # noqa: E731
  state = stats.difference(o['timing/groups/execution_state/added'],
                           e['timing/groups/execution_state/added'])
  static = stats.difference(e['timing/groups/static_structure/added'],
                            o['timing/groups/static_structure/added'])
  size = stats.difference(e['timing/r2_control'], o['timing/r2_control'])
  return {'execution state: O − E': {**state, 'verdict': judge(state['ci'])},
          'static structure: E − O': {**static, 'verdict': judge(static['ci'])},
          'graph size alone: E − O': {**size, 'verdict': judge(size['ci'])}}


def _ci(x: dict, digits: int = 3) -> str:
  if x.get('mean') is None:
    return '–'
  ci = x.get('ci')
  return fmt(x['mean'], digits) + ('' if ci is None else
                                   f' [{fmt(ci[0], digits)}, {fmt(ci[1], digits)}]')


def _per_seed(x: dict) -> str:
  """Each seed's value, the ones below `LEARNED` in italics: the runs the mean hides."""
  values = x.get('per_run') or []
  return ' · '.join('–' if v is None else fmt(v) if v >= LEARNED else f'*{fmt(v)}*'
                    for v in values) or '–'


def table(figures: dict, verdict_table: dict, timing: dict, cue: dict) -> str:
  """The study as markdown: accuracy, depth and headline alignment per (cell, decider); the
  verdicts; alignment with every feature at the three positions; accuracy with every token
  forced to D and 2·D iterations (can the model use the depth its decider does not spend?);
  the static cue (MANO); BREVO's decision timing."""
  lines = ['| cell | decider | seeds | accuracy kind | ' + ' | '.join(
      ['acc in dist.', 'per seed', 'acc held-out', 'acc longer', 'acc longer at 2D',
       'depth in dist.', 'depth longer', 'ρ(E[d], feature)']) + ' |', '|' + '---|' * 12]
  for cell, by_decider in figures.items():
    for decider, f in by_decider.items():
      d = f['max_depth']
      get = lambda key: f.get(key, {})  # noqa: E731
      lines.append(
          f'| {cell} | {decider} | {f["seeds"]} | {f["accuracy_kind"]} | '
          f'{_ci(get(f"accuracy/in_distribution/T{d}"))} | '
          f'{_per_seed(get(f"accuracy/in_distribution/T{d}"))} | '
          f'{_ci(get(f"accuracy/held_out/T{d}"))} | {_ci(get(f"accuracy/longer/T{d}"))} | '
          f'{_ci(get(f"accuracy/longer/T{2 * d}"))} | '
          f'{_ci(get(f"depth/in_distribution/T{d}"), 2)} | '
          f'{_ci(get(f"depth/longer/T{d}"), 2)} | '
          f'{tasks_headline(cell)}: {_ci(get("rho/" + tasks_headline(cell)), 2)}'
          f'{_paper_rho(cell, decider)} |')
  lines += ['', '| cell | decider | claim | verdict |', '|---|---|---|---|']
  for cell, by_decider in verdict_table.items():
    for decider, claims in by_decider.items():
      lines += [f'| {cell} | {decider} | {claim} | {v} |' for claim, v in claims.items()]
  lines += ['', '| cell | decider | feature | ρ at the predicted position | ρ one before | '
            'ρ one after |', '|---|---|---|---|---|---|']
  for cell, by_decider in figures.items():
    for decider, f in by_decider.items():
      for key in [k for k in f if k.startswith('rho/') and '@' not in k]:
        lines.append(f'| {cell} | {decider} | {key[4:]} | {_ci(f[key], 2)} | '
                     f'{_ci(f[key + "@-1"], 2)} | {_ci(f[key + "@+1"], 2)} |')
  lines += ['', '| cell | decider | split | acc, decider at D | every token at D | '
            'every token at 2D | 2D forced − decider at D |', '|---|---|---|---|---|---|---|']
  for cell, by_decider in figures.items():
    for decider, f in by_decider.items():
      d = f['max_depth']
      for split in f['splits']:
        gain = f.get(f'forced_gain/{split}', {})
        lines.append(f'| {cell} | {decider} | {split} | {_ci(f[f"accuracy/{split}/T{d}"])} | '
                     f'{_ci(f[f"accuracy/{split}/T{d}/forced"])} | '
                     f'{_ci(f[f"accuracy/{split}/T{2 * d}/forced"])} | {_ci(gain)} |')
  if cue:
    lines += ['', '| MANO cell | ρ(ANIRA-E) − ρ(ANIRA-O) [95% CI] | claim | verdict |',
              '|---|---|---|---|']
    lines += [f'| {cell} | {_ci(v, 2)} | {v["claim"]} | {v["verdict"]} |'
              for cell, v in cue.items()]
  if timing:
    lines += ['', '| BREVO decision timing (added R²) | difference [95% CI] | verdict |',
              '|---|---|---|']
    lines += [f'| {name} | {_ci(v)} | {v["verdict"]} |' for name, v in timing.items()]
  if 'brevo' in figures:
    lines += ['', '| BREVO decider | correct answers timed | R² of graph size alone | paper |',
              '|---|---|---|---|']
    lines += [f'| {decider} | {f["timing/samples"]} | {_ci(f["timing/r2_control"])} | '
              f'{PAPER["brevo_r2_size_early"] if decider == "early" else "–"} |'
              for decider, f in figures['brevo'].items()]
  return '\n'.join(lines) + '\n'


def _paper_rho(cell: str, decider: str) -> str:
  paper = PAPER['lano_rho_expansion'].get(decider) if cell == 'lano' else None
  return '' if paper is None else f' (paper {paper})'


def _json(figures):
  """The figures without bootstrap draws."""
  if isinstance(figures, dict):
    return {k: _json(v) for k, v in figures.items() if k != 'draws'}
  return figures


def run_study(out: pathlib.Path, cells: list[str], seeds: list[int], n_boot: int,
              train: bool = True, prior_runs: pathlib.Path | None = None) -> str:
  """Trains (or reads, or copies from `prior_runs`) the runs, then writes the table over every
  (cell, decider) with a finished run; with `cells`, only trains those."""
  wanted = [c.split('/') for c in cells]
  figures: dict = {}
  for cell in CELLS:
    for decider in DECIDERS:
      runs = {}
      for seed in seeds:
        if wanted and [cell, decider, str(seed)] not in wanted:
          continue
        runs[seed] = run_cell(out, cell, decider, seed, train=train, prior_runs=prior_runs)
      runs = {seed: r for seed, r in runs.items() if r is not None}
      if runs and not wanted:
        figures.setdefault(cell, {})[decider] = _cached_figures(out, cell, decider, runs, n_boot)
  if wanted:
    return 'ran ' + ', '.join(cells)
  verdict_table, timing, cue = verdicts(figures), timing_verdicts(figures), cue_verdicts(figures)
  text = table(figures, verdict_table, timing, cue)
  out.mkdir(parents=True, exist_ok=True)
  (out / 'study.json').write_text(json.dumps(
      {'figures': _json(figures), 'verdicts': verdict_table, 'timing': _json(timing),
       'cue': _json(cue), 'margins': MARGINS, 'learned': LEARNED, 'paper': PAPER},
      indent=2) + '\n')
  (out / 'study.md').write_text(text)
  return text


def main(argv):
  del argv
  host_memory.reuse_freed_memory()  # as launch.py, before JAX starts
  if not flags.FLAGS['verbosity'].present:
    logging.set_verbosity(logging.WARNING)  # orbax is chatty at INFO
  try:
    print(run_study(pathlib.Path(_OUT.value), _CELLS.value, [int(s) for s in _SEEDS.value],
                    _BOOT.value, train=not _TABLE_ONLY.value,
                    prior_runs=pathlib.Path(_PRIOR_RUNS.value) if _PRIOR_RUNS.value else None))
  except (ConfigError, ValueError, checkpoint.CheckpointError, loop.NonFiniteLossError) as e:
    sys.exit(f'error: {e}')


if __name__ == '__main__':
  app.run(main)
