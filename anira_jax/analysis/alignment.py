"""Alignment: does the depth a model spends follow the difficulty of the token? (DESIGN §6)

Two views, both over answer tokens (or any mask):
- mean executed depth per difficulty value (the complexity annotation, and the sequence's size);
- per-token correlation of expected (and executed) depth with every complexity feature: Spearman
  and Pearson, with percentile bootstrap intervals that resample whole sequences (tokens of one
  sequence are not independent).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from anira_jax import stats
from anira_jax.trace import Trace


def depth_by_value(depth: np.ndarray, value: np.ndarray,
                   expected_depth: np.ndarray | None = None) -> dict:
  """Mean depth per distinct value: {'value', 'tokens', 'mean_depth', 'std_depth'
  [, 'mean_expected_depth']}, parallel lists sorted by value."""
  values, inverse, counts = np.unique(value, return_inverse=True, return_counts=True)
  depth = np.asarray(depth, np.float64)
  sums = np.bincount(inverse, depth, len(values))
  squares = np.bincount(inverse, depth ** 2, len(values))
  mean = sums / np.maximum(counts, 1)
  result = {'value': [float(v) for v in values], 'tokens': counts.tolist(),
            'mean_depth': mean.tolist(),
            'std_depth': np.sqrt(np.maximum(squares / np.maximum(counts, 1) - mean ** 2,
                                            0)).tolist()}
  if expected_depth is not None:
    result['mean_expected_depth'] = (np.bincount(inverse, expected_depth, len(values))
                                     / np.maximum(counts, 1)).tolist()
  return result


def alignment(trace: Trace, mask: np.ndarray | None = None,
              features: Sequence[str] | None = None, *, n_boot: int = 1000,
              level: float = 0.95, seed: int = 0) -> dict:
  """Depth against difficulty over the tokens of `mask` (default: answer tokens).

  Returns {'tokens', 'sequences',
           'depth_per_complexity': depth_by_value(...) over the complexity annotation,
           'depth_per_size': depth_by_value(...) over each token's sequence size,
           'correlations': {feature: {'expected_depth': correlation(...),
                                      'executed_depth': correlation(...)}}}
  with 'complexity' first among the features (default: complexity and every trace feature).
  """
  mask = trace.answer_mask if mask is None else mask
  seq_BxL = np.broadcast_to(np.arange(trace.batch_size)[:, None], mask.shape)
  groups = seq_BxL[mask]
  depth, expected = trace.depth[mask], trace.expected_depth[mask]
  result = {'tokens': int(mask.sum()), 'sequences': int(mask.any(-1).sum())}
  if trace.complexity is not None:
    result['depth_per_complexity'] = depth_by_value(depth, trace.complexity[mask], expected)
  if trace.size is not None:
    size_BxL = np.broadcast_to(trace.size[:, None], mask.shape)
    result['depth_per_size'] = depth_by_value(depth, size_BxL[mask], expected)
  columns = {}
  if trace.complexity is not None:
    columns['complexity'] = trace.complexity
  columns.update(trace.features)
  names = list(columns) if features is None else list(features)
  result['correlations'] = {
      name: {target: stats.correlation(values, columns[name][mask], groups=groups,
                                       n_boot=n_boot, level=level, seed=seed)
             for target, values in (('expected_depth', expected), ('executed_depth', depth))}
      for name in names}
  return result
