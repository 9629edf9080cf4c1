"""Deciders against hand-computed values on a 3-step, 2-token example, and gradient flow."""

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import ALL_DECIDERS, tiny_anira, tiny_model, tiny_options

from anira_jax import deciders
from anira_jax.deciders import base, early, ponder
from anira_jax.training import objective, step

D = 3
# Deciders with a learned head, and those trained with the paper's depth prior.
LEARNED = [n for n in ALL_DECIDERS if issubclass(deciders.DECIDERS[n].Options, base.HeadOptions)]
WITH_DEPTH_PRIOR = [n for n in ALL_DECIDERS
                    if issubclass(deciders.DECIDERS[n].Options, base.DepthPriorOptions)]


def _constant_head(params: dict, logit: float) -> dict:
  """Head params whose output is `logit` for any state: zero last kernel, constant bias."""
  last = sorted(k for k in params if k.startswith('Dense'))[-1]
  params = jax.tree.map(lambda x: x, params)
  params[last]['kernel'] = jnp.zeros_like(params[last]['kernel'])
  params[last]['bias'] = jnp.full_like(params[last]['bias'], logit)
  return params


def _run(name: str, lam: float, *, train=False, rule='median', threshold=0.5, batch=(1, 2),
         **decider_overrides):
  """Runs the decider's state machine for D=3 steps on random states, with λ held constant."""
  if deciders.DECIDERS[name].has_rule:
    decider_overrides.update(rule=rule, threshold=threshold)
  model = tiny_model(max_depth=D)
  decider = deciders.make(name, model, tiny_options(name, **decider_overrides))
  params = _constant_head(decider.init(jax.random.key(0)), math.log(lam / (1 - lam)))
  states = jax.random.normal(jax.random.key(1), (D + 1, *batch, model.width))
  ctx = deciders.Context(train=train, key=jax.random.key(2), complexity_BxL=None, max_depth=D)
  state = decider.start(params, states[0], ctx)
  depth = jnp.zeros(batch, jnp.int32)
  for t in range(1, D + 1):
    depth = depth + (decider.runs(state, jnp.int32(t)) > 0.5)
    state = decider.observe(params, state, states[t], jnp.int32(t))
  decision = decider.finish(params, state, states[D], jnp.int32(D), depth)
  return decider, decision, depth, states


def test_kl_to_geometric_prior_by_hand():
  q = jnp.array([[[0.2, 0.3, 0.5], [1.0, 0.0, 0.0]]])
  prior = np.array([1 / 2, 1 / 4, 1 / 8]) / (7 / 8)  # b = 2
  expected = [sum(qi * math.log(qi / pi) for qi, pi in zip([0.2, 0.3, 0.5], prior)),
              math.log(1 / prior[0])]
  np.testing.assert_allclose(base.kl(q, base.log_geometric_prior(2.0, 3))[0], expected, rtol=1e-5)
  # b = 1 is the uniform prior: KL = log D − H(q).
  uniform = base.kl(q, base.log_geometric_prior(1.0, 3))[0, 0]
  entropy = -sum(x * math.log(x) for x in [0.2, 0.3, 0.5])
  np.testing.assert_allclose(uniform, math.log(3) - entropy, rtol=1e-5)


def test_kl_has_a_finite_gradient_where_a_depth_has_probability_zero():
  q = jnp.array([[[0.5, 0.5, 0.0]]])
  log_prior = base.log_geometric_prior(2.0, 3)
  grad = np.asarray(jax.grad(lambda q: base.kl(q, log_prior).sum())(q))[0, 0]
  assert np.all(np.isfinite(grad))
  # d/dq_t Σ q log(q / r) = log(q_t / r_t) + 1 where q_t > 0.
  np.testing.assert_allclose(grad[:2], np.log(0.5) - np.asarray(log_prior[:2]) + 1, rtol=1e-5)


def test_kl_regularizer_is_gamma_times_mean_kl():
  opts = tiny_options('early', gamma=0.5, prior_base=2.0)
  q = jnp.array([[[0.2, 0.3, 0.5], [1.0, 0.0, 0.0]]])
  decision = base.Decision(q, jnp.ones((1, 2), jnp.int32), None)
  reg, metrics = early.kl_regularizer(opts, decision, jnp.array([[1.0, 0.0]]))
  kl0 = base.kl(q, base.log_geometric_prior(2.0, 3))[0, 0]
  np.testing.assert_allclose(metrics['kl'], kl0, rtol=1e-6)
  np.testing.assert_allclose(reg, 0.5 * kl0, rtol=1e-6)


