"""The Llama family (`model/llama.py`): the equivalence tests of the recurrence, compaction and
decoding on Llama's block with grouped-query attention, a linear adapter and scaled RoPE, for
every decider; RoPE's Llama 3 frequencies; grouped-query attention through the CPU kernel and
plain JAX; the padding logit."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import test_compaction
import test_decoding
from conftest import PROTOCOL_CASES, decides_per_token, tiny_anira, tiny_model
from test_recurrence import _assert_unroll_is_per_token_reference, _spread_halting

from anira_jax.model import layers, llama

LLAMA3_SCALING = json.dumps({'rope_type': 'llama3', 'factor': 8.0, 'low_freq_factor': 1.0,
                             'high_freq_factor': 4.0, 'original_max_position_embeddings': 64})


def tiny_llama(**overrides):
  """A Llama-family model: 4 query heads over 2 key/value heads, SwiGLU of 48, a linear
  adapter, RoPE base 500000 with Llama 3's scaling, tied embeddings."""
  fields = dict(family='llama', vocab_size=13, width=32, num_heads=4, num_kv_heads=2,
                mlp_hidden=48, injection='linear', rope_theta=500_000.0,
                rope_scaling=LLAMA3_SCALING, tie_embeddings=True, norm_eps=1e-5)
  fields.update(overrides)
  return tiny_model(**fields)


def _params(anira, seed=0):
  """Initial params with halting spread over depths and an adapter that mixes h0 in."""
  params = _spread_halting(anira, anira.init(jax.random.key(seed)))
  if 'adapter' in params['model']:
    kernel = params['model']['adapter']['kernel']
    params['model']['adapter']['kernel'] = kernel + 0.3 * jax.random.normal(
        jax.random.key(seed + 7), kernel.shape)
  return params


def test_parameters_have_the_checkpoint_shapes():
  anira = tiny_anira('fixed', tiny_llama(tie_embeddings=False))
  model = anira.init(jax.random.key(0))['model']
  block = model['core']['layer_0']
  shapes = jax.tree.map(lambda x: x.shape, block)
  assert shapes == {'attn_norm': {'scale': (32,)}, 'query': {'kernel': (32, 4, 8)},
                    'key': {'kernel': (32, 2, 8)}, 'value': {'kernel': (32, 2, 8)},
                    'out': {'kernel': (4, 8, 32)}, 'mlp_norm': {'scale': (32,)},
                    'gate': {'kernel': (32, 48)}, 'up': {'kernel': (32, 48)},
                    'down': {'kernel': (48, 32)}}
  assert model['embed']['embedding'].shape == (12, 32)  # vocab_size - 1: id 0 is padding
  assert model['readout']['lm_head'].shape == (12, 32)
  assert model['adapter']['kernel'].shape == (64, 32)
  tied = tiny_anira('fixed', tiny_llama()).init(jax.random.key(0))['model']
  assert 'lm_head' not in tied['readout']


def test_padding_is_never_predicted():
  anira = tiny_anira('fixed', tiny_llama())
  params = anira.init(jax.random.key(0))
  out = anira.apply(params, jnp.array([[3, 1, 12, 0]]), train=False)
  assert out.logits_BxLxV.shape == (1, 4, 13)
  np.testing.assert_array_equal(out.logits_BxLxV[..., 0], llama.PAD_LOGIT)


def test_llama3_frequencies():
  """Llama 3's rule: short wavelengths kept, long ones divided by the factor, a smooth blend
  between (hand-checked against the formula at the band edges)."""
  cfg = tiny_llama(width=128, num_heads=2, num_kv_heads=1)  # head dim 64
  plain = llama.inverse_frequencies(tiny_llama(width=128, num_heads=2, num_kv_heads=1,
                                               rope_scaling=''))
  scaled = llama.inverse_frequencies(cfg)
  np.testing.assert_allclose(plain, 500_000.0 ** (-np.arange(0, 64, 2) / 64), rtol=1e-6)
  wavelength = 2 * np.pi / plain
  high = wavelength < 64 / 4  # shorter than original / high_freq_factor: unchanged
  low = wavelength > 64 / 1  # longer than original / low_freq_factor: divided by 8
  np.testing.assert_allclose(scaled[high], plain[high], rtol=1e-6)
  np.testing.assert_allclose(scaled[low], plain[low] / 8, rtol=1e-6)
  middle = ~high & ~low
  assert middle.any() and high.any() and low.any()
  assert np.all((scaled[middle] < plain[middle]) & (scaled[middle] > plain[middle] / 8))


