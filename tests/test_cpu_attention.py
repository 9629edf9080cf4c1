"""The fused CPU attention kernel against the plain JAX attention: values and gradients over head
dims, lengths that are not multiples of its tiles, gathered and unsorted query positions; the
whole model's logits and gradients; the fall-back when the kernel cannot be built; the cache's
pruning."""

import logging
import os
import time

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import tiny_anira, tiny_model
from test_layers import ragged_case
from test_recurrence import _spread_halting
from test_train import _gradients_with

from anira_jax import compaction
from anira_jax.model import cpu_attention, layers


@pytest.fixture
def kernel():
  """Skips where the kernel cannot be built by design (no compiler, or turned off); where it
  can, a failed build fails the test."""
  if cpu_attention._compiler() is None:
    pytest.skip('no C++ compiler: attention runs as plain JAX here')
  if not cpu_attention._loaded():
    assert os.environ.get(cpu_attention.ENABLE_ENV) == '0', (
        'a C++ compiler is present but the kernel did not build: see the logged warning')
    pytest.skip(f'{cpu_attention.ENABLE_ENV}=0')


def _qkv(seed, batch, queries, keys, heads, head_dim):
  kq, kk, kv = jax.random.split(jax.random.key(seed), 3)
  shape = lambda n: (batch, n, heads, head_dim)
  # Keys spread 3x: peaked softmax rows, where a wrong running max or rescale shows.
  return (jax.random.normal(kq, shape(queries)), 3.0 * jax.random.normal(kk, shape(keys)),
          jax.random.normal(kv, shape(keys)))


def _values_and_grads(fn, q, k, v, *args):
  weights = jax.random.normal(jax.random.key(99), q.shape)
  loss = lambda q, k, v: jnp.sum(weights * fn(q, k, v, *args))
  return jax.jit(fn)(q, k, v, *args), jax.jit(jax.grad(loss, argnums=(0, 1, 2)))(q, k, v)


