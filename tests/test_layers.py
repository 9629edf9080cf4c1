"""The hand-written attention against JAX's own; RoPE against its defining properties."""

from unittest import mock

import chex
import jax
import jax.numpy as jnp
import numpy as np
from absl.testing import parameterized

from anira_jax.model import layers


def _qkv(key, batch=2, queries=5, keys=7, heads=3, head_dim=8, dtype=jnp.float32):
  kq, kk, kv = jax.random.split(key, 3)
  shape = lambda n: (batch, n, heads, head_dim)
  q = jax.random.normal(kq, shape(queries), dtype)
  k = 3.0 * jax.random.normal(kk, shape(keys), dtype)  # spread-out scores: a peaked softmax
  return q, k, jax.random.normal(kv, shape(keys), dtype)


def _reference(q, k, v, mask_BxSxN):
  return jax.nn.dot_product_attention(q, k, v, mask=mask_BxSxN[:, None])


def ragged_case(seed, counts, keys, total, head_dim=8, heads=3):
  """`attend_ragged`'s arguments for rows with `counts` queries each (at sorted random positions,
  in one [total, H, K] array; total >= sum(counts)), and what it must return: those rows of
  JAX's full causal attention, zeros for the padding queries."""
  batch = len(counts)
  q, k, v = _qkv(jax.random.key(seed), batch=batch, queries=keys, keys=keys, heads=heads,
                 head_dim=head_dim)
  full = jax.nn.dot_product_attention(q, k, v, is_causal=True)
  rng = np.random.default_rng(seed)
  rows = np.repeat(np.arange(batch), counts)
  positions = np.concatenate([np.sort(rng.choice(keys, c, replace=False)) for c in counts])
  pad = total - len(rows)
  q_flat = jnp.concatenate([q[rows, positions], jnp.ones((pad,) + q.shape[2:])])
  expected = jnp.concatenate([full[rows, positions], jnp.zeros((pad,) + q.shape[2:])])
  positions = jnp.asarray(np.concatenate([positions, np.zeros(pad)]), jnp.int32)
  row_starts = jnp.asarray(np.concatenate([[0], np.cumsum(counts)]), jnp.int32)
  return (q_flat, k, v, positions, row_starts), expected


class AttentionTest(chex.TestCase):

  @chex.variants(with_jit=True, without_jit=True)
  def test_causal_equals_jax_attention(self):
    q, k, v = _qkv(jax.random.key(0), queries=7)
    mask = layers.causal_mask(jnp.arange(7))
    out = self.variant(layers.attention)(q, k, v, mask)
    chex.assert_shape(out, q.shape)
    ref = jax.nn.dot_product_attention(q, k, v, is_causal=True)
    np.testing.assert_allclose(out, ref, atol=1e-5)

  @chex.variants(with_jit=True, without_jit=True)
  def test_any_mask_with_a_visible_key_per_query(self):
    q, k, v = _qkv(jax.random.key(1))
    mask = jax.random.bernoulli(jax.random.key(2), 0.4, (2, 5, 7)).at[:, :, 3].set(True)
    out = self.variant(layers.attention)(q, k, v, mask)
    np.testing.assert_allclose(out, _reference(q, k, v, mask), atol=1e-5)

  def test_gradients_equal_jax_attention(self):
    q, k, v = _qkv(jax.random.key(3))
    mask = jax.random.bernoulli(jax.random.key(4), 0.5, (2, 5, 7)).at[:, :, 0].set(True)
    weights = jax.random.normal(jax.random.key(5), q.shape)
    loss = lambda fn: lambda q, k, v: jnp.sum(weights * fn(q, k, v, mask))
    ours = jax.grad(loss(layers.attention), argnums=(0, 1, 2))(q, k, v)
    ref = jax.grad(loss(_reference), argnums=(0, 1, 2))(q, k, v)
    for got, want in zip(ours, ref):
      np.testing.assert_allclose(got, want, atol=1e-5)

  def test_gathered_queries_match_the_full_causal_block(self):
    # `attend` of a subset of queries (by original position) over all keys = those rows of the
    # full causal attention: what compaction and decoding rely on.
    q, k, v = _qkv(jax.random.key(6), queries=9, keys=9)
    full = layers.attention(q, k, v, layers.causal_mask(jnp.arange(9)))
    picked_BxS = jnp.asarray([[0, 4, 8], [2, 3, 7]])
    q_picked = jnp.take_along_axis(q, picked_BxS[:, :, None, None], axis=1)
    out = layers.attend(q_picked, k, v, picked_BxS)
    np.testing.assert_allclose(out, jnp.take_along_axis(full, picked_BxS[:, :, None, None], axis=1),
                               atol=1e-5)

  @chex.variants(with_jit=True, without_jit=True)
  def test_ragged_rows_match_the_full_causal_block(self):
    # Compaction's layout: every row's active queries in one array, an empty row, padding.
    args, expected = ragged_case(9, counts=[3, 0, 6, 1], keys=9, total=13)
    out = self.variant(layers.attend_ragged)(*args)
    np.testing.assert_allclose(out, expected, atol=1e-5)

  def test_bfloat16_tracks_float32(self):
    q, k, v = _qkv(jax.random.key(7))
    mask = layers.causal_mask(jnp.arange(7))[:, :5]
    low = layers.attention(*(x.astype(jnp.bfloat16) for x in (q, k, v)), mask)
    self.assertEqual(low.dtype, jnp.bfloat16)
    np.testing.assert_allclose(low.astype(jnp.float32), layers.attention(q, k, v, mask), atol=0.05)


