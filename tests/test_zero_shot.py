"""The zero-shot exits, the supervised decider and T(n) against hand-computed cases; the readout
they observe is the model's own after each iteration, in every executor. (Their equivalence
across unroll, loop, compaction and decoding is in the tests parametrised over the registry.)"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import assert_same_on_real_tokens, tiny_anira, tiny_model, tiny_options

from anira_jax import decoding, deciders, recurrence
from anira_jax.deciders import base

D = 3


def _probs_logits(p_TxBxLxV) -> jnp.ndarray:
  """Logits whose softmax is p (log p)."""
  return jnp.log(jnp.asarray(p_TxBxLxV, jnp.float32))


def _run_stopping(name, logits_TxBxLxV=None, states_TxBxLxD=None, **overrides):
  """The decider's state machine for D steps on given readouts (or states); returns depth and
  q as the recurrence would get them (`runs` before each step)."""
  model = tiny_model(max_depth=D, vocab_size=2, width=2, num_heads=1)
  decider = deciders.make(name, model, tiny_options(name, **overrides))
  shape = (logits_TxBxLxV if logits_TxBxLxV is not None else states_TxBxLxD).shape[1:3]
  if states_TxBxLxD is None:
    states_TxBxLxD = jnp.zeros((D + 1, *shape, 2))
  ctx = deciders.Context(train=False, key=None, complexity_BxL=None, max_depth=D)
  state = decider.start({}, states_TxBxLxD[0], ctx)
  depth = jnp.zeros(shape, jnp.int32)
  for t in range(1, D + 1):
    depth = depth + (decider.runs(state, jnp.int32(t)) > 0.5)
    logits = None if logits_TxBxLxV is None else logits_TxBxLxV[t - 1]
    state = decider.observe({}, state, states_TxBxLxD[t], jnp.int32(t), logits)
  decision = decider.finish({}, state, states_TxBxLxD[D], jnp.int32(D), depth)
  np.testing.assert_array_equal(decision.q_BxLxT, jax.nn.one_hot(depth - 1, D))
  return np.asarray(depth)[0], decision


def test_confidence_by_hand():
  # Top probability per iteration: token 0 0.6, 0.95, 0.99; token 1 0.6, 0.7, 0.8; token 2 0.92.
  top = np.array([[0.6, 0.6, 0.92], [0.95, 0.7, 0.92], [0.99, 0.8, 0.92]])
  p = np.stack([top, 1 - top], -1)[:, None]  # [T, 1, 3, 2]
  depth, decision = _run_stopping('confidence', _probs_logits(p), threshold=0.9)
  np.testing.assert_array_equal(depth, [2, 3, 1])  # token 1 never: stopped at D
  np.testing.assert_array_equal(decision.head_calls_BxL[0], depth)  # one readout a step
  np.testing.assert_array_equal(
      _run_stopping('confidence', _probs_logits(p), threshold=0.9, min_depth=2)[0], [2, 3, 2])
  np.testing.assert_array_equal(
      _run_stopping('confidence', _probs_logits(p), threshold=0.5)[0], [1, 1, 1])


@pytest.mark.parametrize('measure,expected', [('kl', [2, 3]), ('entropy', [2, 2])])
def test_readout_convergence_by_hand(measure, expected):
  """p_0 is uniform. Token 0: [.9, .1] twice (KL = entropy change = 0 at step 2). Token 1:
  [.9, .1] then [.1, .9]: the entropy is unchanged but KL(p_1 ‖ p_2) = 0.8 log 9."""
  p = np.array([[[0.9, 0.1], [0.9, 0.1]],
                [[0.9, 0.1], [0.1, 0.9]],
                [[0.5, 0.5], [0.5, 0.5]]])[:, None]
  depth, _ = _run_stopping('convergence', _probs_logits(p), threshold=1e-3, measure=measure)
  np.testing.assert_array_equal(depth, expected)
  # At step 1 the change from uniform is KL([.5, .5] ‖ [.9, .1]) = 0.5 log(25/9) = 0.51.
  kl_1 = 0.5 * math.log(0.5 / 0.9) + 0.5 * math.log(0.5 / 0.1)
  assert _run_stopping('convergence', _probs_logits(p), threshold=kl_1 + 1e-4)[0][0] == 1
  assert _run_stopping('convergence', _probs_logits(p), threshold=kl_1 - 1e-4)[0][0] == 2


def test_fixed_point_by_hand():
  """‖h_t − h_{t−1}‖ / ‖h_t‖: token 0 moves 1/2, then 0.01/2 (< 0.03): stops at 2; token 1
  keeps doubling (1/2 each step): stops at D."""
  h = np.array([[[1.0, 0.0], [1.0, 0.0]],
                [[2.0, 0.0], [2.0, 0.0]],
                [[2.0, 0.01], [4.0, 0.0]],
                [[2.0, 0.01], [8.0, 0.0]]])[:, None]
  depth, decision = _run_stopping('fixed_point', states_TxBxLxD=jnp.asarray(h), threshold=0.03)
  np.testing.assert_array_equal(depth, [2, 3])
  np.testing.assert_array_equal(decision.head_calls_BxL, 0)  # no head, no readout
  np.testing.assert_array_equal(
      _run_stopping('fixed_point', states_TxBxLxD=jnp.asarray(h), threshold=0.6)[0], [1, 1])


def test_tied_depth_is_affine_in_complexity_and_follows_a_raised_depth():
  model = tiny_model(max_depth=8)
  decider = deciders.make('tied', model, tiny_options('tied', slope=0.5, offset=1.0))
  complexity = jnp.array([[1.0, 2.0, 5.0, 16.0]])
  for max_depth, expected in [(8, [2, 2, 4, 8]), (12, [2, 2, 4, 9])]:
    ctx = deciders.Context(False, None, complexity, max_depth)
    state = decider.start({}, jnp.zeros((1, 4, 16)), ctx)
    np.testing.assert_array_equal(state['cont'].sum(-1)[0], expected)
  assert recurrence.context(decider, model, train=False, complexity_BxL=complexity
                            ).complexity_BxL is not None  # read at test time: given from outside


def _supervised(lam: float):
  model = tiny_model(max_depth=D)
  decider = deciders.make('supervised', model, tiny_options('supervised'))  # c_max = 3
  params = decider.init(jax.random.key(0))
  last = sorted(k for k in params if k.startswith('Dense'))[-1]
  params[last]['kernel'] = jnp.zeros_like(params[last]['kernel'])
  params[last]['bias'] = jnp.full_like(params[last]['bias'], math.log(lam / (1 - lam)))
  return model, decider, params


def test_supervised_trains_on_the_oracle_depth_and_predicts_without_labels():
  model, decider, params = _supervised(0.3)  # q = [0.3, 0.21, 0.49] for every token
  anira = tiny_anira('supervised', model)
  complexity = jnp.array([[0.0, 1.5, 3.0]])  # oracle depths 1, 2, 3
  # The label reaches the decider in training only.
  assert recurrence.context(decider, model, train=False, complexity_BxL=complexity
                            ).complexity_BxL is None
  ctx = recurrence.context(decider, model, train=True, key=jax.random.key(1),
                           complexity_BxL=complexity)
  h0 = jax.random.normal(jax.random.key(2), (1, 3, model.width))
  net_params = {'model': anira.network.init(jax.random.key(3)), 'decider': params}
  traj = recurrence.unroll(anira.network, decider, net_params, h0, ctx)
  np.testing.assert_array_equal(traj.depth_BxL, [[1, 2, 3]])  # training runs the targets
  np.testing.assert_array_equal(traj.decision.target_BxL, [[1, 2, 3]])
  np.testing.assert_allclose(traj.decision.q_BxLxT[0, 0], [0.3, 0.21, 0.49], rtol=1e-5)
  loss, metrics = decider.regularizer(traj.decision, traj.depth_BxL, jnp.array([[1.0, 1.0, 0.0]]))
  np.testing.assert_allclose(loss, -(math.log(0.3) + math.log(0.21)) / 2, rtol=1e-5)
  np.testing.assert_allclose(metrics['depth_target_accuracy'], 0.0)  # argmax q = 3
  # At inference the head alone decides: the median of q is depth 2 for every token.
  test_ctx = recurrence.context(decider, model, train=False, complexity_BxL=complexity)
  test = recurrence.loop(anira.network, decider, net_params, h0, test_ctx, jnp.ones((1, 3), bool))
  np.testing.assert_array_equal(test.depth_BxL, [[2, 2, 2]])
  assert test.decision.target_BxL is None
  # A head that predicts the targets has no loss left: λ = 1 halts at 1 for the first token.
  _, decider, params = _supervised(1 - 1e-7)
  decision = base.Decision(base.halting_distribution(jnp.full((1, 1, D), 1 - 1e-7)),
                           jnp.ones((1, 1), jnp.int32), None, jnp.ones((1, 1), jnp.int32))
  assert float(decider.regularizer(decision, None, jnp.ones((1, 1)))[0]) < 1e-5


@pytest.mark.parametrize('name', ['confidence', 'convergence'])
def test_readout_deciders_observe_the_models_own_readout(name):
  """A token stops at the first iteration whose readout (as inspection reports it after every
  iteration) passes the threshold."""
  anira = tiny_anira(name, tiny_model())
  params = anira.init(jax.random.key(0))
  tokens = jax.random.randint(jax.random.key(1), (3, 12), 1, 5)
  out = anira.apply(params, tokens, train=False, path='loop', collect_states=True)
  logits = anira.readout_every_iteration(params, out.trajectory.states_TxBxLxD)
  log_p = jax.nn.log_softmax(logits, -1)
  if name == 'confidence':
    done = jnp.exp(log_p).max(-1) >= anira.decider.options.threshold
  else:
    previous = jnp.concatenate([jnp.full_like(log_p[:1], -math.log(5)), log_p[:-1]])
    done = jnp.sum(jnp.exp(previous) * (previous - log_p), -1) < anira.decider.options.threshold
  done = done.at[-1].set(True)
  first = np.argmax(np.asarray(done), axis=0) + 1
  np.testing.assert_array_equal(out.trajectory.depth_BxL, first)
  assert len(np.unique(first)) > 1, 'depths do not vary: test too weak'


@pytest.mark.parametrize('coda_layers', [0, 2])
def test_decoding_keeps_the_readout_per_iteration_for_any_coda(coda_layers):
  """Decoding's readout after iteration t reads earlier tokens' coda keys at level t; with two
  coda layers the levels above a token's depth are recomputed (its frozen keys depend on its
  predecessors at that level), without a coda layer there are none."""
  anira = tiny_anira('confidence', tiny_model(coda_layers=coda_layers))
  params = anira.init(jax.random.key(0))
  tokens = jax.random.randint(jax.random.key(1), (2, 9), 1, 5).at[1, 6:].set(0)
  ref = anira.apply(params, tokens, train=False, path='loop')
  out = jax.jit(lambda p, t: decoding.decode_logits(anira, p, t))(params, tokens)
  assert_same_on_real_tokens(out, ref, tokens, atol_logits=1e-4, atol_q=1e-5)
  valid = np.asarray(tokens) != 0
  assert len(np.unique(np.asarray(ref.trajectory.depth_BxL)[valid])) > 1, 'test too weak'
