"""Fused causal attention for XLA:CPU: `cpu_attention.cc`, compiled on first use.

Why a kernel: XLA:CPU runs attention as separate passes over the [B, H, S, N] scores, and a
compacted step's gathered queries cannot skip the key blocks that the causal mask discards. The
kernel keeps scores in registers with an online softmax and stops each tile of queries at its
largest position (measured in README.md, "Performance"). It is an XLA FFI custom call, so it runs
inside jitted programs like any other op.

Why compiled here rather than at install: the project installs with pip alone on machines
without a compiler. The first process that needs the kernel compiles it with the system's C++
compiler (`$CXX`, else `c++`/`g++`/`clang++`: C++20 with GCC's vector extensions, so GCC >= 12
or Clang; 10-25 s) for this CPU (`-march=native`) into a per-user cache keyed by the source,
compiler, flags, jaxlib and CPU; later processes load it (a build deletes the libraries no
process has loaded for STALE_DAYS). Without a compiler, if it fails, or with
`ANIRA_JAX_CPU_KERNELS=0`, `layers` uses its plain JAX attention: the same function to float
rounding (tests/test_cpu_attention.py).

Used only where it is correct and pays: the CPU backend with one device (a sharded program would
have to gather the custom call's operands), float32, head dims 16/32/64/128, at least 8 queries
a row.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import pathlib
import platform
import shutil
import subprocess
import tempfile
import time

import jax
import jax.numpy as jnp
import jaxlib
from absl import logging

ENABLE_ENV = 'ANIRA_JAX_CPU_KERNELS'  # '0' turns the kernel off
HEAD_DIMS = (16, 32, 64, 128)
MIN_QUERIES = 8  # the kernel's query tile
SOURCE = pathlib.Path(__file__).with_name('cpu_attention.cc')
STALE_DAYS = 30  # a cached library unused this long is deleted when another one is built
_FLAGS = ('-O3', '-march=native', '-std=c++20', '-shared', '-fPIC', '-fno-math-errno')
_FORWARD, _BACKWARD = 'anira_attention_forward', 'anira_attention_backward'
_RAGGED_FORWARD = 'anira_ragged_attention_forward'
_library = None  # the loaded kernel: the registered handlers live in it
_registered: set[str] = set()
# Under vmap every operand gets the mapped axis in front, which the kernel folds into the batch.
_VMAP = 'broadcast_all'


def _compiler() -> str | None:
  return os.environ.get('CXX') or next(
      (path for name in ('c++', 'g++', 'clang++') if (path := shutil.which(name))), None)


def _cpu_identity() -> str:
  """What `-march=native` compiles for: the CPU's model and feature flags."""
  try:
    lines = pathlib.Path('/proc/cpuinfo').read_text().splitlines()
    return '\n'.join(sorted({l for l in lines if l.startswith(('model name', 'flags'))}))
  except OSError:
    return platform.processor() or platform.machine()


def _cache_dir() -> pathlib.Path:
  root = os.environ.get('XDG_CACHE_HOME') or pathlib.Path.home() / '.cache'
  return pathlib.Path(root) / 'anira_jax' / 'kernels'


def build(compiler: str) -> pathlib.Path:
  """The kernel's shared library for this machine, compiled into the cache if not there yet
  (then `prune`s the cache). Raises `RuntimeError` with the compiler's output if compilation
  fails."""
  key = hashlib.sha256('\0'.join([SOURCE.read_text(), compiler, *_FLAGS, jaxlib.__version__,
                                  _cpu_identity()]).encode()).hexdigest()[:20]
  library = _cache_dir() / f'cpu_attention-{key}.so'
  if library.exists():
    try:
      library.touch()  # in use: `prune` keeps it
    except OSError:  # a read-only cache
      pass
    return library
  library.parent.mkdir(parents=True, exist_ok=True)
  # Compile to a temporary name and rename: concurrent processes never load a partial file.
  with tempfile.TemporaryDirectory(dir=library.parent) as tmp:
    partial = pathlib.Path(tmp) / library.name
    command = [compiler, *_FLAGS, f'-I{jax.ffi.include_dir()}', str(SOURCE), '-o', str(partial)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=600)
    if result.returncode != 0:
      raise RuntimeError(f'{" ".join(command)} failed:\n{result.stderr[-4000:]}')
    os.replace(partial, library)
  prune(library.parent, keep=library)
  return library


