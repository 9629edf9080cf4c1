"""`train_and_evaluate(config, workdir)`: the whole run behind `launch.py`.

Start-up, in an order that writes nothing before every check has passed: the config and the mesh
(`experiment.build`, `sharding.make_mesh`); the workdir's lock (`workdir.owned`: one run at a
time); the config against the one the workdir's run was started with (`workdir.check_resume`);
the newest checkpoint that restores and passes its checksums, else a fresh start: from
`config.pretrained`'s checkpoint when it names one, else from `config.seed`. Only then are
config.json written and metrics.jsonl cut back to the resumed step.

Resume order: the newest verified checkpoint in `workdir/checkpoints`; newer ones that fail
verification are moved to `workdir/rejected_checkpoints`. Data and randomness depend only on
(seed, step), so a resumed run continues exactly where the interrupted one would have been.
"""

from __future__ import annotations

import collections
import concurrent.futures
import functools
import json
import pathlib
import sys
import time

import jax
import ml_collections
import numpy as np
import tqdm
from absl import logging
from jax.experimental import multihost_utils

import tasks
from anira_jax import checkpoint, evaluation, experiment, gsm_symbolic, pretrained, reporting
from anira_jax import sharding
from anira_jax import train_state as state_lib
from anira_jax import workdir as workdir_lib
from anira_jax.anira import Anira, num_params
from anira_jax.training import preemption
from anira_jax.training import step as step_lib

# Steps the loop reads the non-finite counter behind the newest dispatched step: by then the
# device has computed it, so checking every step never waits on the step just dispatched.
NON_FINITE_LAG = 2


class NonFiniteLossError(RuntimeError):
  """Training produced a non-finite loss or gradient (first at `step`; the loop stopped at
  `stopped_at`). Nothing from that step on was applied or saved."""

  def __init__(self, step: int, stopped_at: int, last_saved: int | None, workdir):
    if last_saved is None:
      where, rerun = 'no checkpoint was written', 'the run starts again from step 0'
    else:
      where = f'the last good checkpoint (step {last_saved}) is kept in {workdir}/checkpoints'
      rerun = 'the run resumes from that checkpoint'
    super().__init__(
        f'training produced a non-finite loss or gradient at step {step} (not applied; stopped '
        f'at step {stopped_at}); {where}. Lower train.learning_rate or raise '
        f'train.warmup_steps, then rerun ({rerun}).')
    self.step, self.stopped_at = step, stopped_at


class _NonFiniteWatch:
  """Checks every step's count of skipped (non-finite) steps, `lag` dispatches after making it."""

  def __init__(self, skipped_at_start: int, lag: int = NON_FINITE_LAG):
    self.baseline, self.lag = skipped_at_start, lag
    self._pending = collections.deque()

  def push(self, step: int, skipped: jax.Array) -> int | None:
    """Queues the skip counter after `step` (or [k] counters after steps step-k+1..step, one
    dispatch's); returns the first non-finite step among those now read."""
    skipped.copy_to_host_async()
    self._pending.append((step, skipped))
    return self._read(keep=self.lag)

  def drain(self) -> int | None:
    return self._read(keep=0)

  def _read(self, keep: int) -> int | None:
    while len(self._pending) > keep:
      step, skipped = self._pending.popleft()
      counts = np.atleast_1d(np.asarray(skipped))
      over = np.flatnonzero(counts > self.baseline)
      if over.size:
        return step - len(counts) + 1 + int(over[0])
    return None


def _prefetch(stream: tasks.Stream, start: int, stop: int, depth: int = 4):
  """Batches start..stop-1, generated `depth` ahead in a background thread."""
  with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
    pending = [pool.submit(stream.batch, s) for s in range(start, min(start + depth, stop))]
    for step in range(start, stop):
      batch = pending.pop(0).result()
      if step + depth < stop:
        pending.append(pool.submit(stream.batch, step + depth))
      yield batch


