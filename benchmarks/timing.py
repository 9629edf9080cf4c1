"""What the benchmarks share: medians of repeated calls after a warm-up, and the JSON output."""

import json
import pathlib
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


def write_results(results: dict, path: str) -> None:
  """`results` as JSON at `path` (folders created), and a line saying where."""
  out = pathlib.Path(path)
  out.parent.mkdir(parents=True, exist_ok=True)
  out.write_text(json.dumps(results, indent=1) + '\n')
  print(f'wrote {out}')
