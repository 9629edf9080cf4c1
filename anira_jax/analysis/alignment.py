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


def shifted(values_BxL: np.ndarray, offset: int, fill=0) -> np.ndarray:
  """values[b, p + offset] at [b, p]; `fill` where p + offset leaves the sequence."""
  out = np.full_like(values_BxL, fill)
  length = values_BxL.shape[1]
  if offset >= 0:
    out[:, :length - offset] = values_BxL[:, offset:]
  else:
    out[:, -offset:] = values_BxL[:, :length + offset]
  return out


def correlations(trace: Trace, mask: np.ndarray, names: Sequence[str], offset: int = 0, *,
                 n_boot: int = 1000, level: float = 0.95, seed: int = 0) -> dict:
  """{feature: {'expected_depth' | 'executed_depth': `stats.correlation`}} of the depth at each
  position of `mask` against the feature `offset` positions away (0: the annotation of the
  prediction the depth decides, tasks.base's convention; -1: that of the token read there; +1:
  that of the next prediction). Positions whose neighbour is not annotated are left out."""
  columns = dict(trace.features)
  if trace.complexity is not None:
    columns['complexity'] = trace.complexity
  if offset:
    annotated = trace.analysis_mask
    mask = mask & shifted(annotated, offset, fill=False)
    columns = {name: shifted(values, offset) for name, values in columns.items()}
  groups = np.broadcast_to(np.arange(trace.batch_size)[:, None], mask.shape)[mask]
  depth, expected = trace.depth[mask], trace.expected_depth[mask]
  return {name: {target: stats.correlation(values, columns[name][mask], groups=groups,
                                           n_boot=n_boot, level=level, seed=seed)
                 for target, values in (('expected_depth', expected), ('executed_depth', depth))}
          for name in names}


def alignment(trace: Trace, mask: np.ndarray | None = None,
              features: Sequence[str] | None = None, *, offsets: Sequence[int] = (),
              n_boot: int = 1000, level: float = 0.95, seed: int = 0) -> dict:
  """Depth against difficulty over the tokens of `mask` (default: answer tokens).

  Returns {'tokens', 'sequences',
           'depth_per_complexity': depth_by_value(...) over the complexity annotation,
           'depth_per_size': depth_by_value(...) over each token's sequence size,
           'correlations': `correlations(...)` at offset 0,
           'neighbours': {offset: `correlations(...)`} for each of `offsets` (if any)}
  with 'complexity' first among the features (default: complexity and every trace feature).
  """
  mask = trace.answer_mask if mask is None else mask
  depth, expected = trace.depth[mask], trace.expected_depth[mask]
  result = {'tokens': int(mask.sum()), 'sequences': int(mask.any(-1).sum())}
  if trace.complexity is not None:
    result['depth_per_complexity'] = depth_by_value(depth, trace.complexity[mask], expected)
  if trace.size is not None:
    size_BxL = np.broadcast_to(trace.size[:, None], mask.shape)
    result['depth_per_size'] = depth_by_value(depth, size_BxL[mask], expected)
  names = ((['complexity'] if trace.complexity is not None else []) + list(trace.features)
           if features is None else list(features))
  stats_args = dict(n_boot=n_boot, level=level, seed=seed)
  result['correlations'] = correlations(trace, mask, names, **stats_args)
  if offsets:
    result['neighbours'] = {int(k): correlations(trace, mask, names, k, **stats_args)
                            for k in offsets}
  return result
