"""Host memory reuse for XLA:CPU: keep the memory a call frees for the next call.

XLA:CPU allocates one block for an executable's temporaries on every call and frees it on return
(210 MB for eight iterations at L = 512, B = 16, where attention holds B·H·L² scores). glibc's
malloc serves blocks that large, and any block from a worker thread's arena, with mmap and gives
them back with munmap, so every call faults in ~50,000 fresh zeroed pages: on the 2-core CPU a
lone iteration took 98 ms instead of 68 ms, and a train step ~9% longer. Telling malloc to use
its one main heap for every block and never to trim it makes a freed block the next call's, its
pages already mapped.

The cost is that the process keeps its peak heap until it exits, which a training or benchmark
process does anyway. It only concerns host memory; on GPU/TPU hosts it changes nothing that
matters and can be switched off (`launch.py --noreuse_host_memory`).
"""

from __future__ import annotations

import ctypes
import sys

# mallopt parameters (glibc malloc.h).
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
_M_ARENA_MAX = -8
_MAX_INT = 2**31 - 1


def reuse_freed_memory() -> bool:
  """Make glibc's malloc keep freed memory for reuse (see the module docstring).

  Must run before JAX creates its CPU client (the first computation or device query), since
  threads already bound to their own arenas keep them. Returns whether glibc accepted every
  setting; on other C libraries (macOS, musl) nothing changes and it returns False.
  """
  if not sys.platform.startswith('linux'):
    return False
  try:
    mallopt = ctypes.CDLL('libc.so.6').mallopt
  except (OSError, AttributeError):
    return False
  settings = ((_M_ARENA_MAX, 1), (_M_MMAP_MAX, 0), (_M_TRIM_THRESHOLD, _MAX_INT))
  return all(mallopt(option, value) == 1 for option, value in settings)
