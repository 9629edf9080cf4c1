"""Trains one experiment once per decider and writes the comparison table (markdown + JSON).

    python -m experiments.decider_table --config=experiments/parity.py --out=workdirs/deciders

Each decider runs as `--config=FILE:decider=NAME` in OUT/NAME (resuming if already there), so
the table is reproducible from this one command and its seeds.
"""

import json
import pathlib

from absl import app, flags

from anira_jax import deciders, host_memory
from anira_jax.reporting import fmt
from anira_jax.training import loop
from experiments import common

_CONFIG = flags.DEFINE_string('config', 'experiments/parity.py', 'Experiment config file.')
_OUT = flags.DEFINE_string('out', 'workdirs/deciders', 'Directory for runs and the table.')
_DECIDERS = flags.DEFINE_list('deciders', sorted(deciders.DECIDERS), 'Deciders to compare.')


def table(results: dict[str, dict]) -> str:
  """One row per decider: accuracy in distribution and on the last (longest) split, depth, ρ."""
  rows = ['| decider | token acc (in dist.) | token acc (longest split) | mean depth (in dist.) '
          '| E_q[d] | Spearman ρ(depth, complexity) | execution cost / token |',
          '|---|---|---|---|---|---|---|']
  for name, r in results.items():
    splits = list(r['splits'].values())
    first, last = splits[0], splits[-1]
    rows.append(f'| {name} | {fmt(first["token_accuracy"])} | {fmt(last["token_accuracy"])} '
                f'| {fmt(first["mean_depth"], 2)} | {fmt(first["mean_expected_depth"], 2)} '
                f'| {fmt(first["spearman_depth_complexity"], 2)} '
                f'| {fmt(first["execution_cost_per_token"], 2)} |')
  return '\n'.join(rows)


def main(argv):
  del argv
  host_memory.reuse_freed_memory()  # as launch.py, before JAX starts
  out = pathlib.Path(_OUT.value)
  module = common.load_module(_CONFIG.value)
  results = {}
  for name in _DECIDERS.value:
    config = module.get_config(f'decider={name}')
    results[name] = loop.train_and_evaluate(config, out / name)
  out.mkdir(parents=True, exist_ok=True)
  (out / 'deciders.json').write_text(json.dumps(results, indent=2) + '\n')
  (out / 'deciders.md').write_text(table(results) + '\n')
  print(table(results))


if __name__ == '__main__':
  app.run(main)
