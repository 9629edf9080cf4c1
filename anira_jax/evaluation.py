"""Evaluation of a model on named splits of a task: its sets, its step, accuracy and compute.

An evaluation set is the same fixed examples at every evaluation. Its data depend on the run's
seed and the split's *name* (never its position among the splits), in either source:
- `eval.source='stream'`: the procedural stream seeded with (seed + EVAL_SEED_OFFSET,
  crc32(name));
- `'tfds'`: a TFDS array_record dataset built once under `eval.data_dir` (default
  WORKDIR/eval_sets), whose example j of split s is drawn from (seed + EVAL_SEED_OFFSET,
  crc32(s), j), so other runs and tools can share the exact set.

`evaluate` runs the inference loop (`lax.while_loop`) batch by batch, gathers each split's
per-token `Trace` on the host and reports `trace.split_results` per split: token and sequence
accuracy, mean executed depth and E_q[d] over answer tokens, the depth histogram, execution and
decision cost, Spearman ρ of depth against complexity, the same per size, and the loop's mean
iteration count; for tasks graded by generation (BREVO), also the generated answers' verdicts
(`generation`).
"""

from __future__ import annotations

import functools
import pathlib
import zlib
from collections.abc import Callable, Iterable

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils

import tasks
from anira_jax import generation, sharding
from anira_jax import trace as trace_lib
from anira_jax.anira import Anira
from anira_jax.deciders import base as deciders_base
from anira_jax.experiment import Experiment

EVAL_SEED_OFFSET = 1_000_003  # evaluation data never shares a stream with training data
DEVICE_KEYS = ('tokens', 'targets', 'loss_mask', 'complexity')
OPTIONAL_DEVICE_KEYS = ('vectors',)  # a vector task's real-valued inputs (`Example.vectors`)

Sets = dict[str, tuple[tuple[int, ...], Callable[[], Iterable[dict]]]]


def split_seed(seed: int, name: str) -> tuple[int, int]:
  """The stream seed of evaluation split `name` (or of any named set of sizes)."""
  return seed + EVAL_SEED_OFFSET, zlib.crc32(name.encode('utf-8'))


def split_stream(experiment: Experiment, name: str, sizes: tuple[int, ...],
                 batch_size: int) -> tasks.Stream:
  return tasks.Stream(experiment.task, sizes, batch_size,
                      seed=split_seed(experiment.config.seed, name))


def eval_sets(experiment: Experiment, workdir: str | pathlib.Path) -> Sets:
  """{split: (sizes, () -> batches)}: the same fixed examples at every evaluation."""
  config = experiment.config
  count = config.eval.num_batches
  if config.eval.source == 'tfds':
    # Imported only when asked for: TFDS takes seconds to import.
    from tasks import eval_sets as tfds_sets
    build = functools.partial(
        tfds_sets.build, config.task.name, config.task.options.to_dict(), experiment.splits,
        config.seed + EVAL_SEED_OFFSET, count * config.eval.batch_size,
        str(config.eval.data_dir or pathlib.Path(workdir) / 'eval_sets'))
    if jax.process_index() == 0:  # one writer; the others then find the set and only read
      build()
    multihost_utils.sync_global_devices('anira_jax eval sets built')
    builder = build()
    return {name: (sizes, functools.partial(tfds_sets.load_batches, builder, name,
                                            config.eval.batch_size))
            for name, sizes in experiment.splits.items()}
  result = {}
  for name, sizes in experiment.splits.items():
    stream = split_stream(experiment, name, sizes, config.eval.batch_size)
    # Drawn once and kept: annotations can cost a parse per example (`Task.annotate`).
    result[name] = (sizes, functools.cache(lambda stream=stream: [stream.batch(i)
                                                                  for i in range(count)]))
  return result


def device_batch(batch: dict) -> dict:
  """The arrays the model's steps read (features and sizes stay on the host)."""
  return ({k: batch[k] for k in DEVICE_KEYS}
          | {k: batch[k] for k in OPTIONAL_DEVICE_KEYS if k in batch})