def test_online_q_by_hand():
  q = base.halting_distribution(jnp.array([[[0.5, 0.5, 0.2], [0.1, 0.9, 0.0]]]))
  np.testing.assert_allclose(q[0], [[0.5, 0.25, 0.25], [0.1, 0.81, 0.09]], rtol=1e-6)
  np.testing.assert_allclose(q.sum(-1), 1.0, rtol=1e-6)  # λ_D ≡ 1 whatever the head says


@pytest.mark.parametrize('rule,threshold,expected_depth', [
    ('median', 0.5, 2),  # λ = 0.3: q = [0.3, 0.21, 0.49], CDF = [0.3, 0.51, 1]
    ('threshold', 0.25, 1),
    ('threshold', 0.6, 3),
    ('mode', 0.5, 3),  # λ_t < 1/2 until λ_D ≡ 1; argmax q = 3 too
])
def test_online_inference_rules_by_hand(rule, threshold, expected_depth):
  _, decision, depth, _ = _run('online', 0.3, rule=rule, threshold=threshold)
  np.testing.assert_allclose(decision.q_BxLxT[0, 0], [0.3, 0.21, 0.49], rtol=1e-5)
  np.testing.assert_array_equal(depth, expected_depth)
  np.testing.assert_array_equal(decision.head_calls_BxL, depth)


def test_online_mode_rule_halts_where_q_peaks():
  _, decision, depth, _ = _run('online', 0.6, rule='mode')  # q = [0.6, 0.24, 0.16]
  np.testing.assert_array_equal(depth, 1)
  assert int(jnp.argmax(decision.q_BxLxT[0, 0])) + 1 == 1


def test_inverse_cdf_sampling_matches_q():
  _, decision, depth, _ = _run('online', 0.3, train=True, batch=(64, 64))
  freq = np.bincount(np.asarray(depth).ravel(), minlength=D + 1)[1:] / depth.size
  np.testing.assert_allclose(freq, [0.3, 0.21, 0.49], atol=0.025)


def test_early_sampling_matches_q_and_mode_at_inference():
  decider = deciders.make('early', tiny_model(max_depth=D), tiny_options('early'))
  params = _constant_head(decider.init(jax.random.key(0)), 0.0)
  params['Dense_1']['bias'] = jnp.log(jnp.array([0.2, 0.5, 0.3]))
  h0 = jnp.zeros((64, 64, 16))
  train = decider.start(params, h0, deciders.Context(True, jax.random.key(1), None, D))
  depth = np.asarray(train['cont'].sum(-1)).astype(int).ravel()
  np.testing.assert_allclose(np.bincount(depth, minlength=4)[1:] / depth.size, [0.2, 0.5, 0.3],
                             atol=0.025)
  np.testing.assert_allclose(train['q'][0, 0], [0.2, 0.5, 0.3], rtol=1e-5)
  infer = decider.start(params, h0, deciders.Context(False, None, None, D))
  np.testing.assert_array_equal(infer['cont'].sum(-1), 2)


@pytest.mark.parametrize('lam,expected_p,expected_depth', [
    (0.4, [0.4, 0.4, 0.2], 3),  # cumulative 0.4, 0.8 < 0.99, then forced at D: R = 0.2
    (0.6, [0.6, 0.4, 0.0], 2),  # 0.6 + 0.6 >= 0.99 at n = 2: R = 0.4
])
def test_act_by_hand(lam, expected_p, expected_depth):
  decider, decision, depth, states = _run('act', lam, penalty=0.5)
  np.testing.assert_array_equal(depth, expected_depth)
  np.testing.assert_allclose(decision.q_BxLxT[0, 0], expected_p, rtol=1e-5, atol=1e-7)
  mixture = sum(p * states[t + 1] for t, p in enumerate(expected_p))
  np.testing.assert_allclose(decision.readout_BxLxD, mixture, rtol=1e-5, atol=1e-6)
  reg, metrics = decider.regularizer(decision, depth, jnp.ones(depth.shape))
  ponder_cost = expected_depth + expected_p[expected_depth - 1]  # N + R
  np.testing.assert_allclose(metrics['ponder_cost'], ponder_cost, rtol=1e-5)
  np.testing.assert_allclose(reg, 0.5 * ponder_cost, rtol=1e-5)


