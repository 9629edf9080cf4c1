"""Inference-rule trade-off: accuracy against execution cost, one point per rule (DESIGN §6).

An online decider's rule (mode, median, threshold p) only changes when a token stops; tracing the
same examples under each rule gives one (cost, accuracy) point per rule, and the points no other
point beats on both axes form the Pareto front.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from anira_jax import trace as trace_lib
from anira_jax.trace import Trace


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
  """One point (`trace.summary`) per labelled trace (e.g. 'mode', 'median', 'threshold=0.3')
  and the front.

  Returns {'cost', 'accuracy', 'points': {label: summary}, 'pareto': [labels by cost]}.
  """
  points = {label: trace_lib.summary(t) for label, t in traces.items()}
  labels = [k for k, p in points.items() if p[accuracy] is not None]
  front = pareto_front([points[k][cost] for k in labels], [points[k][accuracy] for k in labels])
  return {'cost': cost, 'accuracy': accuracy, 'points': points,
          'pareto': [labels[i] for i in front]}