@pytest.mark.parametrize('head_dim', cpu_attention.HEAD_DIMS)
@pytest.mark.parametrize('length', [8, 13, 33, 150])  # key blocks of 16 up to 128, then 32
def test_causal_values_and_gradients_equal_plain_jax(kernel, head_dim, length):
  q, k, v = _qkv(0, 2, length, length, 3, head_dim)
  assert cpu_attention.supports(q, k, v)
  out, grads = _values_and_grads(layers.causal_attention, q, k, v)
  ref, ref_grads = _values_and_grads(layers.blocked_causal_attention, q, k, v)
  np.testing.assert_allclose(out, ref, atol=1e-5, rtol=1e-5)
  for got, want in zip(grads, ref_grads):
    np.testing.assert_allclose(got, want, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize('keys', [45, 200])
@pytest.mark.parametrize('order', ['sorted', 'unsorted'])
def test_gathered_queries_equal_plain_jax(kernel, order, keys):
  """What compaction (sorted positions of a subset) asks of `attend`; the kernel must also be
  right for any order, which only costs it speed."""
  queries = 13
  q, k, v = _qkv(1, 3, queries, keys, 2, 32)
  rng = np.random.default_rng(0)
  positions = np.stack([rng.choice(keys, queries, replace=False) for _ in range(3)])
  if order == 'sorted':
    positions = np.sort(positions, axis=1)
    positions[0, :2] = (0, 1)  # the first key alone, then two keys
  positions = jnp.asarray(positions, jnp.int32)
  out, grads = _values_and_grads(layers.attend, q, k, v, positions)
  ref, ref_grads = _values_and_grads(layers.plain_attend, q, k, v, positions)
  np.testing.assert_allclose(out, ref, atol=1e-5, rtol=1e-5)
  for got, want in zip(grads, ref_grads):
    np.testing.assert_allclose(got, want, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize('head_dim', cpu_attention.HEAD_DIMS)
@pytest.mark.parametrize('keys', [45, 200])
def test_ragged_rows_equal_the_full_causal_block(kernel, head_dim, keys):
  """Compaction's layout: rows of 0 to 20 queries in one array (tiles of 8 and partial ones),
  then padding, which must come out zero."""
  args, expected = ragged_case(4, counts=[13, 0, 20, 1, 7], keys=keys, total=50,
                               head_dim=head_dim, heads=2)
  assert cpu_attention.supports(*args[:3])
  assert 'anira_ragged_attention_forward' in str(jax.make_jaxpr(layers.attend_ragged)(*args))
  np.testing.assert_allclose(jax.jit(layers.attend_ragged)(*args), expected, atol=1e-5,
                             rtol=1e-5)


def test_ragged_rows_out_of_range_are_an_error(kernel):
  args, _ = ragged_case(4, counts=[13, 7], keys=45, total=20, head_dim=32, heads=2)
  q, k, v, positions, _ = args
  with pytest.raises(jax.errors.JaxRuntimeError, match='row_starts must ascend'):
    jax.block_until_ready(layers.attend_ragged(q, k, v, positions, jnp.asarray([0, 13, 21])))


def test_vmapped_like_plain_jax(kernel):
  """Under vmap (PonderNet's loss maps over iterations) the mapped axis joins the batch."""
  q, k, v = _qkv(5, 2, 9, 9, 2, 16)
  stack = lambda x: jnp.stack([x, 2.0 * x, -x])
  q, k, v = stack(q), stack(k), stack(v)
  out, grads = _values_and_grads(jax.vmap(layers.causal_attention), q, k, v)
  ref, ref_grads = _values_and_grads(jax.vmap(layers.blocked_causal_attention), q, k, v)
  np.testing.assert_allclose(out, ref, atol=1e-5, rtol=1e-5)
  for got, want in zip(grads, ref_grads):
    np.testing.assert_allclose(got, want, atol=1e-4, rtol=1e-4)


def test_used_only_where_it_applies(kernel):
  q, k, v = _qkv(2, 1, 8, 8, 2, 32)
  assert cpu_attention.supports(q, k, v)
  assert not cpu_attention.supports(*(x.astype(jnp.bfloat16) for x in (q, k, v)))
  assert not cpu_attention.supports(*(x[..., :8] for x in (q, k, v)))  # head dim 8
  assert not cpu_attention.supports(q[:, :7], k, v)  # decoding's one query, or a few
  jaxpr = lambda fn: str(jax.make_jaxpr(fn)(q, k, v))
  assert 'anira_attention_forward' in jaxpr(layers.causal_attention)
  assert 'anira_attention_forward' not in jaxpr(layers.blocked_causal_attention)


def test_model_logits_and_gradients_equal_plain_jax(kernel, monkeypatch):
  """The whole model with the kernel (head dim 16) against the same model in plain JAX: inference
  logits of the masked loop and of compaction, and training gradients."""
  anira = tiny_anira('online', tiny_model(width=32, num_heads=2))
  params = _spread_halting(anira, anira.init(jax.random.key(0)))
  tokens = jax.random.randint(jax.random.key(1), (3, 40), 1, 5).at[2, 30:].set(0)

  def run(kernel_expected):
    # New functions at every call: jit would reuse a trace made with the kernel on.
    compact = lambda: compaction.run_compacted(anira, params, tokens, buckets=(30, 60))
    loop = lambda: anira.apply(params, tokens, train=False, path='loop').logits_BxLxV
    in_jaxpr = 'anira_ragged_attention_forward' in str(jax.make_jaxpr(compact)())
    assert in_jaxpr == kernel_expected
    compacted = jax.jit(compact)()
    assert int(compacted.work.compacted_iterations) > 0, 'compaction never ran: test too weak'
    grads, _ = jax.jit(fn)(*args)
    return jax.jit(loop)(), compacted.logits_BxLxV, grads

  fn, args = _gradients_with('online', sizes=(12, 16))
  assert 'anira_attention_forward' in str(jax.make_jaxpr(fn)(*args))
  with_kernel = run(kernel_expected=True)
  monkeypatch.setattr(cpu_attention, 'supports', lambda *_: False)
  fn, args = _gradients_with('online', sizes=(12, 16))
  assert 'anira_attention_forward' not in str(jax.make_jaxpr(fn)(*args))
  plain = run(kernel_expected=False)
  valid = np.asarray(tokens != 0)
  for got, want in zip(with_kernel[:2], plain[:2]):
    np.testing.assert_allclose(np.asarray(got)[valid], np.asarray(want)[valid], atol=2e-5)
  chex.assert_trees_all_close(with_kernel[2], plain[2], atol=1e-6, rtol=1e-5)


def test_a_failed_build_falls_back_to_plain_jax_with_a_warning(monkeypatch, tmp_path, caplog):
  monkeypatch.setenv('XDG_CACHE_HOME', str(tmp_path))  # nothing cached: it must compile
  monkeypatch.setenv('CXX', 'false')  # a "compiler" that always fails
  monkeypatch.setenv(cpu_attention.ENABLE_ENV, '1')
  monkeypatch.setattr(cpu_attention, '_library', None)  # as in a fresh process
  cpu_attention._loaded.cache_clear()
  try:
    with caplog.at_level(logging.WARNING):
      assert not cpu_attention._loaded()
    assert 'kernel is unavailable' in caplog.text and 'false' in caplog.text
    q, k, v = _qkv(3, 1, 9, 9, 2, 32)
    assert not cpu_attention.supports(q, k, v)
    np.testing.assert_allclose(layers.causal_attention(q, k, v),
                               layers.blocked_causal_attention(q, k, v))
  finally:
    cpu_attention._loaded.cache_clear()  # later tests load the real kernel again


def test_turned_off_by_the_environment(monkeypatch):
  monkeypatch.setenv(cpu_attention.ENABLE_ENV, '0')
  cpu_attention._loaded.cache_clear()
  try:
    assert not cpu_attention._loaded()
    assert not cpu_attention.supports(*_qkv(4, 1, 9, 9, 2, 32))
  finally:
    cpu_attention._loaded.cache_clear()


def test_prune_deletes_only_other_libraries_unused_for_a_month(tmp_path):
  month_ago = time.time() - (cpu_attention.STALE_DAYS + 1) * 86_400
  names = ['cpu_attention-new.so', 'cpu_attention-recent.so', 'cpu_attention-old.so',
           'cpu_attention-old-but-kept.so', 'something-else-old.so']
  for name in names:
    (tmp_path / name).write_bytes(b'')
    if 'old' in name:
      os.utime(tmp_path / name, (month_ago, month_ago))
  cpu_attention.prune(tmp_path, keep=tmp_path / 'cpu_attention-old-but-kept.so')
  assert sorted(p.name for p in tmp_path.iterdir()) == sorted(set(names) - {'cpu_attention-old.so'})
