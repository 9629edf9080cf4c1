"""Decision timing: what does a decider's depth follow — static structure, or the state of the
execution at the token? (DESIGN §6, paper finding 3, on BREVO)

Expected depth is regressed on per-token features by ordinary least squares, with a categorical
control (one-hot, one level dropped, plus an intercept; graph size on BREVO), on the annotated
tokens of correctly answered samples only. The groups and the control are the task's
(`Task.feature_groups`, `Task.timing_control`). For each feature group (and each feature):
- `alone`: R² of the group without the control;
- `added`: R² gained by adding the group to the control-only model;
- `partial`: `added` / (1 − R²(control)), the share of what the control leaves unexplained;
- `unique`: R² lost by dropping the group from the full model (control + every group).
`r2_control` is what the control alone explains (graph size: ≈ 28% for ANIRA-E in the paper).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from anira_jax import stats
from anira_jax.trace import Trace


def dummies(values: np.ndarray) -> np.ndarray:
  """One-hot [N, K-1] of a categorical variable with K levels (the smallest level dropped)."""
  levels, inverse = np.unique(values, return_inverse=True)
  return np.eye(len(levels))[inverse][:, 1:]


def _standardized(columns: Sequence[np.ndarray], n: int) -> np.ndarray:
  """Columns scaled to unit variance; constant ones are dropped (the intercept holds them)."""
  kept = [(c - c.mean()) / c.std() for c in columns if n and c.std() > 0]
  return np.stack(kept, 1) if kept else np.zeros((n, 0))


def r2(y: np.ndarray, x: np.ndarray) -> float | None:
  """R² of the least-squares fit of y on [1, x]; None when y is constant."""
  y = np.asarray(y, np.float64)
  if len(y) < 2:
    return None
  total = np.sum((y - y.mean()) ** 2)
  if total <= 1e-12 * max(1.0, float(np.sum(y ** 2))):
    return None
  design = np.concatenate([np.ones((len(y), 1)), x], 1)
  coef, *_ = np.linalg.lstsq(design, y, rcond=None)
  residual = np.sum((y - design @ coef) ** 2)
  return float(max(0.0, 1.0 - residual / total))


def _sub(a, b):
  return None if a is None or b is None else a - b


def variance_explained(y: np.ndarray, features: Mapping[str, np.ndarray],
                       groups: Mapping[str, Sequence[str]], control: np.ndarray | None = None,
                       per_feature: bool = True) -> dict:
  """R² decomposition of y over feature groups, given a categorical control.

  Args:
    y: [N] the regressed quantity.
    features: name -> [N] values.
    groups: group name -> feature names (disjoint).
    control: [N] categorical values absorbed by dummies (None: no control).
  Returns: {'tokens', 'r2_control', 'r2_full', 'groups': {g: {'alone', 'added', 'partial',
  'unique'}}, 'features': {f: the same}} (see the module docstring); None where y is constant.
  """
  n = len(y)
  control_x = dummies(control) if control is not None else np.zeros((n, 0))
  column = {name: np.asarray(v, np.float64) for name, v in features.items()}

  def fit(names, with_control=True):
    x = _standardized([column[f] for f in names], n)
    return r2(y, np.concatenate([control_x, x], 1) if with_control else x)

  everything = [f for names in groups.values() for f in names]
  r2_control = fit([]) if control is not None else (0.0 if r2(y, np.zeros((n, 0))) is not None
                                                    else None)
  r2_full = fit(everything)

  def decompose(names):
    added = _sub(fit(names), r2_control)
    rest = 1.0 - r2_control if r2_control is not None else None
    return {'alone': fit(names, with_control=False), 'added': added,
            'partial': None if added is None or rest is None or rest <= 1e-12 else added / rest,
            'unique': _sub(r2_full, fit([f for f in everything if f not in names]))}

  result = {'tokens': int(n), 'r2_control': r2_control, 'r2_full': r2_full,
            'groups': {g: decompose(names) for g, names in groups.items()}}
  if per_feature:
    result['features'] = {f: decompose([f]) for f in everything}
  return result


def _flatten(result: dict, prefix: str = '') -> dict[str, float | None]:
  flat = {}
  for key, value in result.items():
    if isinstance(value, dict):
      flat.update(_flatten(value, f'{prefix}{key}/'))
    elif key != 'tokens':
      flat[f'{prefix}{key}'] = value
  return flat


def decision_timing(trace: Trace, groups: Mapping[str, Sequence[str]], control: str | None,
                    target: str = 'expected_depth', mask: np.ndarray | None = None,
                    correct_only: bool = True, *, n_boot: int = 200, level: float = 0.95,
                    seed: int = 0) -> dict:
  """`variance_explained` of a trace's `target` ('expected_depth' or 'depth') per token.

  Tokens: `mask` (default: the annotated tokens, `trace.analysis_mask`), restricted to sequences
  whose every answer token is correct when `correct_only`. Intervals resample whole sequences.

  Returns variance_explained's dict plus {'target', 'control', 'groups_features', 'samples',
  'tokens', 'samples_total', 'tokens_total', 'intervals': {'r2_control' | 'r2_full' |
  'groups/<g>/<stat>': [lo, hi] or None}}.
  """
  if mask is None:
    mask = trace.analysis_mask
  samples_total, tokens_total = int(mask.any(-1).sum()), int(mask.sum())
  if correct_only:
    mask = mask & trace.sequence_correct[:, None]
  seq = np.broadcast_to(np.arange(trace.batch_size)[:, None], mask.shape)[mask]
  y = np.asarray(getattr(trace, target), np.float64)[mask]
  names = [f for g in groups.values() for f in g]
  features = {f: trace.features[f][mask] for f in names}
  control_values = trace.features[control][mask] if control is not None else None
  result = variance_explained(y, features, groups, control_values)

  def statistic(idx):
    sub = variance_explained(y[idx], {f: v[idx] for f, v in features.items()}, groups,
                             None if control_values is None else control_values[idx],
                             per_feature=False)
    return _flatten({k: sub[k] for k in ('r2_control', 'r2_full', 'groups')})

  intervals = {}
  if n_boot > 0 and len(y) > 2:
    draws = [statistic(idx) for idx in stats.cluster_indices(
        seq, len(y), np.random.default_rng(seed), n_boot)]
    for key in draws[0]:
      values = [d[key] for d in draws if d.get(key) is not None]
      intervals[key] = stats.percentile_interval(values, level, min_count=max(10, n_boot // 2))
  return {**result, 'target': target, 'control': control,
          'groups_features': {g: list(v) for g, v in groups.items()},
          'samples': int(mask.any(-1).sum()), 'tokens': int(mask.sum()),
          'samples_total': samples_total, 'tokens_total': tokens_total,
          'intervals': intervals}
