"""Training throughput against steps per dispatch: what the host costs a small model's steps.

    python -m benchmarks.dispatch                       # PonderNet's parity, batch 64 and 1,024
    python -m benchmarks.dispatch --quick               # a smoke run
    python -m benchmarks.dispatch --config=experiments/mano.py:scale=study --batch_sizes=64

For each batch size and each k of `--steps_per_dispatch` it runs the training loop's own hot path
(`loop.dispatches`: the stream drawn ahead in a background thread, k batches stacked and put on
the mesh, then `compile_training`'s jitted step of k updates) for `--steps` steps after one
warm-up dispatch, and prints optimizer steps per second and the ratio to k = 1, measured in one
run. A small model on an accelerator is host-bound: its step takes less time than drawing a
batch and dispatching it, so a ratio well above 1 is what `config.train.steps_per_dispatch`
buys there; on a CPU, which computes the step itself, it stays near 1. Figures are also written
to benchmarks/dispatch.json.
"""

from __future__ import annotations

import time

import jax
from absl import app, flags

from benchmarks import timing

from anira_jax import experiment, sharding
from anira_jax import train_state as state_lib
from anira_jax.training import loop
from experiments import common

_CONFIG = flags.DEFINE_string('config', 'experiments/parity.py:ponder,decider=fixed',
                              'Experiment file, with its config argument after a colon.')
_BATCH_SIZES = flags.DEFINE_list('batch_sizes', ['64', '1024'], 'Global batch sizes.')
_PER_DISPATCH = flags.DEFINE_list('steps_per_dispatch', ['1', '8', '32'],
                                  'Optimizer steps per jitted call (k); the first is the base.')
_STEPS = flags.DEFINE_integer('steps', 512, 'Timed optimizer steps per (batch size, k).')
_QUICK = flags.DEFINE_bool('quick', False, 'Batch 16, k 1 and 4, 16 steps: a smoke run.')
_OUT = flags.DEFINE_string('out', 'benchmarks/dispatch.json', 'Where to write the figures.')


def steps_per_second(config, per_dispatch: int, steps: int) -> float:
  """Optimizer steps per second of the loop's hot path, after one warm-up dispatch."""
  config.train.steps_per_dispatch = per_dispatch
  # The loop's intervals must fall on dispatch ends; nothing here logs, saves or evaluates.
  config.train.log_every = config.train.checkpoint_every = per_dispatch
  config.eval.every_steps = per_dispatch
  exp = experiment.build(config)
  mesh = sharding.make_mesh(config)
  tx = state_lib.make_optimizer(config.train)
  create, _, _, train_step = loop.compile_training(
      exp.anira, tx, mesh, jax.random.key(1), config.train.grad_accumulation_steps,
      exp.ingredients, per_dispatch)
  state = create(jax.random.key(0))
  batches = loop.dispatches(loop.train_stream(exp), 0, per_dispatch + steps, per_dispatch, mesh)
  _, _, warm_up = next(batches)
  state, metrics = train_step(state, warm_up)  # compiles
  jax.block_until_ready(metrics)
  start = time.perf_counter()
  for _, _, batch in batches:
    state, metrics = train_step(state, batch)
  jax.block_until_ready(metrics)
  return steps / (time.perf_counter() - start)


def main(argv):
  del argv
  timing.set_up_host_memory()
  path, _, arg = _CONFIG.value.partition(':')
  batch_sizes = [16] if _QUICK.value else [int(b) for b in _BATCH_SIZES.value]
  ks = [1, 4] if _QUICK.value else [int(k) for k in _PER_DISPATCH.value]
  steps = 16 if _QUICK.value else _STEPS.value
  rows = []
  print(f'{jax.devices()[0].platform} · {_CONFIG.value} · {steps} steps each')
  print(f'{"batch":>6}{"k":>5}{"steps/s":>10}{"vs k=" + str(ks[0]):>9}')
  for batch_size in batch_sizes:
    base = None
    for k in ks:
      steps_k = -(-steps // k) * k  # whole dispatches
      config = common.load_module(path).get_config(arg or None)
      config.train.batch_size = batch_size
      rate = steps_per_second(config, k, steps_k)
      base = base or rate
      rows.append({'batch_size': batch_size, 'steps_per_dispatch': k, 'steps': steps_k,
                   'steps_per_second': rate, 'ratio': rate / base})
      print(f'{batch_size:>6}{k:>5}{rate:>10.0f}{rate / base:>8.2f}x', flush=True)
  timing.write_results({'platform': jax.devices()[0].platform, 'device': str(jax.devices()[0]),
                        'config': _CONFIG.value, 'rows': rows}, _OUT.value)


if __name__ == '__main__':
  app.run(main)
