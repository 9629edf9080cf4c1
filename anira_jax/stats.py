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


def seed_bootstrap(runs: Sequence[dict[str, np.ndarray]],
                   statistic: Callable[[dict[str, np.ndarray]], float | None], *,
                   group: str = 'sequence', n_boot: int = 1000, level: float = 0.95,
                   seed: int = 0, keep_draws: bool = False) -> dict:
  """A statistic over several training runs (seeds), with an interval over seeds and sequences.

  `runs` holds one record per run: arrays of equal length, `group` naming which sequence each
  row belongs to. The estimate is the mean over runs of `statistic(run)`; each bootstrap draw
  resamples the runs, then within each drawn run its sequences (whole), and takes the mean of
  the statistic over the drawn runs. So the interval holds both the seed-to-seed spread and the
  sampling of sequences. Returns {'mean', 'ci' ([lo, hi] or None), 'per_run'} and, with
  `keep_draws`, 'draws' (to compare two estimates: `difference`).
  """
  per_run = [statistic(r) for r in runs]
  defined = [v for v in per_run if v is not None]
  result = {'mean': float(np.mean(defined)) if defined else None, 'ci': None,
            'per_run': per_run}
  if n_boot <= 0 or not defined:
    return result
  rng = np.random.default_rng(seed)
  draws = []
  for _ in range(n_boot):
    values = []
    for i in rng.integers(0, len(runs), len(runs)):
      run = runs[i]
      idx = next(cluster_indices(run[group], len(run[group]), rng, 1))
      value = statistic({k: v[idx] for k, v in run.items()})
      if value is not None:
        values.append(value)
    if values:
      draws.append(float(np.mean(values)))
  result['ci'] = percentile_interval(draws, level, min_count=max(10, n_boot // 2))
  if keep_draws:
    result['draws'] = draws
  return result


def difference(a: dict, b: dict, level: float = 0.95) -> dict:
  """a − b for two independent `seed_bootstrap` results kept with their draws: {'mean', 'ci',
  'draws'}, so that two differences can be compared in turn."""
  if a['mean'] is None or b['mean'] is None:
    return {'mean': None, 'ci': None, 'draws': []}
  n = min(len(a['draws']), len(b['draws']))
  draws = (np.asarray(a['draws'][:n]) - np.asarray(b['draws'][:n])).tolist()
  return {'mean': a['mean'] - b['mean'],
          'ci': percentile_interval(draws, level, min_count=10), 'draws': draws}


def verdict(ci: Sequence[float] | None, margin: float) -> str:
  """Whether an effect claimed positive is there: 'holds' when the whole interval lies above
  `margin` (the smallest effect that matters), 'does not hold' when it lies below it (the
  effect is smaller than what matters, or of the other sign), 'inconclusive' when it straddles
  it (or is undefined)."""
  if ci is None:
    return 'inconclusive'
  if ci[0] > margin:
    return 'holds'
  if ci[1] < margin:
    return 'does not hold'
  return 'inconclusive'


def change_verdict(ci: Sequence[float] | None, margin: float) -> str:
  """Whether an effect claimed to exist in either direction is there: 'holds' when the whole
  interval lies beyond ±`margin`, 'does not hold' when it lies inside it (whatever changes is
  smaller than what matters), 'inconclusive' otherwise (or undefined)."""
  if ci is None:
    return 'inconclusive'
  if ci[0] > margin or ci[1] < -margin:
    return 'holds'
  if -margin < ci[0] and ci[1] < margin:
    return 'does not hold'
  return 'inconclusive'
