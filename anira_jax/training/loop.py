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
import signal
import time

import jax
import ml_collections
import numpy as np
import tqdm
from absl import logging
from jax.experimental import multihost_utils

import tasks
from anira_jax import config as config_lib
from anira_jax import evaluation, reporting
from anira_jax.anira import Anira, num_params
from anira_jax.training import checkpoint, sharding
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
    build = functools.partial(
        tfds_sets.build, config.task.name, config.task.options.to_dict(), splits,
        config.seed + EVAL_SEED_OFFSET, count * config.eval.batch_size,
        str(config.eval.data_dir or workdir / 'eval_sets'))
    if jax.process_index() == 0:  # one writer; the others then find the set and only read
      build()
    multihost_utils.sync_global_devices('anira_jax eval sets built')
    builder = build()
    return {name: (sizes, functools.partial(tfds_sets.load_batches, builder, name,
                                            config.eval.batch_size))
            for name, sizes in splits.items()}
  result = {}
  for i, (name, sizes) in enumerate(splits.items()):
    stream = tasks.Stream(task, sizes, config.eval.batch_size,
                          seed=config.seed + EVAL_SEED_OFFSET + i)
    result[name] = (sizes, lambda stream=stream: map(stream.batch, range(count)))
  return result


def evaluate(config, anira, params, sets, step: int, max_depth: int | None = None,
             mesh=None) -> dict:
  """results.json's content: one entry per evaluation split of `sets` (from `eval_sets`)."""
  splits = {}
  for name, (sizes, batches) in sets.items():
    splits[name] = {'sizes': list(sizes),
                    **evaluation.evaluate_batches(anira, params, batches(), max_depth, mesh)}
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


def compile_training(anira: Anira, tx, mesh, train_key, accumulation_steps: int = 1):
  """(create, abstract_state, state_sharding, train_step) for a mesh.

  The state is born sharded — shapes first (`eval_shape`), then shardings, then a jitted
  initialisation with those output shardings — and the train step keeps it so (donated).
  """
  create = functools.partial(state_lib.create, anira, tx)
  abstract_state = jax.eval_shape(create, jax.random.key(0))
  state_sharding = sharding.state_shardings(mesh, abstract_state)
  train_step = jax.jit(
      functools.partial(step_lib.train_step, anira=anira, tx=tx, key=train_key,
                        accumulation_steps=accumulation_steps),
      in_shardings=(state_sharding, sharding.batch_sharding(mesh)),
      out_shardings=(state_sharding, sharding.replicated(mesh)), donate_argnums=0)
  return (jax.jit(create, out_shardings=state_sharding), abstract_state, state_sharding,
          train_step)


class _PreemptionWatch:
  """Turns SIGTERM into a request to checkpoint and stop at the next step boundary.

  With several processes, the request is shared every `every` steps (a tiny all-gather), so all
  processes stop — and save — at the same step.
  """

  def __init__(self, every: int):
    self.every = every
    self.requested = False
    self._previous = signal.signal(signal.SIGTERM, self._handle)

  def _handle(self, signum, frame):
    del signum, frame
    self.requested = True

  def should_stop(self, step: int) -> bool:
    if jax.process_count() == 1:
      return self.requested
    if step % self.every:
      return False
    return bool(np.any(multihost_utils.process_allgather(np.array(self.requested))))

  def close(self):
    signal.signal(signal.SIGTERM, self._previous)


class Preempted(Exception):
  """SIGTERM arrived; a checkpoint of the step reached was saved."""


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str | pathlib.Path) -> dict:
  """Trains (or resumes) the configured model, then writes results.json and figures.

  Raises Preempted after saving a checkpoint when the process receives SIGTERM.
  """
  config_lib.validate(config)
  lead = jax.process_index() == 0
  workdir = pathlib.Path(workdir)
  workdir.mkdir(parents=True, exist_ok=True)
  if lead:
    (workdir / 'config.json').write_text(config.to_json_best_effort(indent=2) + '\n')
  task, anira = build(config)
  mesh = sharding.make_mesh(config)
  sets = eval_sets(config, task, workdir)
  tx = state_lib.make_optimizer(config.train)
  init_key, train_key = jax.random.split(jax.random.key(config.seed))

  create, abstract_state, state_sharding, train_step = compile_training(
      anira, tx, mesh, train_key, config.train.grad_accumulation_steps)
  mngr = checkpoint.manager(workdir, keep=config.train.keep_checkpoints)
  last_saved = mngr.latest_step()
  if last_saved is None:
    state = create(init_key)
  else:
    target = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                          abstract_state, state_sharding)
    state = checkpoint.restore_state(mngr, last_saved, target)
  total_params, decider_params = num_params(state.params), num_params(state.params['decider'])
  if lead:
    print(f'{config.task.name} · decider {config.decider.name} · {total_params:,} parameters '
          f'(decider {100 * decider_params / total_params:.1f}%) · mesh {dict(mesh.shape)} · '
          f'{jax.process_count()} process(es) · workdir {workdir}', flush=True)
    if last_saved is not None:
      print(f'Resuming from checkpoint step {last_saved} ({mngr.directory})', flush=True)

  stream = tasks.Stream(task, config_lib.train_sizes(config),
                        config.train.batch_size // jax.process_count(), seed=config.seed,
                        host_index=jax.process_index(), host_count=jax.process_count())
  writer = reporting.MetricWriter(workdir) if lead else None
  config_json = config.to_json_best_effort()
  start, total = int(state.step), config.train.steps
  bar = tqdm.tqdm(total=total, initial=start, desc='train', unit='step', dynamic_ncols=True,
                  disable=not lead)
  watch = _PreemptionWatch(config.train.preemption_check_every)
  tokens_since, time_since = 0.0, time.perf_counter()
  try:
    for step, batch in enumerate(_prefetch(stream, start, total), start=start + 1):
      state, metrics = train_step(state, sharding.global_batch(evaluation.device_batch(batch),
                                                               mesh))
      tokens_since += float(np.sum(batch['tokens'] != 0)) * jax.process_count()
      if writer and (step % config.train.log_every == 0 or step == total):
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
        results = evaluate(config, anira, state.params, sets, step, mesh=mesh)
        for name, r in results['splits'].items():
          if writer:
            writer.write(step, {k: v for k, v in r.items() if isinstance(v, (int, float))},
                         prefix=f'eval/{name}')
      preempted = watch.should_stop(step)
      if step % config.train.checkpoint_every == 0 or step == total or preempted:
        _check_finite(state, last_saved, workdir)
        checkpoint.save(mngr, step, state, config_json)
        last_saved = step
      if preempted:
        raise Preempted(f'SIGTERM: saved checkpoint step {step} in {mngr.directory}; run the '
                        'same command again to resume')
  finally:
    watch.close()
    bar.close()
    mngr.wait_until_finished()
    if writer:
      writer.close()

  _check_finite(state, last_saved, workdir)
  results = evaluate(config, anira, state.params, sets, int(state.step),
                     config.eval.max_depth or None, mesh=mesh)
  if lead:
    reporting.write_results(workdir, results)
    reporting.plot_per_size(results, workdir / 'accuracy_per_size.png')
    for name, r in results['splits'].items():
      scalars = {k: v for k, v in r.items() if isinstance(v, (int, float))}
      logging.info('final %s: %s', name, json.dumps(scalars))
    print(reporting.table(results), flush=True)
  return results