def prune(cache: pathlib.Path, keep: pathlib.Path) -> None:
  """Deletes the cached kernel libraries, other than `keep`, that no process has loaded for
  STALE_DAYS: every edit of the source or jaxlib upgrade leaves one behind (0.2-0.4 MB)."""
  cutoff = time.time() - STALE_DAYS * 86_400
  for old in cache.glob('cpu_attention-*.so'):
    if old != keep and old.stat().st_mtime < cutoff:
      old.unlink(missing_ok=True)


@functools.cache
def _loaded() -> bool:
  """Compiles (once per machine), loads and registers the kernel; False (with one warning) if
  it cannot."""
  global _library
  if os.environ.get(ENABLE_ENV, '1') == '0':
    return False
  if _library is None:
    try:
      compiler = _compiler()
      if compiler is None:
        raise RuntimeError('no C++ compiler found (set CXX, or install g++ or clang++)')
      library = ctypes.cdll.LoadLibrary(str(build(compiler)))
    except (RuntimeError, OSError, subprocess.TimeoutExpired) as error:
      logging.warning('The fused CPU attention kernel is unavailable, so attention runs as '
                      'plain JAX ops (the same function, slower on CPU): %s. Set %s=0 to skip '
                      'this attempt.', error, ENABLE_ENV)
      return False
    for name, handler in ((_FORWARD, library.AniraAttentionForward),
                          (_BACKWARD, library.AniraAttentionBackward),
                          (_RAGGED_FORWARD, library.AniraRaggedAttentionForward)):
      if name not in _registered:  # XLA keeps the first registration of a name
        jax.ffi.register_ffi_target(name, jax.ffi.pycapsule(handler), platform='cpu')
        _registered.add(name)
    _library = library
  return True


def supports(q: jax.Array, k: jax.Array, v: jax.Array) -> bool:
  """Whether attention of these operands runs in the kernel (decided when tracing).

  Not for fewer than MIN_QUERIES queries a row (decoding's one): the kernel packs every key of
  a head before its first tile, which only pays when several queries read them.
  """
  return (jax.default_backend() == 'cpu' and jax.device_count() == 1
          and all(x.dtype == jnp.float32 for x in (q, k, v))
          and q.shape[-1] in HEAD_DIMS and q.shape[-3] >= MIN_QUERIES and _loaded())


def forward(q_BxSxHxK, k_BxNxHxK, v_BxNxHxK, q_positions_BxS):
  """(out [B, S, H, K], logsumexp [B, S, H]) of softmax((q / sqrt(K)) k) v where query s of row
  b sees keys 0 .. q_positions[b, s] (which must be in [0, N))."""
  shapes = (jax.ShapeDtypeStruct(q_BxSxHxK.shape, jnp.float32),
            jax.ShapeDtypeStruct(q_BxSxHxK.shape[:-1], jnp.float32))
  return jax.ffi.ffi_call(_FORWARD, shapes, vmap_method=_VMAP)(
      q_BxSxHxK, k_BxNxHxK, v_BxNxHxK, q_positions_BxS.astype(jnp.int32))


def ragged_forward(q_TxHxK, k_BxNxHxK, v_BxNxHxK, q_positions_T, row_starts_B1):
  """`forward` of a ragged batch, inference only (no backward pass): row b's queries are
  q[row_starts[b] : row_starts[b + 1]] (row_starts [B + 1] ascending int32 from 0); the queries
  past row_starts[B] are padding, their outputs zeros. Returns (out [T, H, K], logsumexp [T, H])."""
  shapes = (jax.ShapeDtypeStruct(q_TxHxK.shape, jnp.float32),
            jax.ShapeDtypeStruct(q_TxHxK.shape[:-1], jnp.float32))
  return jax.ffi.ffi_call(_RAGGED_FORWARD, shapes)(
      q_TxHxK, k_BxNxHxK, v_BxNxHxK, q_positions_T.astype(jnp.int32),
      row_starts_B1.astype(jnp.int32))


def backward(q_BxSxHxK, k_BxNxHxK, v_BxNxHxK, q_positions_BxS, out_BxSxHxK, logsumexp_BxSxH,
             dout_BxSxHxK):
  """Cotangents (dq, dk, dv) of `forward`'s output, from its saved output and logsumexp
  (FlashAttention's backward pass: probabilities recomputed once per tile)."""
  shapes = tuple(jax.ShapeDtypeStruct(x.shape, jnp.float32)
                 for x in (q_BxSxHxK, k_BxNxHxK, v_BxNxHxK))
  return jax.ffi.ffi_call(_BACKWARD, shapes, vmap_method=_VMAP)(
      q_BxSxHxK, k_BxNxHxK, v_BxNxHxK, q_positions_BxS.astype(jnp.int32), out_BxSxHxK,
      logsumexp_BxSxH, dout_BxSxHxK.astype(jnp.float32))
