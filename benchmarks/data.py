"""Data speed: examples/s each task's stream generates, next to what its train step consumes.

    python -m benchmarks.data                        # every experiment's CPU default
    python -m benchmarks.data --steps=5              # fewer timed steps
    python -m benchmarks.data --configs=parity:ponder --batch_size=1024  # PonderNet's vectors

For each experiment config it times (a) `Stream.batch` at the training sizes and at the largest size
the config evaluates, there with and without the analysis features evaluation sets carry
(`Task.annotate`; training batches go without), (b) batches of the training sizes drawn one example
at a time (the default `Task.sample_batch`; the same path as (a) for tasks that do not draw whole
batches), and (c) the jitted train step on that config, in one run, then prints the ratio generation
/ consumption. Generation runs in a background thread during training (`loop._prefetch`), so a ratio
above 1 means training never waits for data; one generator thread serves one process. Figures are
also written to benchmarks/data.json.
"""

import functools

import jax
import numpy as np
from absl import app, flags

from benchmarks import timing

import tasks
from anira_jax import evaluation, experiment
from anira_jax import train_state as state_lib
from anira_jax.training import step as step_lib
from experiments import common

_STEPS = flags.DEFINE_integer('steps', 10, 'Timed repetitions of each measurement.')
_CONFIGS = flags.DEFINE_list('configs', ['parity', 'mano', 'brevo', 'clrs', 'lano'],
                             'Experiment names under experiments/, each NAME or NAME:ARG (the '
                             'config argument, as after launch.py --config=experiments/NAME.py:).')
_BATCH_SIZE = flags.DEFINE_integer('batch_size', 0, "Examples per batch; 0 = each config's own.")
_OUT = flags.DEFINE_string('out', 'benchmarks/data.json', 'Where to write the figures.')


def measure(name: str, repeats: int) -> dict:
  module, _, arg = name.partition(':')
  config = common.load_module(f'experiments/{module}.py').get_config(arg or None)
  if _BATCH_SIZE.value:
    config.train.batch_size = _BATCH_SIZE.value
  exp = experiment.build(config)
  task, anira, train_sizes = exp.task, exp.anira, exp.train_sizes
  batch_size = config.train.batch_size
  largest = max(max(s) for s in exp.splits.values())
  stream = tasks.Stream(task, train_sizes, batch_size, seed=0, annotate=False)
  big = tasks.Stream(task, (largest,), batch_size, seed=0)
  big_bare = tasks.Stream(task, (largest,), batch_size, seed=0, annotate=False)
  counter = iter(range(10**9))
  gen_train = timing.median_seconds(lambda: stream.batch(next(counter)), repeats)
  gen_largest = timing.median_seconds(lambda: big.batch(next(counter)), repeats)
  gen_largest_bare = timing.median_seconds(lambda: big_bare.batch(next(counter)), repeats)
  rng = np.random.default_rng(0)
  gen_one_by_one = timing.median_seconds(
      lambda: tasks.Task.sample_batch(task, rng, rng.choice(train_sizes, batch_size),
                                      stream.length), repeats)

  tx = state_lib.make_optimizer(config.train)
  state = state_lib.create(anira, tx, jax.random.key(0))
  train_step = jax.jit(functools.partial(step_lib.train_step, anira=anira, tx=tx,
                                         key=jax.random.key(1)))
  batch = jax.device_put(evaluation.device_batch(stream.batch(0)))
  holder = {'state': state}

  def one_step():
    holder['state'], metrics = train_step(holder['state'], batch)
    return metrics['loss']

  step_seconds = timing.median_seconds(one_step, repeats)
  return {
      'batch_size': batch_size,
      'train_sizes': [min(train_sizes), max(train_sizes)],
      'largest_eval_size': largest,
      'generated_examples_per_s_train_sizes': batch_size / gen_train,
      'generated_examples_per_s_largest_size': batch_size / gen_largest,
      'generated_examples_per_s_largest_size_bare': batch_size / gen_largest_bare,
      'generated_examples_per_s_one_at_a_time': batch_size / gen_one_by_one,
      'consumed_examples_per_s': batch_size / step_seconds,
      'headroom': step_seconds / gen_train,
  }


def main(argv):
  del argv
  results = {name: measure(name, _STEPS.value) for name in _CONFIGS.value}
  print(f'{"config":<15}{"gen ex/s (train)":>18}{"gen ex/s (largest)":>20}{"(bare)":>9}'
        f'{"one at a time":>15}{"step ex/s":>11}{"headroom":>10}')
  for name, r in results.items():
    print(f'{name:<15}{r["generated_examples_per_s_train_sizes"]:>18.0f}'
          f'{r["generated_examples_per_s_largest_size"]:>20.0f}'
          f'{r["generated_examples_per_s_largest_size_bare"]:>9.0f}'
          f'{r["generated_examples_per_s_one_at_a_time"]:>15.0f}'
          f'{r["consumed_examples_per_s"]:>11.0f}{r["headroom"]:>9.1f}x')
  timing.write_results(results, _OUT.value)


if __name__ == '__main__':
  app.run(main)
