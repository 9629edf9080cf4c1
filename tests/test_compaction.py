"""Compacted inference == the masked inference loop (logits, depths, q) for every decider, with
padding, a multi-layer core, an iteration embedding and a run set that grows again; one
compilation for any active counts."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import (ALL_DECIDERS, assert_same_on_real_tokens, decides_per_token, tiny_anira,
                      tiny_model)
from test_recurrence import _spread_halting

from anira_jax import compaction, deciders, recurrence
from anira_jax.deciders import scheduled as deciders_scheduled
from anira_jax.model import layers

BUCKETS = (9, 18)  # tokens of a batch (B·L = 24 or 36): iterations computing <= 18 run compacted


def _batch(seed: int = 1):
  tokens = jax.random.randint(jax.random.key(seed), (3, 12), 1, 5)
  tokens = tokens.at[2, 8:].set(0)  # a right-padded row
  complexity = jax.random.randint(jax.random.key(seed + 1), (3, 12), 0, 4).astype(jnp.float32)
  return tokens, complexity


def _compare(anira, params, tokens, complexity, buckets=BUCKETS):
  loop = jax.jit(lambda p, t, c: anira.apply(p, t, train=False, complexity_BxL=c, path='loop'))
  compacted = jax.jit(lambda p, t, c: compaction.run_compacted(
      anira, p, t, complexity_BxL=c, buckets=buckets))
  ref, out = loop(params, tokens, complexity), compacted(params, tokens, complexity)
  assert_same_on_real_tokens(out, ref, tokens, atol_logits=1e-5, atol_q=1e-6)
  assert int(out.trajectory.iterations) == int(ref.trajectory.iterations)
  return out


@pytest.mark.parametrize('name', ALL_DECIDERS)
def test_same_as_masked_loop_for_every_decider(name):
  anira = tiny_anira(name, tiny_model())
  params = _spread_halting(anira, anira.init(jax.random.key(0)))
  tokens, complexity = _batch()
  out = _compare(anira, params, tokens, complexity)
  # Iteration t runs compacted when 0 < (tokens still running) <= the largest bucket.
  depth = np.asarray(out.trajectory.depth_BxL)[np.asarray(tokens != 0)]
  running_T = [(depth >= t).sum() for t in range(1, anira.model_cfg.max_depth + 1)]
  assert int(out.work.compacted_iterations) == sum(0 < n <= max(BUCKETS) for n in running_T)
  if decides_per_token(name):
    assert len(np.unique(depth)) > 1, 'depths do not vary: test too weak'


@pytest.mark.parametrize('overrides', [dict(core_layers=2), dict(iteration_embedding=True),
                                       dict(core_layers=2, attention_window=2)],
                         ids=['two_core_layers', 'iteration_embedding', 'attention_window'])
def test_frozen_tokens_keys_follow_the_masked_semantics(overrides):
  """Deep layers' keys of a frozen token depend on its predecessors' current states (and with an
  iteration embedding, on t): compaction must recompute them where the masked path would."""
  anira = tiny_anira('oracle', tiny_model(**overrides))
  params = anira.init(jax.random.key(0))
  tokens = jax.random.randint(jax.random.key(1), (2, 12), 1, 5)
  depths = jnp.array([[1, 1, 1, 1, 1, 1, 3, 1, 4, 1, 2, 1],
                      [1, 1, 1, 1, 1, 1, 1, 3, 1, 1, 4, 2]])
  out = _compare(anira, params, tokens, (depths - 1).astype(jnp.float32))
  assert int(out.work.compacted_iterations) >= 2


def test_multi_layer_core_with_an_online_decider():
  anira = tiny_anira('online', tiny_model(core_layers=2))
  params = _spread_halting(anira, anira.init(jax.random.key(0)))
  tokens, complexity = _batch()
  # Row 1 is the one whose deep tokens come late, so frozen ones before them are left alone.
  out = _compare(anira, params, tokens[1:2], complexity[1:2])
  assert int(out.work.compacted_iterations) > 0, 'compaction never ran: test too weak'


def test_one_compilation_for_any_active_counts():
  anira = tiny_anira('oracle', tiny_model())
  params = anira.init(jax.random.key(0))
  tokens, _ = _batch()

  @jax.jit
  @chex.assert_max_traces(n=1)
  def run(params, tokens, complexity):
    return compaction.run_compacted(anira, params, tokens, complexity_BxL=complexity,
                                    buckets=BUCKETS).work

  works = [run(params, tokens, jnp.full(tokens.shape, c, jnp.float32)) for c in (0.0, 3.0)]
  works.append(run(params, tokens, _batch(seed=5)[1]))
  # Depth 1 everywhere: one dense iteration; depth D everywhere: D; mixed: compacted steps.
  assert [int(w.dense_iterations) for w in works[:2]] == [1, 4]
  assert int(works[2].compacted_iterations) > 0


def test_each_iteration_runs_in_the_smallest_bucket_that_holds_it():
  """Iteration t computes the real tokens of depth >= t (one core layer): in the smallest bucket
  that holds them all, or the dense step above the largest."""
  anira = tiny_anira('oracle', tiny_model())
  params = anira.init(jax.random.key(0))
  tokens, complexity = _batch(seed=4)  # to compute: 32, 23, 14, 8 tokens
  out = compaction.run_compacted(anira, params, tokens, complexity_BxL=complexity,
                                 buckets=BUCKETS)
  depth = np.where(np.asarray(tokens) != 0, np.asarray(out.trajectory.depth_BxL), 0)
  counts = [int(np.sum(depth >= t)) for t in range(1, depth.max() + 1)]
  slots = [min([s for s in BUCKETS if s >= c], default=tokens.size) for c in counts]
  assert sorted(set(slots)) == [*BUCKETS, tokens.size], f'{counts}: test too weak'
  assert int(out.work.token_slots) == sum(slots)
  assert int(out.work.compacted_iterations) == sum(s < tokens.size for s in slots)


def test_bucket_ladder():
  for tokens in (64, 128, 1000, 8192):
    sizes = compaction.bucket_sizes(tokens, dense_fraction=0.75)
    assert list(sizes) == sorted(set(sizes)) and sizes[-1] == int(0.75 * tokens)
    assert all(s % 8 == 0 for s in sizes[:-1])
    assert all(b / a <= 1.6 for a, b in zip(sizes, sizes[1:])), sizes  # ≤ ~1/3 of slots wasted
  assert compaction.bucket_sizes(12, dense_fraction=0.75, min_size=3) == (3, 4, 5, 6, 8, 9)


class _Regrowing(deciders_scheduled.Scheduled):
  """Test-only: every token runs iterations 1 and 3, only the first two of each row run 2 and 4.
  No registered decider's run set grows again; the decider protocol allows it."""

  name = 'regrowing'
  Options = deciders_scheduled.Fixed.Options

  def start(self, params, h0_BxLxD, ctx):
    cont_BxLxT = jnp.ones(h0_BxLxD.shape[:2] + (ctx.max_depth,)).at[:, 2:, 1::2].set(0.0)
    return {'cont': cont_BxLxT, 'q': cont_BxLxT / ctx.max_depth}


