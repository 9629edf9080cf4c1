"""Real-valued inputs per position (`vector_size` > 0, PonderNet's parity format): the embedding
adds their linear map (closed form), every executor reads them alike, training reaches their
map, inspection traces them, and a model and its batch that disagree about them stop with a
message."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import assert_same_on_real_tokens, tiny_anira, tiny_model
from test_compaction import BUCKETS
from test_compaction import _batch as token_batch
from test_inspect import tiny_config
from test_recurrence import _spread_halting

from anira_jax import compaction, config as config_lib, decoding, inspect
from anira_jax.training import loop

F = 6


def _batch():
  tokens, complexity = token_batch()
  vectors = jax.random.normal(jax.random.key(7), tokens.shape + (F,))
  return tokens, complexity, jnp.where((tokens != 0)[..., None], vectors, 0.0)


def test_the_embedding_adds_the_linear_map_of_each_positions_vector():
  anira = tiny_anira('fixed', tiny_model(vector_size=F))
  params = anira.init(jax.random.key(0))['model']
  tokens, _, vectors = _batch()
  positions = jnp.arange(tokens.shape[1])
  kernel = params['vectors']['kernel']
  assert kernel.shape == (F, 16)
  added = (anira.network.embed_inputs(params, tokens, positions, vectors)
           - anira.network.embed_tokens(params, tokens, positions))
  np.testing.assert_allclose(added, np.einsum('blf,fd->bld', vectors, kernel), atol=1e-5)


def test_a_model_and_inputs_that_disagree_about_vectors_stop_with_a_message():
  tokens, _, vectors = _batch()
  with_vectors = tiny_anira('fixed', tiny_model(vector_size=F))
  plain = tiny_anira('fixed', tiny_model())
  with pytest.raises(ValueError, match=r'vector_size=6 but vectors were not given'):
    with_vectors.apply(with_vectors.init(jax.random.key(0)), tokens, train=False)
  with pytest.raises(ValueError, match=r'vector_size=0 but vectors were given'):
    plain.apply(plain.init(jax.random.key(0)), tokens, train=False, vectors_BxLxF=vectors)
  assert 'vector_size' not in config_lib.default_config().model  # the task's, not a config field


def test_unroll_loop_compaction_and_decoding_read_the_vectors_alike():
  """Executors differ only in how they reach h0 (decoding embeds one position at a time), so one
  decider with per-token halting checks the wiring; the decider protocol itself is checked for
  every decider on tokens (test_recurrence, test_compaction, test_decoding)."""
  anira = tiny_anira('online', tiny_model(vector_size=F))
  params = _spread_halting(anira, anira.init(jax.random.key(0)))
  tokens, complexity, vectors = _batch()
  run = jax.jit(lambda p, t, c, v, path: anira.apply(p, t, train=False, complexity_BxL=c,
                                                     path=path, vectors_BxLxF=v),
                static_argnums=4)
  loop_out = run(params, tokens, complexity, vectors, 'loop')
  assert_same_on_real_tokens(run(params, tokens, complexity, vectors, 'unroll'), loop_out, tokens,
                             atol_logits=1e-5, atol_q=1e-6)
  compacted = jax.jit(lambda p, t, c, v: compaction.run_compacted(
      anira, p, t, complexity_BxL=c, buckets=BUCKETS, vectors_BxLxF=v))(
          params, tokens, complexity, vectors)
  assert_same_on_real_tokens(compacted, loop_out, tokens, atol_logits=1e-5, atol_q=1e-6)
  assert int(compacted.work.compacted_iterations) > 0, 'compaction never ran: test too weak'
  decoded = jax.jit(lambda p, t, c, v: decoding.decode_logits(
      anira, p, t, complexity_BxL=c, vectors_BxLxF=v))(params, tokens, complexity, vectors)
  assert_same_on_real_tokens(decoded, loop_out, tokens, atol_logits=1e-4, atol_q=1e-5)
  depth = np.asarray(loop_out.trajectory.depth_BxL)[np.asarray(tokens != 0)]
  assert len(np.unique(depth)) > 1, 'depths do not vary: test too weak'
  without = run(params, tokens, complexity, jnp.zeros_like(vectors), 'loop')
  assert not np.allclose(without.logits_BxLxV, loop_out.logits_BxLxV, atol=1e-3)


def test_training_reaches_the_map_and_inspection_traces_vector_batches(tmp_path):
  config = tiny_config('early')
  config.task.options = {'layout': 'vector', 'ponder_length': 8}
  config.eval.splits = {'in_distribution': '1-8'}
  loop.train_and_evaluate(config, tmp_path)
  run = inspect.load(tmp_path)
  assert run.anira.model_cfg.vector_size == 8
  init_key, _ = jax.random.split(jax.random.key(config.seed))  # as the training loop splits it
  moved = np.abs(np.asarray(run.params['model']['vectors']['kernel'])
                 - np.asarray(run.anira.init(init_key)['model']['vectors']['kernel']))
  # Two Adam steps move each entry by about the learning rate: more means `init_key` is not the
  # loop's (so the comparison would prove nothing), none means training never reached the map.
  assert 0 < moved.max() < 0.01
  batch = run.batches('in_distribution')[0]
  trace = run.trace(batch)
  assert trace.depth.shape == batch['tokens'].shape == (16, 1)
  assert trace.correct.shape == (16, 1)
  with pytest.raises(ValueError, match='reads a vector per position'):
    run.trace(batch['tokens'])
