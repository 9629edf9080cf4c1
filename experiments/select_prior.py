"""The depth prior's γ and b per task, chosen on ANIRA-E as the paper chooses them.

    python -m experiments.select_prior --task=lano --out=workdirs/prior
    python -m experiments.select_prior --task=lano --scale=cpu --out=workdirs/prior
    python -m experiments.select_prior --task=brevo --design=corners --out=workdirs/prior

Trains ANIRA-E on one of the task's presets (`--scale`: the study's own, or the CPU default,
about a quarter of its training, when nine study-length runs are too long to wait for) with
seed 0 at every (γ, b) of a small grid, in OUT/TASK/SCALE/gG_bB (finished runs are read, not
retrained), and picks by validation accuracy and compute: the runs within `--tolerance` of the
best accuracy (the task's own accuracy: right generated answers for BREVO, the share of the
ceiling for LANO, token accuracy for MANO, on held-out examples of the training sizes), then
the one with the least mean executed depth. `--design=corners` trains five of the nine points,
the grid's four corners and its centre (a 2² factorial with a centre point), for a task whose
study runs are too long for nine. The paper tunes (learning rate, γ, b) on ANIRA-E
and reuses them unchanged for ANIRA-O; the chosen pair goes into the task's config
(`common.share_depth_prior`). Writes OUT/TASK/SCALE/prior.json and prior.md.
"""

from __future__ import annotations

import json
import pathlib
import sys

from absl import app, flags, logging

from anira_jax import checkpoint, host_memory
from anira_jax.analysis import study as study_lib
from anira_jax.options import ConfigError
from anira_jax.reporting import fmt
from anira_jax.training import loop
from experiments import common

_TASK = flags.DEFINE_enum('task', 'lano', ['lano', 'mano', 'brevo'], 'Task to tune.')
_SCALE = flags.DEFINE_enum('scale', 'study', ['study', 'cpu'], 'Preset the grid trains.')
_OUT = flags.DEFINE_string('out', 'workdirs/prior', 'Directory for the runs and the choice.')
_GAMMAS = flags.DEFINE_list('gammas', ['0.003', '0.01', '0.03'], 'γ values.')
_BASES = flags.DEFINE_list('bases', ['1.0', '1.5', '2.0'], 'b values (1 = uniform prior).')
_TOLERANCE = flags.DEFINE_float('tolerance', 0.01, 'Accuracy within which compute decides.')
_DESIGN = flags.DEFINE_enum('design', 'grid', ['grid', 'corners'],
                            'Every (γ, b) pair, or the four corners and the centre.')


def grid(task: str, scale: str, out: pathlib.Path,
         pairs: list[tuple[float, float]]) -> list[dict]:
  points = []
  for gamma, base in pairs:
    config = common.study_config(task, 'early', seed=0, scale=scale)
    common.share_depth_prior(config, gamma=gamma, prior_base=base)
    workdir = common.prior_run_dir(out, task, scale, gamma=gamma, prior_base=base)
    results_path = workdir / 'results.json'
    results = (json.loads(results_path.read_text()) if results_path.exists() else None)
    if results is None or results['step'] != config.train.steps:
      results = loop.train_and_evaluate(config, workdir)
    split = results['splits']['in_distribution']
    points.append({'gamma': gamma, 'prior_base': base,
                   'accuracy': study_lib.task_accuracy(split),
                   'mean_depth': split['mean_depth']})
  return points


def report(points: list[dict], chosen: dict) -> str:
  lines = ['| γ | b | validation accuracy | mean depth | chosen |', '|---|---|---|---|---|']
  for p in points:
    mark = 'yes' if p is chosen else ''
    lines.append(f'| {p["gamma"]:g} | {p["prior_base"]:g} | {fmt(p["accuracy"])} | '
                 f'{fmt(p["mean_depth"], 2)} | {mark} |')
  return '\n'.join(lines) + '\n'


def main(argv):
  del argv
  host_memory.reuse_freed_memory()
  if not flags.FLAGS['verbosity'].present:
    logging.set_verbosity(logging.WARNING)
  out = pathlib.Path(_OUT.value)
  try:
    pairs = study_lib.prior_design([float(g) for g in _GAMMAS.value],
                                   [float(b) for b in _BASES.value], _DESIGN.value)
    points = grid(_TASK.value, _SCALE.value, out, pairs)
  except (ConfigError, ValueError, checkpoint.CheckpointError, loop.NonFiniteLossError) as e:
    sys.exit(f'error: {e}')
  chosen = study_lib.choose_prior(points, _TOLERANCE.value)
  text = report(points, chosen)
  where = out / _TASK.value / _SCALE.value
  (where / 'prior.json').write_text(
      json.dumps({'points': points, 'chosen': chosen, 'tolerance': _TOLERANCE.value,
                  'scale': _SCALE.value, 'design': _DESIGN.value}, indent=2) + '\n')
  (where / 'prior.md').write_text(text)
  print(text)


if __name__ == '__main__':
  app.run(main)
