"""The paper's study at CPU scale: ANIRA-E and ANIRA-O on BREVO, MANO and LANO, one table.

    python -m experiments.study --out=workdirs/study

Trains every (task, decider) pair as `experiments/TASK.py:decider=NAME` in OUT/TASK/NAME
(resuming when already there), runs `--mode=analyze`'s analyses on each, and writes OUT/study.md
and OUT/study.json. A run whose results.json and analysis.json already cover its last step is
read, not recomputed; delete them to redo it. As in the paper, both deciders share γ, b and the
learning rate: those of the task's config (b = 1.5 was chosen on parity with ANIRA-E);
`--config_overrides` changes them for every run at once.
"""

from __future__ import annotations

import json
import pathlib
import sys

from absl import app, flags, logging

import tasks
from anira_jax import checkpoint, host_memory
from anira_jax.analysis import run as analysis_run
from anira_jax.options import ConfigError
from anira_jax.reporting import fmt
from anira_jax.training import loop
from experiments import common

_OUT = flags.DEFINE_string('out', 'workdirs/study', 'Directory for the runs and the table.')
_TASKS = flags.DEFINE_list('tasks', ['brevo', 'mano', 'lano'], 'Experiments to run.')
_DECIDERS = flags.DEFINE_list('deciders', ['early', 'online'], 'Deciders to compare.')
_OVERRIDES = flags.DEFINE_list(
    'config_overrides', [], 'FIELD=VALUE pairs applied to every run, e.g. decider.gamma=0.02.')

STUDY_TASKS = ('brevo', 'mano', 'lano')


def apply_overrides(config, overrides: list[str]) -> None:
  """'a.b=value' strings onto `config`, each value typed like the field it replaces."""
  for item in overrides:
    path, eq, text = item.partition('=')
    if not eq:
      raise ValueError(f'--config_overrides entry {item!r}: expected FIELD=VALUE')
    *parents, leaf = path.split('.')
    node = config
    for key in parents:
      node = node[key]
    if leaf not in node:
      raise ValueError(f'--config_overrides: no config field {path!r}')
    if isinstance(node[leaf], bool):
      if text.lower() not in ('true', 'false'):
        raise ValueError(f'--config_overrides: {path}={text!r}, expected true or false')
      node[leaf] = text.lower() == 'true'
    else:
      node[leaf] = type(node[leaf])(text)


def shared_settings(config) -> str:
  d = config.decider[config.decider.name]
  return f'γ = {d.gamma:g}, b = {d.prior_base:g}, learning rate = {config.train.learning_rate:g}'


def row(task: str, decider: str, results: dict, analysis: dict) -> dict:
  """The study's numbers for one run, from results.json and analysis.json."""
  splits = results['splits']
  trained = analysis['generalization']['by_max_depth'][str(analysis['max_depth'])]
  correlations = analysis['alignment']['all']['correlations']
  # The task's headline feature (for LANO the paper's "expansion"), besides complexity.
  feature = (tasks.TASKS[task].alignment_features or (None,))[0]
  entry = {
      'task': task, 'decider': decider, 'step': results['step'],
      'accuracy': {name: s['token_accuracy'] for name, s in splits.items()},
      'mean_depth': {name: s['mean_depth'] for name, s in splits.items()},
      'depth_per_size': {size: s['mean_depth'] for size, s in trained['per_size'].items()},
      'spearman_complexity': correlations.get('complexity', {}).get('expected_depth', {})
                             .get('spearman'),
      'feature': feature,
      'spearman_feature': correlations.get(feature, {}).get('expected_depth', {}).get('spearman'),
  }
  if 'timing' in analysis:
    groups = analysis['timing']['groups']
    entry['timing'] = {'r2_size': analysis['timing']['r2_control'],
                       **{g: groups[g]['added'] for g in groups},
                       'samples': analysis['timing']['samples']}
  return entry


