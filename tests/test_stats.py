"""Intervals over seeds and sequences on constructed runs with known spreads."""

import numpy as np
import pytest

from anira_jax import stats


def _run(rng, mean, sequences=200, tokens=5):
  """One run's record: per token a value around the run's `mean`, tokens grouped by sequence."""
  return {'sequence': np.repeat(np.arange(sequences), tokens),
          'value': mean + rng.normal(0, 1, sequences * tokens)}


def _mean(run):
  return float(run['value'].mean())


def test_the_interval_holds_the_seed_spread_not_only_the_sampling():
  rng = np.random.default_rng(0)
  same = [_run(rng, 1.0) for _ in range(3)]
  spread = [_run(rng, m) for m in (0.0, 1.0, 2.0)]
  tight = stats.seed_bootstrap(same, _mean, n_boot=300)
  wide = stats.seed_bootstrap(spread, _mean, n_boot=300)
  assert tight['mean'] == pytest.approx(1.0, abs=0.05)
  assert tight['ci'][1] - tight['ci'][0] < 0.2  # ~ the sampling of 3 x 1000 tokens
  assert wide['ci'][0] < 0.5 and wide['ci'][1] > 1.5  # seeds at 0, 1 and 2
  assert len(wide['per_run']) == 3


def test_undefined_statistics_are_left_out():
  rng = np.random.default_rng(1)
  runs = [_run(rng, 1.0), _run(rng, 1.0)]
  result = stats.seed_bootstrap(runs, lambda r: None, n_boot=50)
  assert result['mean'] is None and result['ci'] is None
