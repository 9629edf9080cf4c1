"""What the benchmarks share: host memory set-up, medians of repeated calls after a warm-up, and
the JSON output."""

import json
import pathlib
import time

import jax
import numpy as np
from absl import flags

from anira_jax import host_memory

_REUSE_HOST_MEMORY = flags.DEFINE_bool(
    'reuse_host_memory', True, 'Let malloc keep freed memory for the next call, as launch.py '
    'does (anira_jax/host_memory.py); --noreuse_host_memory measures without.')


def set_up_host_memory() -> bool:
  """As launch.py: `host_memory.reuse_freed_memory()` unless switched off. Call first in main,
  before any JAX computation. Returns whether it is in effect (recorded with the results)."""
  return _REUSE_HOST_MEMORY.value and host_memory.reuse_freed_memory()


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
