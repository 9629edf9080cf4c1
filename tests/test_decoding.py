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

from anira_jax import decoding, generation
from anira_jax.deciders import base as deciders_base
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
    ('online', dict(core_layers=2, coda_layers=2, attention_window=2)),
], ids=['multi_layer', 'iteration_embedding', 'attention_window'])
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


@pytest.mark.parametrize('name', ['early', 'fixed_point'])
def test_an_attention_window_reads_the_same_keys_from_the_cache(name):
  anira = tiny_anira(name, tiny_model(attention_window=3))
  params = _spread_halting(anira, anira.init(jax.random.key(0)))
  _compare(anira, params, *_batch())


def test_generation_continues_with_the_argmax_of_the_full_model():
  """`generation.generate_batch` on the ANIRA family (tests/test_gsm_symbolic.py does Llama with
  ragged prompts): tokens, depths and E_q[d] are the inference loop's on the generated text."""
  anira = tiny_anira('online', tiny_model())
  params = _spread_halting(anira, anira.init(jax.random.key(0)))
  prompt = np.asarray(_batch()[0][:2, :4])
  made = generation.generate_batch(anira, params, list(prompt), max_new_tokens=4, chunk=4)
  tokens = np.concatenate([prompt, np.stack([m.tokens for m in made])], axis=1)
  full = anira.apply(params, tokens, train=False, path='loop')
  at = slice(3, 7)  # position p predicts token p + 1
  np.testing.assert_array_equal(tokens[:, 4:], jnp.argmax(full.logits_BxLxV[:, at], -1))
  np.testing.assert_array_equal(np.stack([m.depth for m in made]),
                                full.trajectory.depth_BxL[:, at])
  expected = deciders_base.expected_depth(full.trajectory.decision.q_BxLxT)[:, at]
  np.testing.assert_allclose(np.stack([m.expected_depth for m in made]), expected, atol=1e-5)


@pytest.mark.parametrize('name', ['online', 'early'])
def test_whole_sequence_in_several_causal_blocks(name, monkeypatch):
  """Decoding attends through `layers.attend` alone; the whole-sequence loop it is compared
  with uses `layers.causal_attention`, here in blocks of 4 over 9 positions (sequences of the
  other tests fit one block)."""
  monkeypatch.setattr(layers, 'CAUSAL_BLOCK', 4)
  anira = tiny_anira(name, tiny_model())
  params = _spread_halting(anira, anira.init(jax.random.key(0)))
  _compare(anira, params, *_batch())