def test_a_growing_run_set_falls_back_to_the_dense_step():
  """Iteration 3 (everyone again) takes the dense step inside the compacted phase; iteration 4's
  compacted step then reads the frozen tokens' layer-1 keys/values, which must be current."""
  anira = tiny_anira('fixed', tiny_model())
  anira.decider = _Regrowing(anira.decider.options, anira.model_cfg)
  params = anira.init(jax.random.key(0))
  tokens = jax.random.randint(jax.random.key(1), (2, 12), 1, 5)
  ctx = deciders.Context(train=False, key=None, max_depth=4, complexity_BxL=None)
  h0 = anira.network.embed(params['model'], tokens)
  valid = tokens != 0
  ref = recurrence.loop(anira.network, anira.decider, params, h0, ctx, valid)
  out, work = jax.jit(lambda p, h: compaction.compacted_loop(
      anira, p, h, ctx, valid, buckets=BUCKETS))(params, h0)
  np.testing.assert_allclose(out.state_BxLxD, ref.state_BxLxD, atol=1e-5)
  np.testing.assert_array_equal(out.depth_BxL, ref.depth_BxL)
  assert (int(work.dense_iterations), int(work.compacted_iterations)) == (2, 2)


@pytest.mark.parametrize('name', ['online', 'oracle'])
def test_dense_steps_in_several_causal_blocks(name, monkeypatch):
  """The dense steps (and the masked loop) attend with `layers.causal_attention`, here in blocks
  of 5 over 12 positions; compacted steps with `layers.attend` (sequences of the other tests fit
  one block)."""
  monkeypatch.setattr(layers, 'CAUSAL_BLOCK', 5)
  anira = tiny_anira(name, tiny_model())
  params = _spread_halting(anira, anira.init(jax.random.key(0)))
  out = _compare(anira, params, *_batch())
  assert int(out.work.dense_iterations) > 0 and int(out.work.compacted_iterations) > 0