@pytest.mark.parametrize('direction', ['prior_q', 'q_prior'])
def test_ponder_regularizer_by_hand(direction):
  decider, decision, _, _ = _run('ponder', 0.5, beta=2.0, lambda_p=0.2, kl=direction)
  q = [0.5, 0.25, 0.25]
  np.testing.assert_allclose(decision.q_BxLxT[0, 0], q, rtol=1e-6)
  prior = np.array([0.2, 0.16, 0.128]) / 0.488
  np.testing.assert_allclose(ponder.geometric_prior(0.2, 3), prior, rtol=1e-6)
  a, b = (prior, q) if direction == 'prior_q' else (q, prior)
  kl = sum(x * math.log(x / y) for x, y in zip(a, b))
  reg, metrics = decider.regularizer(decision, jnp.full((1, 2), 3), jnp.ones((1, 2)))
  np.testing.assert_allclose(metrics['kl'], kl, rtol=1e-5)
  np.testing.assert_allclose(reg, 2.0 * kl, rtol=1e-5)


def test_ponder_trains_on_q_weighted_step_losses_without_halting():
  anira = tiny_anira('ponder', tiny_model(max_depth=D))
  params = anira.init(jax.random.key(0))
  params['decider'] = _constant_head(params['decider'], 0.0)  # λ = 1/2: q = [.5, .25, .25]
  tokens = jax.random.randint(jax.random.key(1), (2, 5), 1, 5)
  batch = dict(tokens=tokens, targets=(tokens + 1) % 5, loss_mask=jnp.ones((2, 5), bool),
               complexity=jnp.zeros((2, 5)))
  _, metrics = jax.jit(functools.partial(step.gradients, anira=anira))(params, batch,
                                                                    jax.random.key(2))
  assert float(metrics['mean_depth']) == D  # training never halts early
  full_depth = tiny_anira('fixed', tiny_model(max_depth=D))
  out = full_depth.apply({'model': params['model'], 'decider': {}}, tokens, train=False,
                         collect_states=True)
  per_step = [objective.cross_entropy_BxL(anira.network.readout(params['model'], h),
                                          batch['targets']).mean()
              for h in out.trajectory.states_TxBxLxD]
  np.testing.assert_allclose(metrics['cross_entropy'],
                             0.5 * per_step[0] + 0.25 * per_step[1] + 0.25 * per_step[2],
                             rtol=1e-5)


def _decider_grads(name: str, **decider_overrides) -> dict:
  """Gradient of the training loss with respect to the decider's params, on a tiny batch."""
  anira = tiny_anira(name, tiny_model(), **decider_overrides)
  params = anira.init(jax.random.key(0))
  tokens = jax.random.randint(jax.random.key(1), (4, 6), 1, 5)
  batch = dict(tokens=tokens, targets=(tokens * 2) % 5, loss_mask=jnp.ones((4, 6), bool),
               complexity=jnp.zeros((4, 6)))
  grads_fn = jax.jit(functools.partial(step.gradients, anira=anira))
  return grads_fn(params, batch, jax.random.key(2))[0]['decider']


@pytest.mark.parametrize('name', LEARNED)
def test_gradients_reach_every_decider_parameter(name):
  overrides = dict(gamma=0.1, prior_base=2.0) if name in WITH_DEPTH_PRIOR else {}
  grads = _decider_grads(name, **overrides)
  for path, g in jax.tree_util.tree_leaves_with_path(grads):
    assert np.all(np.isfinite(g)), path
    assert np.any(g != 0), f'{name}: zero gradient at {jax.tree_util.keystr(path)}'


@pytest.mark.parametrize('name', WITH_DEPTH_PRIOR)
def test_straight_through_alone_carries_gradient_to_the_head(name):
  """With γ = 0 the only path from the task loss to the head is the straight-through mask."""
  assert any(np.any(g != 0) for g in jax.tree.leaves(_decider_grads(name, gamma=0.0)))


@pytest.mark.parametrize('name', LEARNED)
def test_deep_start(name):
  """Untrained deciders run deep (the collapse to depth 1 that peers report starts here)."""
  anira = tiny_anira(name, tiny_model())
  params = anira.init(jax.random.key(0))
  out = anira.apply(params, jnp.ones((2, 8), jnp.int32), train=False, path='loop')
  assert float(out.trajectory.depth_BxL.mean()) >= 3.0


def test_registry_holds_the_papers_deciders_and_refuses_unknown_names():
  assert {'fixed', 'early', 'online', 'act', 'ponder', 'oracle'} <= set(deciders.DECIDERS)
  with pytest.raises(ValueError, match='unknown decider'):
    deciders.make('sometimes', tiny_model())
