"""`train_and_evaluate(config, workdir)`: the whole run behind `launch.py`.

Resume order: the newest complete checkpoint in `workdir/checkpoints` if there is one, else a
fresh start from `config.seed`. Data and randomness depend only on (seed, step), so a resumed run
continues exactly where the interrupted one would have been.
"""

from __future__ import annotations

import collections.abc
import concurrent.futures
import functools
import json
import pathlib
import time

import jax
import ml_collections
import numpy as np
import tqdm
from absl import logging

import tasks
from anira_jax import config as config_lib
from anira_jax import evaluation, reporting
from anira_jax.anira import Anira, num_params
from anira_jax.training import checkpoint
from anira_jax.training import state as state_lib
from anira_jax.training import step as step_lib

EVAL_SEED_OFFSET = 1_000_003  # evaluation data never shares a stream with training data


class NonFiniteLossError(RuntimeError):
  """Training produced a non-finite loss or gradient."""


def build(config: ml_collections.ConfigDict) -> tuple[tasks.Task, Anira]:
  """The task and model a (validated) config describes."""
  task = tasks.make(config.task.name, **config.task.options.to_dict())
  anira = Anira(config_lib.model_config(config, task.vocab_size),
                config_lib.decider_config(config))
  return task, anira


def eval_sets(config: ml_collections.ConfigDict, task: tasks.Task, workdir: pathlib.Path
              ) -> dict[str, tuple[tuple[int, ...], collections.abc.Callable]]:
  """{split: (sizes, () -> batches)}: the same fixed examples at every evaluation.

  `eval.source='stream'` draws them from the procedural stream with a seed of their own;
  `'tfds'` builds them once as a TFDS array_record dataset under `eval.data_dir` (default
  WORKDIR/eval_sets) and reads them back, so other runs and tools can share the exact set.
  """
  splits = config_lib.eval_splits(config)
  count = config.eval.num_batches
  if config.eval.source == 'tfds':
    from tasks import eval_sets as tfds_sets  # TFDS import is slow; only when asked for
    builder = tfds_sets.build(config.task.name, config.task.options.to_dict(), splits,
                              config.seed + EVAL_SEED_OFFSET, count * config.eval.batch_size,
                              str(config.eval.data_dir or workdir / 'eval_sets'))
    return {name: (sizes, functools.partial(tfds_sets.load_batches, builder, name,
                                            config.eval.batch_size))
            for name, sizes in splits.items()}
  result = {}
  for i, (name, sizes) in enumerate(splits.items()):
    stream = tasks.Stream(task, sizes, config.eval.batch_size,
                          seed=config.seed + EVAL_SEED_OFFSET + i)
    result[name] = (sizes, lambda stream=stream: map(stream.batch, range(count)))
  return result


def evaluate(config, anira, params, sets, step: int, max_depth: int | None = None) -> dict:
  """results.json's content: one entry per evaluation split of `sets` (from `eval_sets`)."""
  splits = {}
  for name, (sizes, batches) in sets.items():
    splits[name] = {'sizes': list(sizes),
                    **evaluation.evaluate_batches(anira, params, batches(), max_depth)}
  return {'task': config.task.name, 'decider': config.decider.name, 'step': step,
          'max_depth': max_depth or anira.model_cfg.max_depth,
          'train_sizes': list(config_lib.train_sizes(config)), 'splits': splits}


def _prefetch(stream: tasks.Stream, start: int, stop: int, depth: int = 4):
  """Batches start..stop-1, generated `depth` ahead in a background thread."""
  with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
    pending = [pool.submit(stream.batch, s) for s in range(start, min(start + depth, stop))]
    for step in range(start, stop):
      batch = pending.pop(0).result()
      if step + depth < stop:
        pending.append(pool.submit(stream.batch, step + depth))
      yield batch


