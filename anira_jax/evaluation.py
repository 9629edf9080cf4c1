"""Evaluation of a model on named splits of a task: accuracy and compute per split and size.

Runs the inference loop (`lax.while_loop`) batch by batch and aggregates on the host. The result
for a split is the dictionary written into `results.json`:

  token_accuracy, sequence_accuracy      over answer tokens (loss_mask), and whole answers
  mean_depth, mean_expected_depth        executed depth, and E_q[d], over answer tokens
  depth_histogram                        {depth: answer-token count}
  execution_cost, decision_cost          Σ d_i and decision-head calls over real tokens (totals),
                                         with per-token means
  spearman_depth_complexity              Spearman ρ of executed depth vs the task's complexity
  per_size                               the same accuracy and depth figures for every size
"""

from __future__ import annotations

import collections
import functools
from collections.abc import Iterable

import jax
import numpy as np
import scipy.stats

from anira_jax.anira import Anira
from anira_jax.training import sharding
from anira_jax.training import step as step_lib

DEVICE_KEYS = ('tokens', 'targets', 'loss_mask', 'complexity')


def device_batch(batch: dict) -> dict:
  """The arrays the model's steps read (features and sizes stay on the host)."""
  return {k: batch[k] for k in DEVICE_KEYS}


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


@functools.lru_cache(maxsize=None)
def _jitted_eval_step(anira: Anira, max_depth: int | None, mesh):
  # Replicated outputs, so every process can read them even when params are sharded.
  out = None if mesh is None else jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
  return jax.jit(functools.partial(step_lib.eval_step, anira=anira, max_depth=max_depth),
                 out_shardings=out)


def sampling_key(batch_index: int) -> jax.Array:
  """The key of evaluation batch `batch_index`, for rule='sample': fixed, so evaluation and
  inspection draw the same halting steps, and different for every batch."""
  return jax.random.fold_in(jax.random.key(0), batch_index)


def spearman(x: np.ndarray, y: np.ndarray) -> float | None:
  """Spearman ρ, or None when either side is constant (ρ is undefined)."""
  if len(x) < 2 or np.ptp(x) == 0 or np.ptp(y) == 0:
    return None
  return float(scipy.stats.spearmanr(x, y).statistic)


def evaluate_batches(anira: Anira, params: dict, batches: Iterable[dict],
                     max_depth: int | None = None, mesh=None) -> dict:
  """The results dictionary of one split from its host batches (see the module docstring).

  Every process passes the same batches. With a `mesh`, each batch's rows are split over its
  devices and the outputs come back replicated to every process.
  """
  eval_step = _jitted_eval_step(anira, max_depth, mesh)
  answer_depth, answer_expected, answer_complexity, answer_correct = [], [], [], []
  per_size = collections.defaultdict(lambda: np.zeros(5))  # tokens, correct, seqs, ok seqs, depth
  execution_cost = decision_cost = real_tokens = 0
  iterations = []
  for index, batch in enumerate(batches):
    arrays = device_batch(batch)
    rows = len(arrays['tokens'])
    if mesh is not None:
      arrays = rows_over_mesh(arrays, mesh)
    out = jax.device_get(eval_step(params, arrays, sampling_key(index)))
    # Per-row outputs lose the padding rows; scalars (the loop's iteration count) are the batch's.
    out = {k: v[:rows] if np.ndim(v) else v for k, v in out.items()}
    mask = batch['loss_mask']
    real = batch['tokens'] != 0
    answer_depth.append(out['depth'][mask])
    answer_expected.append(out['expected_depth'][mask])
    answer_complexity.append(batch['complexity'][mask])
    answer_correct.append(out['correct'][mask])
    execution_cost += int(out['depth'][real].sum())
    decision_cost += int(out['head_calls'][real].sum())
    real_tokens += int(real.sum())
    iterations.append(int(out['iterations']))
    wrong_per_seq = (mask & ~out['correct']).sum(-1)
    for b, size in enumerate(batch['size']):
      if mask[b].any():
        per_size[int(size)] += [mask[b].sum(), (mask[b] & out['correct'][b]).sum(), 1,
                                wrong_per_seq[b] == 0, out['depth'][b][mask[b]].sum()]
  depth = np.concatenate(answer_depth)
  correct = np.concatenate(answer_correct)
  sequences = sum(v[2] for v in per_size.values())
  histogram = collections.Counter(depth.tolist())
  return {
      'examples': int(sequences),
      'answer_tokens': int(len(depth)),
      'token_accuracy': float(correct.mean()) if len(correct) else None,
      'sequence_accuracy': float(sum(v[3] for v in per_size.values()) / max(sequences, 1)),
      'mean_depth': float(depth.mean()) if len(depth) else None,
      'mean_expected_depth': float(np.concatenate(answer_expected).mean()) if len(depth) else None,
      'depth_histogram': {int(d): int(n) for d, n in sorted(histogram.items())},
      'execution_cost': execution_cost,
      'execution_cost_per_token': execution_cost / max(real_tokens, 1),
      'decision_cost': decision_cost,
      'decision_cost_per_token': decision_cost / max(real_tokens, 1),
      'spearman_depth_complexity': spearman(depth, np.concatenate(answer_complexity)),
      'mean_loop_iterations': float(np.mean(iterations)),
      'per_size': {size: {'examples': int(v[2]), 'token_accuracy': float(v[1] / max(v[0], 1)),
                          'sequence_accuracy': float(v[3] / max(v[2], 1)),
                          'mean_depth': float(v[4] / max(v[0], 1))}
                   for size, v in sorted(per_size.items())},
  }