class CausalAttentionTest(chex.TestCase):
  """The query-blocked causal attention against JAX's causal attention (values) and its own
  backward pass against JAX's derivative of the plain `attention` (gradients)."""

  @chex.variants(with_jit=True, without_jit=True)
  @parameterized.parameters((10, 4), (10, 5), (3, 4), (9, 1))
  def test_blocked_equals_jax_causal_attention(self, length, block):
    q, k, v = _qkv(jax.random.key(8), queries=length, keys=length)
    with mock.patch.object(layers, 'CAUSAL_BLOCK', block):
      out = self.variant(layers.causal_attention)(q, k, v)
    np.testing.assert_allclose(out, jax.nn.dot_product_attention(q, k, v, is_causal=True),
                               atol=1e-5)

  @parameterized.parameters((11, 4), (11, 128), (9, 1))
  def test_gradients_equal_jax_autodiff(self, length, block):
    # The custom backward pass, in one block and in several, against JAX's derivative of the
    # plain `attention` (itself checked against JAX's attention above).
    q, k, v = _qkv(jax.random.key(9), queries=length, keys=length)
    weights = jax.random.normal(jax.random.key(10), q.shape)
    one_block = lambda q, k, v: layers.attention(q, k, v, layers.causal_mask(jnp.arange(length)))
    loss = lambda fn: lambda q, k, v: jnp.sum(weights * fn(q, k, v))
    with mock.patch.object(layers, 'CAUSAL_BLOCK', block):
      ours = jax.jit(jax.grad(loss(layers.causal_attention), argnums=(0, 1, 2)))(q, k, v)
    for got, want in zip(ours, jax.grad(loss(one_block), argnums=(0, 1, 2))(q, k, v)):
      np.testing.assert_allclose(got, want, atol=1e-5)

  def test_bfloat16_gradients_track_float32(self):
    q, k, v = _qkv(jax.random.key(11), queries=7, keys=7)
    grad = lambda *qkv: jax.grad(lambda *a: jnp.sum(layers.causal_attention(*a).astype(
        jnp.float32) ** 2), argnums=(0, 1, 2))(*qkv)
    with mock.patch.object(layers, 'CAUSAL_BLOCK', 3):
      for low, high in zip(grad(*(x.astype(jnp.bfloat16) for x in (q, k, v))), grad(q, k, v)):
        self.assertEqual(low.dtype, jnp.bfloat16)
        np.testing.assert_allclose(low.astype(jnp.float32), high, atol=0.1, rtol=0.05)