@pytest.mark.parametrize('groups', [1, 2, 4])
def test_grouped_query_attention_kernel_and_plain_jax(groups):
  """Query head h reads key/value head h // groups; the CPU kernel (where it applies) and
  plain JAX agree, against a per-head reference."""
  q = jax.random.normal(jax.random.key(0), (2, 16, 4, 16))
  k = jax.random.normal(jax.random.key(1), (2, 16, 4 // groups, 16))
  v = jax.random.normal(jax.random.key(2), (2, 16, 4 // groups, 16))
  positions = jnp.broadcast_to(jnp.arange(16), (2, 16))
  reference = jnp.stack([layers.plain_attend(q[:, :, h:h + 1], k[:, :, h // groups][:, :, None],
                                             v[:, :, h // groups][:, :, None], positions)[:, :, 0]
                         for h in range(4)], axis=2)
  np.testing.assert_allclose(layers.attend(q, k, v, positions), reference, atol=1e-5)
  np.testing.assert_allclose(layers.plain_attend(q, *layers.share_kv(q, k, v), positions),
                             reference, atol=1e-5)
  np.testing.assert_allclose(layers.causal_attention(q, k, v), reference, atol=1e-5)
  grad = jax.grad(lambda k: jnp.sum(layers.causal_attention(q, k, v) ** 2))(k)
  assert grad.shape == k.shape and np.all(np.abs(grad).sum(axis=(0, 1, 3)) > 0)


# The confidence exit's threshold at which the tiny Llama's tokens stop at different depths.
LLAMA_THRESHOLDS = {'confidence': 0.1}


@pytest.mark.parametrize('name', PROTOCOL_CASES)
def test_unroll_loop_compaction_and_decoding_agree(name):
  """Training unroll == inference loop == compacted inference == KV-cache decoding."""
  threshold = {'threshold': LLAMA_THRESHOLDS[name]} if name in LLAMA_THRESHOLDS else {}
  anira = tiny_anira(name, tiny_llama(), **threshold)
  params = _params(anira)
  tokens, complexity = test_compaction._batch()
  for train in (False, True):
    key = jax.random.key(3)
    apply = jax.jit(lambda p, t, c, path: anira.apply(p, t, train=train, key=key,
                                                      complexity_BxL=c, path=path),
                    static_argnums=3)
    outs = [apply(params, tokens, complexity, path) for path in ('unroll', 'loop')]
    np.testing.assert_allclose(outs[0].logits_BxLxV, outs[1].logits_BxLxV, atol=1e-5)
    np.testing.assert_array_equal(outs[0].trajectory.depth_BxL, outs[1].trajectory.depth_BxL)
  out = test_compaction._compare(anira, params, tokens, complexity)
  if decides_per_token(name):
    assert int(out.work.compacted_iterations) > 0, 'compaction never ran: test too weak'
  out = test_decoding._compare(anira, params, *test_decoding._batch())
  if decides_per_token(name):
    assert len(np.unique(out.trajectory.depth_BxL[:2])) > 1, 'depths do not vary: test too weak'


@pytest.mark.parametrize('overrides', [
    dict(core_layers=2, prelude_layers=2, coda_layers=2, tie_embeddings=False),
    dict(injection='add', state_init='zero', num_kv_heads=1, rope_scaling=''),
], ids=['multi_layer_untied', 'add_zero_init_mqa'])
def test_other_layouts_agree_across_executors(overrides):
  anira = tiny_anira('online', tiny_llama(**overrides))
  params = _params(anira)
  tokens, complexity = test_compaction._batch()
  test_compaction._compare(anira, params, tokens[1:2], complexity[1:2])
  test_decoding._compare(anira, params, *[x[:1] for x in test_decoding._batch()])


def test_freezing_matches_independent_per_token_reference():
  anira = tiny_anira('oracle', tiny_llama())
  params = _params(anira)
  tokens = jax.random.randint(jax.random.key(1), (7,), 1, 13)
  _assert_unroll_is_per_token_reference(anira, params, tokens, np.array([4, 1, 3, 2, 4, 1, 2]))


def test_causality_and_gradients():
  anira = tiny_anira('early', tiny_llama())
  params = _params(anira)
  tokens = jax.random.randint(jax.random.key(1), (2, 8), 1, 13)

  def loss(params, tokens):
    out = anira.apply(params, tokens, train=True, key=jax.random.key(0))
    return jnp.sum(out.logits_BxLxV[:, 3, 1:] ** 2)

  changed = tokens.at[:, 4:].set(13 - tokens[:, 4:])
  logits = jax.jit(lambda p, t: anira.apply(p, t, train=False).logits_BxLxV)
  a, b = logits(params, tokens), logits(params, changed)
  np.testing.assert_allclose(a[:, :4], b[:, :4], atol=1e-5)
  grads = jax.jit(jax.grad(loss))(params, tokens)
  for path in (('model', 'adapter', 'kernel'), ('model', 'core', 'layer_0', 'gate', 'kernel'),
               ('model', 'embed', 'embedding'), ('decider', 'Dense_1', 'kernel')):
    leaf = grads
    for key in path:
      leaf = leaf[key]
    assert np.any(np.asarray(leaf) != 0), f'zero gradient at {path}'
