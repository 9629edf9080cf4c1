"""`train_and_evaluate(config, workdir)`: the whole run behind `launch.py`.

Resume order: the newest complete checkpoint in `workdir/checkpoints` if there is one, else a
fresh start from `config.seed`. Data and randomness depend only on (seed, step), so a resumed run
continues exactly where the interrupted one would have been.
"""

from __future__ import annotations

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
from anira_jax import checkpoint, evaluation, experiment, reporting, sharding
from anira_jax import train_state as state_lib
from anira_jax.anira import Anira, num_params
from anira_jax.training import preemption
from anira_jax.training import step as step_lib


class NonFiniteLossError(RuntimeError):
  """Training produced a non-finite loss or gradient."""


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


def compile_training(anira: Anira, tx, mesh, train_key, accumulation_steps: int = 1,
                     ingredients=None):
  """(create, abstract_state, state_sharding, train_step) for a mesh.

  The state is born sharded — shapes first (`eval_shape`), then shardings, then a jitted
  initialisation with those output shardings — and the train step keeps it so (donated).
  """
  create = functools.partial(state_lib.create, anira, tx)
  abstract_state = jax.eval_shape(create, jax.random.key(0))
  state_sharding = sharding.state_shardings(mesh, abstract_state)
  train_step = jax.jit(
      functools.partial(step_lib.train_step, anira=anira, tx=tx, key=train_key,
                        accumulation_steps=accumulation_steps,
                        **({} if ingredients is None else {'ingredients': ingredients})),
      in_shardings=(state_sharding, sharding.batch_sharding(mesh)),
      out_shardings=(state_sharding, sharding.replicated(mesh)), donate_argnums=0)
  return (jax.jit(create, out_shardings=state_sharding), abstract_state, state_sharding,
          train_step)


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str | pathlib.Path) -> dict:
  """Trains (or resumes) the configured model, then writes results.json and figures.

  Raises `preemption.Preempted` after saving a checkpoint when the process receives SIGTERM.
  """
  exp = experiment.build(config)
  anira = exp.anira
  lead = jax.process_index() == 0
  workdir = pathlib.Path(workdir)
  workdir.mkdir(parents=True, exist_ok=True)
  if lead:
    (workdir / 'config.json').write_text(config.to_json_best_effort(indent=2) + '\n')
  mesh = sharding.make_mesh(config)
  sets = evaluation.eval_sets(exp, workdir)
  tx = state_lib.make_optimizer(config.train)
  init_key, train_key = jax.random.split(jax.random.key(config.seed))

  create, abstract_state, state_sharding, train_step = compile_training(
      anira, tx, mesh, train_key, config.train.grad_accumulation_steps, exp.ingredients)
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

  stream = tasks.Stream(exp.task, exp.train_sizes, config.train.batch_size // jax.process_count(),
                        seed=config.seed, host_index=jax.process_index(),
                        host_count=jax.process_count(), annotate=False)
  writer = reporting.MetricWriter(workdir) if lead else None
  config_json = config.to_json_best_effort()
  start, total = int(state.step), config.train.steps
  bar = tqdm.tqdm(total=total, initial=start, desc='train', unit='step', dynamic_ncols=True,
                  disable=not lead)
  watch = preemption.PreemptionWatch(config.train.preemption_check_every)
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
        results = evaluation.evaluate(exp, state.params, sets, step, mesh=mesh)
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
        raise preemption.Preempted(f'SIGTERM: saved checkpoint step {step} in '
                                   f'{mngr.directory}; run the same command again to resume')
  finally:
    watch.close()
    bar.close()
    mngr.wait_until_finished()
    if writer:
      writer.close()

  _check_finite(state, last_saved, workdir)
  results = evaluation.evaluate(exp, state.params, sets, int(state.step),
                                config.eval.max_depth or None, mesh=mesh)
  if lead:
    reporting.write_results(workdir, results)
    reporting.plot_per_size(results, workdir / 'accuracy_per_size.png')
    for name, r in results['splits'].items():
      scalars = {k: v for k, v in r.items() if isinstance(v, (int, float))}
      logging.info('final %s: %s', name, json.dumps(scalars))
    print(reporting.table(results), flush=True)
  return results
