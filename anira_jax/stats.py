"""Correlations and bootstrap intervals, shared by evaluation and the analyses.

Tokens of one sequence are not independent, so intervals resample whole sequences (groups).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import scipy.stats


def spearman(x: np.ndarray, y: np.ndarray) -> float | None:
  """Spearman ρ, or None when either side is constant (ρ is undefined)."""
  if len(x) < 2 or np.ptp(x) == 0 or np.ptp(y) == 0:
    return None
  return float(scipy.stats.spearmanr(x, y).statistic)


def pearson(x: np.ndarray, y: np.ndarray) -> float | None:
  """Pearson r, or None when either side is constant."""
  if len(x) < 2 or np.ptp(x) == 0 or np.ptp(y) == 0:
    return None
  return float(np.corrcoef(x.astype(np.float64), y.astype(np.float64))[0, 1])


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
  return percentile_interval(values, level, min_count=max(10, n_boot // 2))


def percentile_interval(values: Sequence[float], level: float = 0.95, *,
                        min_count: int = 2) -> list[float] | None:
  """[lo, hi]: the central `level` share of `values`; None with fewer than `min_count`."""
  if len(values) < min_count:
    return None
  alpha = (1 - level) / 2
  return [float(np.quantile(values, alpha)), float(np.quantile(values, 1 - alpha))]


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
