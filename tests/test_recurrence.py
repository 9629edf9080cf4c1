"""The recurrence: training unroll == inference loop for every decider, loop early exit,
per-token freezing against an independent per-token reference, and causality."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import ALL_DECIDERS, PROTOCOL_CASES, tiny_anira, tiny_model

from anira_jax import recurrence
from anira_jax.deciders import Context


def _setup(decider: str, seed: int = 0, **model_overrides):
  anira = tiny_anira(decider, tiny_model(**model_overrides))
  params = anira.init(jax.random.key(seed))
  tokens = jax.random.randint(jax.random.key(seed + 1), (3, 7), 1, 5)
  complexity = jax.random.randint(jax.random.key(seed + 2), (3, 7), 0, 4).astype(jnp.float32)
  return anira, params, tokens, complexity


def _spread_halting(anira, params):
  """Decision-head params under which tokens halt at different depths (not all at D)."""
  params = jax.tree.map(lambda x: x, params)
  head = params['decider']
  if head:
    last = sorted(k for k in head if k.startswith('Dense'))[-1]
    head[last]['kernel'] = 2.0 * jax.random.normal(jax.random.key(9), head[last]['kernel'].shape)
    head[last]['bias'] = jnp.zeros_like(head[last]['bias'])
  return params


class UnrollLoopTest(chex.TestCase):

  @chex.variants(with_jit=True, without_jit=True)
  @pytest.mark.filterwarnings('ignore')
  def test_same_logits_depths_and_q_for_every_decider(self):
    # Jitted: every decider. Eager (op by op, many times slower): one per protocol path.
    jitted = self.variant.type == chex.ChexVariantType.WITH_JIT
    for name in ALL_DECIDERS if jitted else PROTOCOL_CASES:
      for train in (False, True):
        anira, params, tokens, complexity = _setup(name)
        params = _spread_halting(anira, params)
        key = jax.random.key(3)

        def run(path):
          @self.variant
          def apply(params, tokens, complexity):
            out = anira.apply(params, tokens, train=train, key=key, complexity_BxL=complexity,
                              path=path)
            return out.logits_BxLxV, out.trajectory.depth_BxL, out.trajectory.decision.q_BxLxT
          return apply(params, tokens, complexity)

        unrolled, looped = run('unroll'), run('loop')
        msg = f'decider={name} train={train}'
        np.testing.assert_allclose(unrolled[0], looped[0], atol=1e-5, err_msg=msg)
        np.testing.assert_array_equal(unrolled[1], looped[1], err_msg=msg)
        np.testing.assert_allclose(unrolled[2], looped[2], atol=1e-6, err_msg=msg)
        if name in ('early', 'online', 'act', 'ponder') and not train:
          assert len(np.unique(unrolled[1])) > 1, f'{msg}: depths do not vary, test too weak'


@pytest.mark.parametrize('name', ['oracle', 'online', 'early'])
def test_batch_that_halts_at_depth_1_runs_one_iteration(name):
  anira, params, tokens, _ = _setup(name)
  if name == 'online':  # λ ≈ 1 at the first step: the median rule halts there
    params['decider']['Dense_1']['bias'] = jnp.full((1,), 20.0)
  if name == 'early':  # the mode is depth 1
    params['decider']['Dense_1']['bias'] = jnp.array([20.0, 0.0, 0.0, 0.0])
  out = jax.jit(lambda p, t, c: anira.apply(p, t, train=False, complexity_BxL=c, path='loop'))(
      params, tokens, jnp.zeros(tokens.shape))
  assert int(out.trajectory.iterations) == 1
  np.testing.assert_array_equal(out.trajectory.depth_BxL, 1)
  full = anira.apply(params, tokens, train=False, complexity_BxL=jnp.full(tokens.shape, 3.0),
                     path='loop')
  if name == 'oracle':
    assert int(full.trajectory.iterations) == anira.model_cfg.max_depth


def test_padding_does_not_keep_the_loop_running():
  anira, params, tokens, _ = _setup('oracle')
  tokens = tokens.at[:, 4:].set(0)
  complexity = jnp.where(tokens == 0, 3.0, 0.0)  # padding would want depth D
  out = anira.apply(params, tokens, train=False, complexity_BxL=complexity, path='loop')
  assert int(out.trajectory.iterations) == 1


def _per_token_reference(anira, params, tokens, depths):
  """Token-by-token recomputation with a cache of every token's state at every level.

  Token i at iteration t reads token j's state at level min(t-1, d_j) — the KV-cache rule of
  DESIGN §2.6 — and nothing after i. It shares only `Network.core` with the library.
  """
  net = anira.network
  core = jax.jit(net.core)  # one compilation per prefix length, not one per operation
  h0 = net.embed(params['model'], tokens[None])[0]
  levels = []  # levels[j][t] = state of token j after t iterations, t <= d_j
  for i in range(tokens.shape[0]):
    levels.append([h0[i]])
    for t in range(1, depths[i] + 1):
      prefix = jnp.stack([levels[j][min(t - 1, depths[j])] for j in range(i)] + [levels[i][t - 1]])
      new = core(params['model'], prefix[None], h0[None, :i + 1], jnp.int32(t))[0, i]
      levels[i].append(new)
  return jnp.stack([levels[i][depths[i]] for i in range(tokens.shape[0])])


@pytest.mark.parametrize('kind,window', [('recurrent', 0), ('standard', 0), ('recurrent', 2)])
def test_freezing_matches_independent_per_token_reference(kind, window):
  name = 'oracle' if kind == 'recurrent' else 'fixed'
  anira, params, tokens, _ = _setup(name, kind=kind, attention_window=window)
  tokens = tokens[0]
  depths = np.array([4, 1, 3, 2, 4, 1, 2]) if kind == 'recurrent' else np.full(7, 4)
  _assert_unroll_is_per_token_reference(anira, params, tokens, depths)


def _assert_unroll_is_per_token_reference(anira, params, tokens_L, depths_L):
  """The training unroll, each token at its given depth (the oracle reads them as complexity
  d - 1 with c_max 3, D = 4), ends in the states of `_per_token_reference`."""
  ctx = Context(train=False, key=None, complexity_BxL=jnp.asarray(depths_L - 1.0)[None],
                max_depth=4)
  h0 = anira.network.embed(params['model'], tokens_L[None])
  trajectory = recurrence.unroll(anira.network, anira.decider, params, h0, ctx)
  np.testing.assert_array_equal(trajectory.depth_BxL[0], depths_L)
  expected = _per_token_reference(anira, params, tokens_L, depths_L)
  np.testing.assert_allclose(trajectory.state_BxLxD[0], expected, rtol=1e-5, atol=2e-5)


def test_frozen_token_equals_a_model_run_for_exactly_its_depth():
  """A token frozen at depth d, all of whose predecessors run at least d iterations, ends in
  the state a fixed-depth-d model gives it."""
  anira, params, tokens, _ = _setup('oracle')
  depths = jnp.array([[4, 4, 3, 2, 4, 1, 1]])
  out = anira.apply(params, tokens[:1], train=False, complexity_BxL=depths - 1.0)
  fixed = tiny_anira('fixed', tiny_model())
  for position, d in [(3, 2), (2, 3), (1, 4)]:
    ref = fixed.apply({'model': params['model'], 'decider': {}}, tokens[:1], train=False,
                      max_depth=d, path='loop')
    np.testing.assert_allclose(out.trajectory.state_BxLxD[0, position],
                               ref.trajectory.state_BxLxD[0, position], atol=1e-5)


@pytest.mark.parametrize('name,position', [(name, 'rope') for name in ALL_DECIDERS] + [
    ('fixed', 'learned'), ('fixed', 'sinusoidal'), ('early', 'none'), ('online', 'sinusoidal')])
def test_changing_a_later_token_never_changes_an_earlier_output(name, position):
  anira, params, tokens, complexity = _setup(name, position=position)
  params = _spread_halting(anira, params)
  changed = tokens.at[:, 4:].set(5 - tokens[:, 4:])
  for path in ('unroll', 'loop'):
    a = anira.apply(params, tokens, train=False, complexity_BxL=complexity, path=path)
    b = anira.apply(params, changed, train=False, complexity_BxL=complexity, path=path)
    np.testing.assert_allclose(a.logits_BxLxV[:, :4], b.logits_BxLxV[:, :4], atol=1e-5)
    np.testing.assert_array_equal(a.trajectory.depth_BxL[:, :4], b.trajectory.depth_BxL[:, :4])
    assert not np.allclose(a.logits_BxLxV[:, 4:], b.logits_BxLxV[:, 4:])


@pytest.mark.parametrize('path', ['unroll', 'loop'])
def test_an_attention_window_bounds_how_far_a_change_reaches(path):
  """With a window W every layer widens a token's reach by W - 1 positions: through prelude,
  D core iterations and coda, a change at position p reaches exactly p + (W - 1)(D + 2)."""
  window, depth = 2, 3
  anira, params, tokens, _ = _setup('fixed', attention_window=window, max_depth=depth)
  tokens = jax.random.randint(jax.random.key(7), (2, 12), 1, 5)
  changed = tokens.at[:, 2].set(5 - tokens[:, 2])
  reach = 2 + (window - 1) * (depth + 2)
  a, b = (anira.apply(params, t, train=False, path=path).logits_BxLxV for t in (tokens, changed))
  np.testing.assert_allclose(a[:, reach + 1:], b[:, reach + 1:], atol=1e-6)
  assert np.abs(np.asarray(a[:, reach] - b[:, reach])).max() > 1e-4
  np.testing.assert_allclose(a[:, :2], b[:, :2], atol=1e-6)


def test_causality_by_gradient():
  """The loss at position t has zero gradient with respect to the embeddings after t."""
  anira, params, tokens, _ = _setup('fixed')
  net = anira.network

  def loss_at(x_BxLxD, t):
    h0 = net._prelude.apply({'params': params['model']['prelude']}, x_BxLxD,
                            jnp.arange(x_BxLxD.shape[1]))
    ctx = Context(train=False, key=None, complexity_BxL=None, max_depth=4)
    traj = recurrence.unroll(net, anira.decider, params, h0, ctx)
    return jnp.sum(net.readout(params['model'], traj.state_BxLxD)[:, t])

  x = net._embed.apply({'params': params['model']['embed']}, tokens)
  grad = jax.grad(loss_at)(x, 3)
  assert np.all(grad[:, 4:] == 0)
  assert np.all(np.abs(grad[:, :4]).sum(-1) > 0)


def test_standard_model_has_unshared_layers():
  anira, params, _, _ = _setup('fixed', kind='standard')
  leaf = jax.tree.leaves(params['model']['core'])[0]
  assert leaf.shape[0] == 4
  with pytest.raises(ValueError, match='standard'):
    anira.apply(params, jnp.ones((1, 3), jnp.int32), train=False, max_depth=6)


def test_no_prelude_and_a_two_layer_core():
  anira, params, tokens, _ = _setup('fixed', prelude_layers=0, core_layers=2)
  assert params['model']['prelude'] == {}
  out = anira.apply(params, tokens, train=False, path='loop')
  assert out.logits_BxLxV.shape == (3, 7, 5)