def dispatches(stream: tasks.Stream, start: int, stop: int, per_dispatch: int, mesh):
  """(last step, host batches, global batch) for each dispatch of steps start+1..stop: the
  batches `compile_training`'s train step takes, stacked [k, ...] when `per_dispatch` > 1. Every
  dispatch ends at a multiple of `per_dispatch` or at `stop`, so a run resumed at any step
  realigns after its first one, and the loop's intervals (multiples of `per_dispatch`) fall on
  dispatch ends."""
  stacked = per_dispatch > 1
  batches = _prefetch(stream, start, stop, depth=max(4, 2 * per_dispatch))
  step = start
  while step < stop:
    end = min((step // per_dispatch + 1) * per_dispatch, stop)
    host = [next(batches) for _ in range(end - step)]
    local = [evaluation.device_batch(batch) for batch in host]
    local = jax.tree.map(lambda *leaves: np.stack(leaves), *local) if stacked else local[0]
    yield end, host, sharding.global_batch(local, mesh, stacked)
    step = end


def train_stream(exp: experiment.Experiment) -> tasks.Stream:
  """This host's share of the training batches: the task at its training sizes, weighted and
  opened by the config's curriculum, without the evaluation-only annotations."""
  config = exp.config
  return tasks.Stream(exp.task, exp.train_sizes, config.train.batch_size // jax.process_count(),
                      seed=config.seed, host_index=jax.process_index(),
                      host_count=jax.process_count(), annotate=False,
                      curriculum_steps=config.train.curriculum_steps,
                      size_weights=exp.train_size_weights)


def compile_training(anira: Anira, tx, mesh, train_key, accumulation_steps: int = 1,
                     ingredients=None, steps_per_dispatch: int = 1):
  """(create, abstract_state, state_sharding, train_step) for a mesh.

  The state is born sharded — shapes first (`eval_shape`), then shardings, then a jitted
  initialisation with those output shardings — and the train step keeps it so (donated). With
  `steps_per_dispatch` > 1 the train step takes k stacked batches (`step.train_steps`; k up to
  `steps_per_dispatch`, each k compiled once).
  """
  create = functools.partial(state_lib.create, anira, tx)
  abstract_state = jax.eval_shape(create, jax.random.key(0))
  state_sharding = sharding.state_shardings(mesh, abstract_state)
  stacked = steps_per_dispatch > 1
  train_step = jax.jit(
      functools.partial(step_lib.train_steps if stacked else step_lib.train_step, anira=anira,
                        tx=tx, key=train_key, accumulation_steps=accumulation_steps,
                        **({} if ingredients is None else {'ingredients': ingredients})),
      in_shardings=(state_sharding, sharding.batch_sharding(mesh, stacked)),
      out_shardings=(state_sharding, sharding.replicated(mesh)), donate_argnums=0)
  return (jax.jit(create, out_shardings=state_sharding), abstract_state, state_sharding,
          train_step)


def _config_changes(config: ml_collections.ConfigDict, workdir: pathlib.Path, mngr,
                    allow: bool) -> dict[str, tuple]:
  """What differs from the config of the workdir's run (none without a checkpoint to resume);
  ConfigError if a field outside `workdir.RESUMABLE` changed and `allow` is False."""
  step = mngr.latest_step()
  if step is None:
    return {}
  stored = workdir_lib.stored_config(workdir)
  if stored is None:  # config.json lost: the checkpoint's own copy
    stored = checkpoint.restore_config(mngr, step)
  changes = workdir_lib.config_changes(stored, config)
  workdir_lib.check_resume(changes, step, workdir, allow)
  return changes


def _restore(mngr, abstract_state, state_sharding):
  """(step, state) of the newest verified checkpoint, (None, None) without one; newer ones that
  fail verification are reported and moved out of the way."""
  target = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                        abstract_state, state_sharding)
  step, state, rejected = checkpoint.restore_newest(mngr, target)
  if rejected:
    if jax.process_index() == 0:
      moved = checkpoint.set_aside(mngr, [s for s, _ in rejected])
      for (_, error), where in zip(rejected, moved):
        print(f'warning: {error}; moved to {where}', file=sys.stderr, flush=True)
    multihost_utils.sync_global_devices('anira_jax rejected checkpoints set aside')
    mngr.reload()
  return step, state


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str | pathlib.Path, *,
                       allow_config_change: bool = False) -> dict:
  """Trains (or resumes) the configured model, then writes results.json and figures.

  Raises `workdir.WorkdirError` if another run owns the workdir, `ConfigError` if the config
  differs from the workdir's run outside `workdir.RESUMABLE` (unless `allow_config_change`),
  `preemption.Preempted` after saving a checkpoint when the process receives SIGTERM, and
  `NonFiniteLossError` within a few steps of a non-finite loss.
  """
  exp = experiment.build(config)
  mesh = sharding.make_mesh(config)
  workdir = pathlib.Path(workdir)
  with workdir_lib.owned(workdir):
    return _train_and_evaluate(exp, mesh, workdir, allow_config_change)