class WindowTest(chex.TestCase):
  """An attention window W on every attention function against JAX's local-window attention
  (query i sees keys i - W < j <= i), values and gradients."""

  @staticmethod
  def _reference(q, k, v, window):
    return jax.nn.dot_product_attention(q, k, v, is_causal=True,
                                        local_window_size=(window - 1, 0))

  @parameterized.parameters(1, 3, 9)
  def test_causal_attention_sees_only_the_window(self, window):
    q, k, v = _qkv(jax.random.key(20), queries=9, keys=9, head_dim=16)  # a kernel size
    out = jax.jit(layers.causal_attention, static_argnums=3)(q, k, v, window)
    np.testing.assert_allclose(out, self._reference(q, k, v, window), atol=1e-5)
    weights = jax.random.normal(jax.random.key(21), q.shape)
    loss = lambda fn: lambda q, k, v: jnp.sum(weights * fn(q, k, v))
    ours = jax.grad(loss(lambda *a: layers.causal_attention(*a, window)), argnums=(0, 1, 2))(
        q, k, v)
    ref = jax.grad(loss(lambda *a: self._reference(*a, window)), argnums=(0, 1, 2))(q, k, v)
    for got, want in zip(ours, ref):
      np.testing.assert_allclose(got, want, atol=1e-5)

  def test_a_window_changes_the_output_only_past_its_reach(self):
    q, k, v = _qkv(jax.random.key(22), queries=9, keys=9)
    full, local = layers.causal_attention(q, k, v), layers.causal_attention(q, k, v, 3)
    np.testing.assert_allclose(local[:, :3], full[:, :3], atol=1e-6)  # nothing cut off yet
    assert np.abs(np.asarray(local[:, 3:] - full[:, 3:])).min() > 0

  def test_gathered_and_ragged_queries_see_the_same_window(self):
    # Decoding and compaction read one window-masked cache: rows of the full windowed block.
    q, k, v = _qkv(jax.random.key(23), queries=9, keys=9, head_dim=16)
    full = self._reference(q, k, v, 3)
    picked_BxS = jnp.asarray([[0, 4, 8], [2, 3, 7]])
    take = lambda x: jnp.take_along_axis(x, picked_BxS[:, :, None, None], axis=1)
    np.testing.assert_allclose(layers.attend(take(q), k, v, picked_BxS, 3), take(full),
                               atol=1e-5)
    row_starts = jnp.asarray([0, 3, 6])
    out = jax.jit(layers.attend_ragged, static_argnums=5)(
        take(q).reshape(6, *q.shape[2:]), k, v, picked_BxS.reshape(6), row_starts, 3)
    np.testing.assert_allclose(out, take(full).reshape(6, *q.shape[2:]), atol=1e-5)


class RopeTest(chex.TestCase):

  def test_scores_depend_only_on_the_offset(self):
    """The point of rotary embeddings: q at p and k at p' score the same for equal p - p'."""
    q, k, _ = _qkv(jax.random.key(3), batch=1, queries=1, keys=1)
    at = lambda x, p: layers.rope(x, jnp.array([p]))
    score = lambda p_q, p_k: float(jnp.sum(at(q, p_q) * at(k, p_k)))
    for offset in (0, 3, 17):
      np.testing.assert_allclose([score(p + offset, p) for p in (0, 5, 40, 301)],
                                 score(offset, 0), rtol=1e-4)
    self.assertNotAlmostEqual(score(3, 0), score(4, 0), places=3)

  def test_position_zero_is_identity_and_pairs_keep_their_norm(self):
    x, _, _ = _qkv(jax.random.key(4), queries=6)
    np.testing.assert_allclose(layers.rope(x[:, :1], jnp.array([0])), x[:, :1], atol=1e-6)
    out = layers.rope(x, jnp.arange(6) * 7)
    pair_norm = lambda y: jnp.hypot(*jnp.split(y, 2, axis=-1))
    np.testing.assert_allclose(pair_norm(out), pair_norm(x), rtol=1e-5)

  @chex.variants(with_jit=True, without_jit=True)
  def test_table_lookup_equals_direct_angles(self):
    x, _, _ = _qkv(jax.random.key(5), batch=3, queries=4)
    positions_BxS = jnp.array([[0, 2, 9, 10], [1, 3, 4, 5], [7, 8, 9, 11]])
    table = layers.rotary(jnp.arange(12), x.shape[-1])
    looked_up = self.variant(lambda x, p: layers.rope(x, layers.rotary_at(table, p)))
    np.testing.assert_allclose(looked_up(x, positions_BxS), layers.rope(x, positions_BxS),
                               atol=1e-6)
