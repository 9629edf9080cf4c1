"""Alignment: does the depth a model spends follow the difficulty of the token? (DESIGN §6)

Two views, both over answer tokens (or any mask):
- mean executed depth per difficulty value (the complexity annotation, and the sequence's size);
- per-token correlation of expected (and executed) depth with every complexity feature: Spearman
  and Pearson, with percentile bootstrap intervals that resample whole sequences (tokens of one
  sequence are not independent).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import scipy.stats

from anira_jax.inspect import Trace


def cluster_indices(groups: np.ndarray | None, n: int, rng: np.random.Generator,
                    n_boot: int):
  """Yields `n_boot` index arrays: resampled elements, or resampled whole groups."""
  if groups is None:
    for _ in range(n_boot):
      yield rng.integers(0, n, n)
    return
  order = np.argsort(groups, kind='stable')
  _, starts, counts = np.unique(groups[order], return_index=True, return_counts=True)
  for _ in range(n_boot):
    chosen = rng.integers(0, len(starts), len(starts))
    lengths = counts[chosen]
    offsets = np.arange(lengths.sum()) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    yield order[np.repeat(starts[chosen], lengths) + offsets]


def bootstrap_interval(statistic: Callable[..., float | None], arrays: Sequence[np.ndarray], *,
                       groups: np.ndarray | None = None, n_boot: int = 1000, level: float = 0.95,
                       seed: int = 0) -> list[float] | None:
  """Percentile interval [lo, hi] of `statistic(*arrays)` over bootstrap resamples.

  Resamples elements, or whole groups when `groups` (one id per element) is given. Resamples
  where the statistic is undefined (None) are dropped; None if too few remain.
  """
  if n_boot <= 0 or len(arrays[0]) < 2:
    return None
  rng = np.random.default_rng(seed)
  values = []
  for idx in cluster_indices(groups, len(arrays[0]), rng, n_boot):
    v = statistic(*(a[idx] for a in arrays))
    if v is not None and np.isfinite(v):
      values.append(v)
  if len(values) < max(10, n_boot // 2):
    return None
  alpha = (1 - level) / 2
  return [float(np.quantile(values, alpha)), float(np.quantile(values, 1 - alpha))]


def spearman(x: np.ndarray, y: np.ndarray) -> float | None:
  """Spearman ρ, or None when either side is constant."""
  if len(x) < 2 or np.ptp(x) == 0 or np.ptp(y) == 0:
    return None
  return float(scipy.stats.spearmanr(x, y).statistic)


def pearson(x: np.ndarray, y: np.ndarray) -> float | None:
  """Pearson r, or None when either side is constant."""
  if len(x) < 2 or np.ptp(x) == 0 or np.ptp(y) == 0:
    return None
  return float(np.corrcoef(x.astype(np.float64), y.astype(np.float64))[0, 1])


def correlation(x: np.ndarray, y: np.ndarray, *, groups: np.ndarray | None = None,
                n_boot: int = 1000, level: float = 0.95, seed: int = 0) -> dict:
  """{'tokens', 'spearman', 'spearman_ci', 'pearson', 'pearson_ci'} of x vs y (1-D arrays).

  Values are None where undefined (a constant side); intervals are `level` percentile
  bootstrap intervals (resampling `groups` whole when given).
  """
  x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
  result = {'tokens': int(len(x))}
  for name, fn in (('spearman', spearman), ('pearson', pearson)):
    result[name] = fn(x, y)
    result[f'{name}_ci'] = (None if result[name] is None else
                            bootstrap_interval(fn, (x, y), groups=groups, n_boot=n_boot,
                                               level=level, seed=seed))
  return result


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
      name: {target: correlation(values, columns[name][mask], groups=groups, n_boot=n_boot,
                                 level=level, seed=seed)
             for target, values in (('expected_depth', expected), ('executed_depth', depth))}
      for name in names}
  return result
