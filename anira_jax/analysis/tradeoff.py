"""Inference-rule trade-off: accuracy against execution cost, one point per rule (DESIGN §6).

An online decider's rule (mode, median, threshold p) only changes when a token stops; tracing the
same examples under each rule gives one (cost, accuracy) point per rule, and the points no other
point beats on both axes form the Pareto front.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from anira_jax.inspect import Trace


def point(trace: Trace, mask: np.ndarray | None = None) -> dict:
  """{'token_accuracy', 'sequence_accuracy', 'mean_depth', 'mean_expected_depth' (answer
  tokens of `mask`), 'execution_cost_per_token' (mean executed depth over real tokens)}."""
  mask = trace.answer_mask if mask is None else mask
  has = mask.any(-1)
  ok = has & ~(mask & ~trace.correct).any(-1)
  n = int(mask.sum())
  return {'token_accuracy': float(trace.correct[mask].mean()) if n else None,
          'sequence_accuracy': float(ok[has].mean()) if has.any() else None,
          'mean_depth': float(trace.depth[mask].mean()) if n else None,
          'mean_expected_depth': float(trace.expected_depth[mask].mean()) if n else None,
          'execution_cost_per_token': float(trace.depth[trace.real].mean()),
          'answer_tokens': n}


def pareto_front(cost: np.ndarray, accuracy: np.ndarray) -> list[int]:
  """Indices of the points no other point dominates (cost <= and accuracy >=, one strictly),
  sorted by cost."""
  cost, accuracy = np.asarray(cost, float), np.asarray(accuracy, float)
  front = []
  for i in range(len(cost)):
    dominated = np.any((cost <= cost[i]) & (accuracy >= accuracy[i])
                       & ((cost < cost[i]) | (accuracy > accuracy[i])))
    if not dominated:
      front.append(i)
  return sorted(front, key=lambda i: (cost[i], -accuracy[i]))


def tradeoff(traces: Mapping[str, Trace], cost: str = 'execution_cost_per_token',
             accuracy: str = 'token_accuracy') -> dict:
  """One `point` per labelled trace (e.g. 'mode', 'median', 'threshold=0.3') and the front.

  Returns {'cost', 'accuracy', 'points': {label: point}, 'pareto': [labels by cost]}.
  """
  points = {label: point(t) for label, t in traces.items()}
  labels = [k for k, p in points.items() if p[accuracy] is not None]
  front = pareto_front([points[k][cost] for k in labels], [points[k][accuracy] for k in labels])
  return {'cost': cost, 'accuracy': accuracy, 'points': points,
          'pareto': [labels[i] for i in front]}