def rows_over_mesh(arrays: dict[str, np.ndarray], mesh) -> dict[str, jax.Array]:
  """One host batch, the same on every process, as global arrays whose rows are split over
  every device of `mesh`: each device evaluates only its rows (passed as they are, the batch
  would be replicated and every device would compute all of it). Rows are padded with padding
  tokens (id 0, no answer) to a multiple of the device count; padding never runs, so the loop's
  iterations are those of the real rows, and the caller drops the padded rows' outputs."""
  rows, devices = len(arrays['tokens']), mesh.devices.size
  padded = -(-rows // devices) * devices
  split = sharding.batch_sharding(mesh)
  out = {}
  for name, x in arrays.items():
    x = np.pad(x, [(0, padded - rows)] + [(0, 0)] * (x.ndim - 1))
    out[name] = jax.make_array_from_callback(x.shape, split, lambda index, x=x: x[index])
  return out


def sampling_key(batch_index: int) -> jax.Array:
  """The key of evaluation batch `batch_index`, for rule='sample': fixed, so evaluation and
  inspection draw the same halting steps, and different for every batch."""
  return jax.random.fold_in(jax.random.key(0), batch_index)


def eval_step(params: dict, batch: dict, key: jax.Array, *, anira: Anira,
              max_depth: int | None = None) -> tuple[dict, jax.Array]:
  """Per-token outcomes of the inference loop on one batch, for the host's `Trace`, and the
  loop's iteration count; `key` is read only by rule='sample'."""
  out = anira.apply(params, batch['tokens'], train=False, key=key,
                    complexity_BxL=batch['complexity'], path='loop', max_depth=max_depth,
                    vectors_BxLxF=batch.get('vectors'))
  per_token = {
      'correct': jnp.argmax(out.logits_BxLxV, -1) == batch['targets'],
      'depth': out.trajectory.depth_BxL,
      'expected_depth': deciders_base.expected_depth(out.trajectory.decision.q_BxLxT),
      'head_calls': out.trajectory.decision.head_calls_BxL,
  }
  return per_token, out.trajectory.iterations


@functools.lru_cache(maxsize=None)
def _jitted_eval_step(anira: Anira, max_depth: int | None, mesh):
  # Replicated outputs, so every process can read them even when params are sharded.
  out = None if mesh is None else jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
  return jax.jit(functools.partial(eval_step, anira=anira, max_depth=max_depth),
                 out_shardings=out)


def trace_batches(anira: Anira, params: dict, batches: Iterable[dict],
                  max_depth: int | None = None, mesh=None) -> tuple[trace_lib.Trace, float]:
  """The per-token trace of the inference loop over host batches, and the loop's mean iteration
  count per batch. Every process passes the same batches; with a `mesh`, each batch's rows are
  split over its devices and the outputs come back replicated to every process."""
  step = _jitted_eval_step(anira, max_depth, mesh)
  traces, iterations = [], []
  for index, batch in enumerate(batches):
    arrays = device_batch(batch)
    rows = len(arrays['tokens'])
    if mesh is not None:
      arrays = rows_over_mesh(arrays, mesh)
    per_token, loop_iterations = jax.device_get(step(params, arrays, sampling_key(index)))
    per_token = {k: v[:rows] for k, v in per_token.items()}  # padding rows dropped
    iterations.append(int(loop_iterations))
    traces.append(trace_lib.Trace(
        tokens=batch['tokens'], max_depth=max_depth or anira.model_cfg.max_depth,
        loss_mask=batch['loss_mask'], annotated=batch.get('annotated'),
        complexity=batch['complexity'], size=batch['size'],
        features=batch.get('features', {}), **per_token))
  return trace_lib.concatenate(traces), float(np.mean(iterations))


def evaluate_batches(anira: Anira, params: dict, batches: Iterable[dict],
                     max_depth: int | None = None, mesh=None,
                     task: tasks.Task | None = None) -> dict:
  """The results dictionary of one split from its host batches (see the module docstring).

  With the `task`: for an ambiguous one (a `ceiling_feature`, LANO) the ceiling's accuracy and
  the model's share of it; for one graded by generation (`tasks.Generative`, BREVO)
  'generation': every row generated greedily after its prompt and graded
  (`generation.results`).
  """
  batches = list(batches)
  trace, mean_iterations = trace_batches(anira, params, batches, max_depth, mesh)
  ceiling = None if task is None else task.ceiling_feature
  results = {**trace_lib.split_results(trace, ceiling), 'mean_loop_iterations': mean_iterations}
  if isinstance(task, tasks.Generative):
    results['generation'] = generation.results(
        *generation_traces(anira, params, task, batches, max_depth, mesh))
  return results


def generation_traces(anira: Anira, params: dict, task: tasks.Generative, batches: Iterable[dict],
                      max_depth: int | None = None, mesh=None
                      ) -> tuple[trace_lib.Trace, dict[str, np.ndarray]]:
  """`generation.generate_trace` over host batches, concatenated."""
  traces, verdicts = zip(*(generation.generate_trace(anira, params, task, b, max_depth, mesh)
                           for b in batches))
  return (trace_lib.concatenate(traces),
          {name: np.concatenate([v[name] for v in verdicts]) for name in verdicts[0]})


def evaluate(experiment: Experiment, params: dict, sets: Sets, step: int,
             max_depth: int | None = None, mesh=None, anira: Anira | None = None) -> dict:
  """results.json's content: one entry per split of `sets` (from `eval_sets`); `anira` replaces
  the experiment's model (e.g. with another inference rule)."""
  anira = anira or experiment.anira
  splits = {name: {'sizes': list(sizes),
                   **evaluate_batches(anira, params, batches(), max_depth, mesh,
                                      experiment.task)}
            for name, (sizes, batches) in sets.items()}
  config = experiment.config
  return {'task': config.task.name, 'decider': config.decider.name, 'step': step,
          'max_depth': max_depth or anira.model_cfg.max_depth,
          'train_sizes': list(experiment.train_sizes), 'splits': splits}