def _train_and_evaluate(exp: experiment.Experiment, mesh, workdir: pathlib.Path,
                        allow_config_change: bool) -> dict:
  config, anira = exp.config, exp.anira
  lead = jax.process_index() == 0
  mngr = checkpoint.manager(workdir, keep=config.train.keep_checkpoints)
  changes = workdir_lib.on_lead(functools.partial(_config_changes, config, workdir, mngr,
                                                  allow_config_change))
  tx = state_lib.make_optimizer(config.train)
  init_key, train_key = jax.random.split(jax.random.key(config.seed))
  per_dispatch = config.train.steps_per_dispatch
  create, abstract_state, state_sharding, train_step = compile_training(
      anira, tx, mesh, train_key, config.train.grad_accumulation_steps, exp.ingredients,
      per_dispatch)
  last_saved, state = _restore(mngr, abstract_state, state_sharding)
  if state is None:  # a fresh start: from config.pretrained's checkpoint, or random
    state = (pretrained.train_state(anira, tx, exp.pretrained, init_key, state_sharding)
             if exp.pretrained.path else create(init_key))
  total_params, decider_params = num_params(state.params), num_params(state.params['decider'])
  if lead:
    workdir_lib.write_config(workdir, config)
    print(f'{config.task.name} · decider {config.decider.name} · {total_params:,} parameters '
          f'(decider {100 * decider_params / total_params:.1f}%) · mesh {dict(mesh.shape)} · '
          f'{jax.process_count()} process(es) · workdir {workdir}', flush=True)
    if last_saved is not None:
      print(f'Resuming from checkpoint step {last_saved} ({mngr.directory})', flush=True)
    if changes:
      workdir_lib.record_changes(workdir, changes, last_saved)
      print(f'Config changed on resume: {workdir_lib.describe_changes(changes)} (recorded in '
            f'{workdir / workdir_lib.CHANGES_FILE})', flush=True)
  sets = evaluation.eval_sets(exp, workdir)

  stream = train_stream(exp)
  writer = reporting.MetricWriter(workdir, start_step=last_saved or 0) if lead else None
  config_json = config.to_json_best_effort()
  start, total = int(state.step), config.train.steps
  bar = tqdm.tqdm(total=total, initial=start, desc='train', unit='step', dynamic_ncols=True,
                  disable=not lead)
  watch = preemption.PreemptionWatch(config.train.preemption_check_every)
  finite = _NonFiniteWatch(int(state.skipped_steps))
  tokens_since, time_since = 0.0, time.perf_counter()

  def stop_if_non_finite(bad_step: int | None, step: int) -> None:
    if bad_step is not None:
      raise NonFiniteLossError(bad_step, step, last_saved, workdir)

  try:
    for step, batches, device_batch in dispatches(stream, start, total, per_dispatch, mesh):
      state, metrics = train_step(state, device_batch)
      skipped = metrics.pop('skipped_steps_each', metrics['skipped_steps'])
      stop_if_non_finite(finite.push(step, skipped), step)
      tokens_since += sum(float(np.sum(b['tokens'] != 0)) for b in batches) * jax.process_count()
      if writer and (step % config.train.log_every == 0 or step == total):
        metrics = jax.device_get(metrics)
        now = time.perf_counter()
        metrics['tokens_per_second'] = tokens_since / (now - time_since)
        tokens_since, time_since = 0.0, now
        writer.write(step, metrics)
        bar.set_postfix(loss=f'{metrics["loss"]:.3f}', acc=f'{metrics["token_accuracy"]:.3f}',
                        depth=f'{metrics["mean_depth"]:.2f}',
                        tok_s=f'{metrics["tokens_per_second"]:.0f}')
      bar.update(len(batches))
      if step % config.eval.every_steps == 0 and step != total:
        results = evaluation.evaluate(exp, state.params, sets, step, mesh=mesh)
        for name, r in results['splits'].items():
          if writer:
            writer.write(step, {k: v for k, v in r.items() if isinstance(v, (int, float))},
                         prefix=f'eval/{name}')
      preempted = watch.should_stop(step)
      if step % config.train.checkpoint_every == 0 or step == total or preempted:
        stop_if_non_finite(finite.drain(), step)  # a saved state is always a finite one
        checkpoint.save(mngr, step, state, config_json)
        last_saved = step
      if preempted:
        raise preemption.Preempted(f'SIGTERM: saved checkpoint step {step} in '
                                   f'{mngr.directory}; run the same command again to resume')
  except (preemption.Preempted, NonFiniteLossError):
    raise
  except Exception as e:  # a full disk, a failed write: say what is kept
    kept = (f'checkpoint step {last_saved} is kept in {mngr.directory}; rerun the same command '
            'to resume from it' if last_saved is not None else 'no checkpoint was written')
    e.add_note(kept)
    raise
  finally:
    watch.close()
    bar.close()
    mngr.wait_until_finished()
    if writer:
      writer.close()

  results = evaluation.evaluate(exp, state.params, sets, int(state.step),
                                config.eval.max_depth or None, mesh=mesh)
  if exp.gsm_symbolic.path:
    results['gsm_symbolic'] = gsm_symbolic.evaluate(
        anira, state.params, exp.task.tokenizer, exp.gsm_symbolic, bos_id=exp.task.bos,
        eos_ids=(exp.task.eos,), mesh=mesh, out_dir=workdir / 'gsm_symbolic' if lead else None)
  if lead:
    reporting.write_results(workdir, results)
    reporting.plot_per_size(results, workdir / 'accuracy_per_size.png')
    for name, r in results['splits'].items():
      scalars = {k: v for k, v in r.items() if isinstance(v, (int, float))}
      logging.info('final %s: %s', name, json.dumps(scalars))
    print(reporting.table(results), flush=True)
    if 'gsm_symbolic' in results:
      print(gsm_symbolic.table(results['gsm_symbolic']), flush=True)
  return results
