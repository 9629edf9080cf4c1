"""Timing shared by the benchmarks: medians of repeated calls after a warm-up."""

import time

import jax
import numpy as np


def median_seconds(fn, repeats: int) -> float:
  """Median wall time of `fn()` (waited on) over `repeats` calls after one warm-up call, which
  absorbs compilation."""
  jax.block_until_ready(fn())
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(fn())
    times.append(time.perf_counter() - start)
  return float(np.median(times))
