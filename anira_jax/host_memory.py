"""How glibc's malloc hands memory to XLA:CPU: keep what a call frees for the next call.

XLA:CPU allocates one block for an executable's temporaries on every call and frees it on return.
By default glibc gives large freed blocks back to the kernel (munmap, or trimming the heap), so
the next call faults the same memory in again as fresh zeroed pages. Two settings, applied with
`mallopt` before JAX creates its CPU client:

- `keep`: never mmap, never trim. Freed memory stays with the arena that freed it and is reused.
  It cannot reach blocks larger than a worker thread's arena heap (64 MB): glibc serves those
  with mmap whatever the settings.
- `single_arena`: `keep`, and one arena for every thread, so that those large blocks come from
  the main heap and are reused too; but all threads then share one malloc lock, which slows
  small, step-bound jobs. For long sequences and large batches, not small models.
Measurements: docs/performance.md.

The process keeps its peak heap until it exits either way, as a training or benchmark process
does anyway. Only host memory is concerned; on GPU/TPU hosts it changes little.
"""

from __future__ import annotations

import ctypes
import sys

MODES = ('default', 'keep', 'single_arena')

# mallopt parameters (glibc malloc.h).
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
_M_ARENA_MAX = -8
_MAX_INT = 2**31 - 1


def reuse_freed_memory(mode: str = 'keep') -> bool:
  """Apply one of `MODES` (see the module docstring); 'default' leaves malloc as it is.

  Must run before JAX creates its CPU client (the first computation or device query), since
  threads already bound to their own arenas keep them. Returns whether glibc accepted every
  setting; on other C libraries (macOS, musl) nothing changes and it returns False.
  """
  if mode not in MODES:
    raise ValueError(f'unknown host memory mode {mode!r}; choose one of {", ".join(MODES)}')
  if mode == 'default' or not sys.platform.startswith('linux'):
    return False
  try:
    mallopt = ctypes.CDLL('libc.so.6').mallopt
  except (OSError, AttributeError):
    return False
  settings = [(_M_MMAP_MAX, 0), (_M_TRIM_THRESHOLD, _MAX_INT)]
  if mode == 'single_arena':
    settings.insert(0, (_M_ARENA_MAX, 1))
  return all(mallopt(option, value) == 1 for option, value in settings)