def _check_finite(state, last_saved: int | None, workdir) -> None:
  skipped = int(state.skipped_steps)
  if skipped:
    where = (f'the last good checkpoint (step {last_saved}) is kept in {workdir}/checkpoints'
             if last_saved is not None else 'no checkpoint was written')
    raise NonFiniteLossError(
        f'training produced a non-finite loss or gradient in {skipped} step(s) before step '
        f'{int(state.step)}; {where}. Lower train.learning_rate or raise train.warmup_steps, '
        'then rerun (the run resumes from that checkpoint).')


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str | pathlib.Path) -> dict:
  """Trains (or resumes) the configured model, then writes results.json and figures."""
  config_lib.validate(config)
  workdir = pathlib.Path(workdir)
  workdir.mkdir(parents=True, exist_ok=True)
  (workdir / 'config.json').write_text(config.to_json_best_effort(indent=2) + '\n')
  task, anira = build(config)
  sets = eval_sets(config, task, workdir)
  tx = state_lib.make_optimizer(config.train)
  key = jax.random.key(config.seed)
  init_key, train_key = jax.random.split(key)

  state = state_lib.create(anira, tx, init_key)
  total_params, decider_params = num_params(state.params), num_params(state.params['decider'])
  print(f'{config.task.name} · decider {config.decider.name} · {total_params:,} parameters '
        f'(decider {100 * decider_params / total_params:.1f}%) · workdir {workdir}', flush=True)
  mngr = checkpoint.manager(workdir, keep=config.train.keep_checkpoints)
  last_saved = mngr.latest_step()
  if last_saved is not None:
    state = checkpoint.restore_state(mngr, last_saved, checkpoint.abstract(state))
    print(f'Resuming from checkpoint step {last_saved} ({mngr.directory})', flush=True)

  train_step = jax.jit(functools.partial(step_lib.train_step, anira=anira, tx=tx, key=train_key),
                       donate_argnums=0)
  stream = tasks.Stream(task, config_lib.train_sizes(config), config.train.batch_size,
                        seed=config.seed, host_index=jax.process_index(),
                        host_count=jax.process_count())
  writer = reporting.MetricWriter(workdir)
  config_json = config.to_json_best_effort()
  start = int(state.step)
  total = config.train.steps
  bar = tqdm.tqdm(total=total, initial=start, desc='train', unit='step', dynamic_ncols=True)
  tokens_since, time_since = 0.0, time.perf_counter()
  try:
    for step, batch in enumerate(_prefetch(stream, start, total), start=start + 1):
      state, metrics = train_step(state, evaluation.device_batch(batch))
      tokens_since += float(np.sum(batch['tokens'] != 0))
      if step % config.train.log_every == 0 or step == total:
        metrics = jax.device_get(metrics)
        now = time.perf_counter()
        metrics['tokens_per_second'] = tokens_since / (now - time_since)
        tokens_since, time_since = 0.0, now
        writer.write(step, metrics)
        bar.set_postfix(loss=f'{metrics["loss"]:.3f}', acc=f'{metrics["token_accuracy"]:.3f}',
                        depth=f'{metrics["mean_depth"]:.2f}',
                        tok_s=f'{metrics["tokens_per_second"]:.0f}')
      bar.update(1)
      if step % config.eval.every_steps == 0 and step != total:
        results = evaluate(config, anira, state.params, sets, step)
        for name, r in results['splits'].items():
          writer.write(step, {k: v for k, v in r.items() if isinstance(v, (int, float))},
                       prefix=f'eval/{name}')
      if step % config.train.checkpoint_every == 0 or step == total:
        _check_finite(state, last_saved, workdir)
        checkpoint.save(mngr, step, state, config_json)
        last_saved = step
  finally:
    bar.close()
    mngr.wait_until_finished()
    writer.close()

  _check_finite(state, last_saved, workdir)
  results = evaluate(config, anira, state.params, sets, int(state.step),
                     config.eval.max_depth or None)
  reporting.write_results(workdir, results)
  reporting.plot_per_size(results, workdir / 'accuracy_per_size.png')
  for name, r in results['splits'].items():
    writer_scalars = {k: v for k, v in r.items() if isinstance(v, (int, float))}
    logging.info('final %s: %s', name, json.dumps(writer_scalars))
  print(reporting.table(results), flush=True)
  return results
