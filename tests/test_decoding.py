"""KV-cache decoding == the masked inference loop on the whole sequence (logits, depths, q) for
every decider, with padding, multi-layer stacks and an iteration embedding; greedy generation
continues with the model's own argmax."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import (ALL_DECIDERS, assert_same_on_real_tokens, decides_per_token, tiny_anira,
                      tiny_model)
from test_recurrence import _spread_halting

from anira_jax import decoding
from anira_jax.model import layers


def _batch():
  tokens = jax.random.randint(jax.random.key(1), (3, 9), 1, 5)
  tokens = tokens.at[2, 6:].set(0)  # a right-padded row
  complexity = jax.random.randint(jax.random.key(2), (3, 9), 0, 4).astype(jnp.float32)
  return tokens, complexity


def _compare(anira, params, tokens, complexity):
  ref = jax.jit(lambda p, t, c: anira.apply(p, t, train=False, complexity_BxL=c, path='loop'))(
      params, tokens, complexity)
  out = jax.jit(lambda p, t, c: decoding.decode_logits(anira, p, t, complexity_BxL=c))(
      params, tokens, complexity)
  assert_same_on_real_tokens(out, ref, tokens, atol_logits=1e-4, atol_q=1e-5)
  return out


@pytest.mark.parametrize('name', ALL_DECIDERS)
def test_same_as_masked_loop_for_every_decider(name):
  anira = tiny_anira(name, tiny_model())
  params = _spread_halting(anira, anira.init(jax.random.key(0)))
  out = _compare(anira, params, *_batch())
  if decides_per_token(name):
    assert len(np.unique(out.trajectory.depth_BxL[:2])) > 1, 'depths do not vary: test too weak'


@pytest.mark.parametrize('name,overrides', [
    ('online', dict(core_layers=2, prelude_layers=2, coda_layers=2)),
    ('oracle', dict(iteration_embedding=True, position='learned')),
], ids=['multi_layer', 'iteration_embedding'])
def test_frozen_keys_that_depend_on_the_iteration(name, overrides):
  """Here a frozen token's keys change with t, so its cache levels above its depth are filled
  by running it on (state unchanged), not by copying its final keys. One row: each position's
  loop then ends at that token's own depth (in a batch, a deeper row would fill the levels)."""
  anira = tiny_anira(name, tiny_model(**overrides))
  assert not decoding.static_frozen_kv(anira)
  params = _spread_halting(anira, anira.init(jax.random.key(0)))
  tokens, complexity = _batch()
  out = _compare(anira, params, tokens[:1], complexity[:1])
  depth_L = np.asarray(out.trajectory.depth_BxL[0])
  assert any(depth_L[i] < depth_L[i + 1:].max() for i in range(len(depth_L) - 1))


def test_generate_continues_with_the_argmax_of_the_full_model():
  anira = tiny_anira('online', tiny_model())
  params = _spread_halting(anira, anira.init(jax.random.key(0)))
  prompt = _batch()[0][:2, :4]
  out = decoding.generate(anira, params, prompt, num_tokens=4)
  tokens, depth = out.tokens_BxL, out.depth_BxL
  assert tokens.shape == depth.shape == (2, 8)
  np.testing.assert_array_equal(tokens[:, :4], prompt)
  full = anira.apply(params, tokens, train=False, path='loop')
  np.testing.assert_array_equal(tokens[:, 4:], jnp.argmax(full.logits_BxLxV[:, 3:-1], -1))
  np.testing.assert_array_equal(depth, full.trajectory.depth_BxL)
  np.testing.assert_allclose(out.q_BxLxT, full.trajectory.decision.q_BxLxT, atol=1e-5)
  # Prompts of different lengths in one batch: each row as if decoded alone.
  ragged = decoding.generate(anira, params, prompt, num_tokens=4, prompt_lengths_B=[2, 4])
  alone = decoding.generate(anira, params, prompt[:1, :2], num_tokens=6)
  np.testing.assert_array_equal(ragged.tokens_BxL[0], alone.tokens_BxL[0])
  np.testing.assert_array_equal(ragged.depth_BxL[0], alone.depth_BxL[0])
  np.testing.assert_array_equal(ragged.tokens_BxL[1], tokens[1])


@pytest.mark.parametrize('name', ['online', 'early'])
def test_whole_sequence_in_several_causal_blocks(name, monkeypatch):
  """Decoding attends through `layers.attend` alone; the whole-sequence loop it is compared
  with uses `layers.causal_attention`, here in blocks of 4 over 9 positions (sequences of the
  other tests fit one block)."""
  monkeypatch.setattr(layers, 'CAUSAL_BLOCK', 4)
  anira = tiny_anira(name, tiny_model())
  params = _spread_halting(anira, anira.init(jax.random.key(0)))
  _compare(anira, params, *_batch())
