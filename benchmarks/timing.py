"""What the benchmarks share: host memory set-up, medians of repeated calls after a warm-up,
interleaved timing of alternatives, and the JSON output."""

import json
import pathlib
import time

import jax
import numpy as np
from absl import flags

from anira_jax import host_memory

_HOST_MEMORY = flags.DEFINE_enum(
    'host_memory', 'single_arena', host_memory.MODES, 'How malloc treats memory XLA:CPU frees '
    '(anira_jax/host_memory.py). The default suits these large-array measurements; launch.py '
    'uses keep.')


def set_up_host_memory() -> str:
  """`host_memory.reuse_freed_memory(--host_memory)`; call first in main, before any JAX
  computation. Returns the mode in effect ('default' where glibc is not there), for the results."""
  return _HOST_MEMORY.value if host_memory.reuse_freed_memory(_HOST_MEMORY.value) else 'default'


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


def interleaved(steps: dict, repeats: int) -> dict:
  """{name: wall seconds of each call} for each `fn()` of `steps` ({name: fn}; waited on), called
  in turn `repeats` times after one warm-up each: a load that changes during the run hits all
  alike."""
  for fn in steps.values():
    jax.block_until_ready(fn())
  times = {name: [] for name in steps}
  for _ in range(repeats):
    for name, fn in steps.items():
      start = time.perf_counter()
      jax.block_until_ready(fn())
      times[name].append(time.perf_counter() - start)
  return times


def write_results(results: dict, path: str) -> None:
  """`results` as JSON at `path` (folders created), and a line saying where."""
  out = pathlib.Path(path)
  out.parent.mkdir(parents=True, exist_ok=True)
  out.write_text(json.dumps(results, indent=1) + '\n')
  print(f'wrote {out}')
