"""Attention alone: the fused CPU kernel (`anira_jax/model/cpu_attention.cc`) against the plain
JAX attention it replaces, timed interleaved in one run.

    python -m benchmarks.attention            # the shapes of the other benchmarks, 4 heads of 32
    python -m benchmarks.attention --quick    # smaller shapes and fewer repeats: a smoke run

Causal attention of whole sequences (training and the dense iterations; forward, and forward
plus backward as in a train step) and of a compacted step's gathered queries (a sorted subset of
positions over every key; forward only, as in inference). Each row gives both medians and their
ratio; the kernel must be available (a C++ compiler on this machine).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags

from benchmarks import timing

from anira_jax.model import cpu_attention, layers

_QUICK = flags.DEFINE_bool('quick', False, 'Small shapes and 3 repeats: a smoke run.')
_REPEATS = flags.DEFINE_integer('repeats', 21, 'Timed calls of each implementation.')
_OUT = flags.DEFINE_string('out', 'benchmarks/attention.json', 'Where to write the results.')

HEADS, HEAD_DIM = 4, 32


def _qkv(rng, batch, queries, keys):
  shape = lambda n: (batch, n, HEADS, HEAD_DIM)
  return tuple(jnp.asarray(rng.normal(size=shape(n)), jnp.float32) for n in (queries, keys, keys))


def _with_gradients(fn):
  """fn's output and the gradients of a weighted sum of it, as a train step needs both."""
  def forward_backward(q, k, v, *rest):
    out, pullback = jax.vjp(lambda q, k, v: fn(q, k, v, *rest), q, k, v)
    return out, pullback(out)
  return forward_backward


def _cases(rng, quick):
  """(name, plain fn, kernel fn, arguments)."""
  causal = [(16, 32)] if quick else [(64, 64), (16, 256), (4, 1024)]
  for batch, length in causal:
    args = _qkv(rng, batch, length, length)
    name = f'causal B={batch} L={length}'
    yield f'{name} forward', layers.blocked_causal_attention, layers.causal_attention, args
    yield (f'{name} forward+backward', _with_gradients(layers.blocked_causal_attention),
           _with_gradients(layers.causal_attention), args)
  batch, length, queries = (4, 64, 40) if quick else (16, 512, 296)
  positions = np.sort(np.stack([rng.choice(length, queries, replace=False)
                                for _ in range(batch)]), axis=1)
  args = (*_qkv(rng, batch, queries, length), jnp.asarray(positions, jnp.int32))
  yield f'gathered B={batch} {queries} of L={length} forward', layers.plain_attend, layers.attend, args


def main(argv):
  del argv
  host_memory_mode = timing.set_up_host_memory()
  rng = np.random.default_rng(0)
  probe = _qkv(rng, 1, 8, 8)
  if not cpu_attention.supports(*probe):
    raise SystemExit('The fused CPU attention kernel is not available here (see the warning '
                     'above, or the backend is not a single CPU device): nothing to compare.')
  repeats = 3 if _QUICK.value else _REPEATS.value
  print(f'{jax.device_count()} x {jax.default_backend()}, jax {jax.__version__}; {HEADS} heads '
        f'of {HEAD_DIM}, float32; host memory: {host_memory_mode}; medians of {repeats} calls')
  rows = []
  for name, plain, kernel, args in _cases(rng, _QUICK.value):
    plain, kernel = jax.jit(plain), jax.jit(kernel)
    ours, ref = jax.block_until_ready((kernel(*args), plain(*args)))
    error = max(float(jnp.max(jnp.abs(a - b))) for a, b in zip(jax.tree.leaves(ours),
                                                                 jax.tree.leaves(ref)))
    times = timing.interleaved({'plain': lambda: plain(*args), 'kernel': lambda: kernel(*args)},
                               repeats)
    plain_ms, kernel_ms = (1e3 * float(np.median(times[k])) for k in ('plain', 'kernel'))
    print(f'{name:<42} plain JAX {plain_ms:8.2f} ms  kernel {kernel_ms:8.2f} ms  '
          f'{plain_ms / kernel_ms:5.2f}x  (max |difference| {error:.1e})')
    rows.append(dict(case=name, plain_ms=plain_ms, kernel_ms=kernel_ms,
                     speedup=plain_ms / kernel_ms, max_abs_difference=error))
  timing.write_results(dict(host_memory=host_memory_mode, repeats=repeats, rows=rows), _OUT.value)


if __name__ == '__main__':
  app.run(main)