def finished_run(config, workdir: pathlib.Path) -> tuple[dict, dict]:
  """(results, analysis) of the run in `workdir`: trained (or resumed) and analysed, unless
  both files already describe its final step, which makes rerunning the study cheap."""
  stored = [workdir / 'results.json', workdir / 'analysis.json']
  if all(f.exists() for f in stored):
    results, analysis = (json.loads(f.read_text()) for f in stored)
    if results['step'] == analysis['step'] == config.train.steps:
      return results, analysis
  return loop.train_and_evaluate(config, workdir), analysis_run.analyze(workdir)


def table(rows: list[dict], settings: str) -> str:
  lines = [f'Shared settings: {settings}.', '',
           '| task | decider | acc in dist. | acc held-out | acc longer | depth in dist. '
           '| depth longer | ρ(E[d], complexity) | ρ(E[d], feature) |',
           '|---|---|---|---|---|---|---|---|---|']
  for r in rows:
    acc, depth = r['accuracy'], r['mean_depth']
    lines.append(
        f'| {r["task"]} | {r["decider"]} | {fmt(acc.get("in_distribution"))} '
        f'| {fmt(acc.get("held_out"))} | {fmt(acc.get("longer"))} '
        f'| {fmt(depth.get("in_distribution"), 2)} | {fmt(depth.get("longer"), 2)} '
        f'| {fmt(r["spearman_complexity"], 2)} '
        f'| {r["feature"]}: {fmt(r["spearman_feature"], 2)} |')
  lines += ['', 'Mean executed depth per size (answer tokens, trained D):', '',
            '| task | decider | depth per size |', '|---|---|---|']
  for r in rows:
    per_size = ' · '.join(f'{s}: {d:.2f}' for s, d in r['depth_per_size'].items())
    lines.append(f'| {r["task"]} | {r["decider"]} | {per_size} |')
  timed = [r for r in rows if 'timing' in r]
  if timed:
    lines += ['', 'Decision timing (BREVO, correct samples; R² of E[d] with graph size as a '
              'categorical control; "added" = gain over size alone):', '',
              '| decider | samples | R²(size) | static structure added | execution state added |',
              '|---|---|---|---|---|']
    for r in timed:
      t = r['timing']
      lines.append(f'| {r["decider"]} | {t["samples"]} | {fmt(t["r2_size"])} '
                   f'| {fmt(t.get("static_structure"))} | {fmt(t.get("execution_state"))} |')
  return '\n'.join(lines) + '\n'


def main(argv):
  del argv
  host_memory.reuse_freed_memory()  # as launch.py, before JAX starts
  if not flags.FLAGS['verbosity'].present:
    logging.set_verbosity(logging.WARNING)  # orbax is chatty at INFO
  try:
    run_study(pathlib.Path(_OUT.value))
  except (ConfigError, ValueError, checkpoint.CheckpointError, loop.NonFiniteLossError) as e:
    sys.exit(f'error: {e}')


def run_study(out: pathlib.Path) -> None:
  unknown = set(_TASKS.value) - set(STUDY_TASKS)
  if unknown:
    raise ValueError(f'--tasks: unknown {sorted(unknown)}; the study runs '
                     f'{", ".join(STUDY_TASKS)}')
  rows, settings = [], set()
  for task in _TASKS.value:
    module = common.load_module(pathlib.Path(__file__).parent / f'{task}.py')
    for decider in _DECIDERS.value:
      config = module.get_config(f'decider={decider}')
      apply_overrides(config, _OVERRIDES.value)
      settings.add(shared_settings(config))
      rows.append(row(task, decider, *finished_run(config, out / task / decider)))
  out.mkdir(parents=True, exist_ok=True)
  text = table(rows, '; '.join(sorted(settings)))
  (out / 'study.json').write_text(json.dumps(rows, indent=2) + '\n')
  (out / 'study.md').write_text(text)
  print(text)


if __name__ == '__main__':
  app.run(main)
