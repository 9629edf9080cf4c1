"""Extrapolation ingredients of training: each changes what it claims and nothing else, and each
is off by default."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import tiny_anira, tiny_model

from anira_jax import config as config_lib
from anira_jax import experiment, ingredients
from anira_jax.ingredients import Ingredients
from anira_jax.options import ConfigError
from anira_jax.training import objective, step

D = 4


def _batch(rows: int = 6, length: int = 5):
  tokens = jax.random.randint(jax.random.key(1), (rows, length), 1, 5)
  complexity = jnp.broadcast_to(jnp.arange(1.0, length + 1), (rows, length))
  return dict(tokens=tokens, targets=(tokens * 2) % 5, loss_mask=jnp.ones((rows, length), bool),
              complexity=complexity)


def _terms(name: str, opts: Ingredients, **decider):
  anira = tiny_anira(name, tiny_model(max_depth=D), **decider)
  params = anira.init(jax.random.key(0))
  fn = jax.jit(functools.partial(objective.loss_terms, anira, opts=opts))
  return anira, params, fn(params, _batch(), jax.random.key(2))


def test_off_by_default_and_checked():
  config = config_lib.default_config()
  assert Ingredients.from_train(config.train) == Ingredients()
  assert experiment.build(config).ingredients == Ingredients()
  config.train.random_depth = 'sometimes'
  with pytest.raises(ConfigError, match=r"config.train.random_depth='sometimes'"):
    experiment.build(config)
  config.train.update(random_depth='none', iteration_loss=-1.0)
  with pytest.raises(ConfigError, match='config.train.iteration_loss=-1.0'):
    experiment.build(config)


@pytest.mark.parametrize('who', ['batch', 'example'])
def test_random_depth_caps_every_token_uniformly(who):
  opts = Ingredients(random_depth=who, random_depth_min=2)
  caps = np.stack([np.asarray(ingredients.depth_cap(opts, jax.random.key(i), (8, 3), D))
                   for i in range(300)])
  assert caps.min() == 2 and caps.max() == D
  if who == 'batch':
    assert np.all(caps == caps[:, :1, :1])
  else:
    assert np.all(caps == caps[:, :, :1]) and not np.all(caps == caps[:, :1, :1])
  freq = np.bincount(caps[:, :, 0].ravel(), minlength=D + 1)[2:] / caps[:, :, 0].size
  np.testing.assert_allclose(freq, 1 / 3, atol=0.04)
  assert ingredients.depth_cap(Ingredients(), jax.random.key(0), (8, 3), D) is None


def test_random_depth_stops_tokens_at_the_cap_and_changes_nothing_else():
  """The fixed decider then runs exactly the cap; ANIRA-O's own draws are kept (its key is not
  shared with the cap's), only cut at the cap."""
  opts = Ingredients(random_depth='example')
  cap = ingredients.depth_cap(opts, jax.random.fold_in(jax.random.key(2), 0x0de9), (6, 5), D)
  for name in ('fixed', 'online'):
    anira, params, off = _terms(name, Ingredients())
    _, _, on = _terms(name, opts)
    apply = jax.jit(lambda cap_BxL: anira.apply(params, _batch()['tokens'], train=True,
                                                key=jax.random.key(2), depth_cap_BxL=cap_BxL))
    uncapped, capped = apply(None), apply(cap)
    np.testing.assert_array_equal(capped.trajectory.depth_BxL,
                                  np.minimum(uncapped.trajectory.depth_BxL, cap))
    assert np.any(capped.trajectory.depth_BxL < uncapped.trajectory.depth_BxL), 'test too weak'
    # Same metrics as the loss terms report for the capped pass.
    np.testing.assert_allclose(on[3]['depth_sum'],
                               float(jnp.sum(capped.trajectory.depth_BxL)), rtol=1e-6)
    np.testing.assert_allclose(off[3]['depth_sum'],
                               float(jnp.sum(uncapped.trajectory.depth_BxL)), rtol=1e-6)
    # The decider's q up to the cap is its own: the cap stops tokens, it does not change what
    # they chose (past the cap, λ reads the frozen state).
    upto_BxLxT = np.arange(1, D + 1) <= np.asarray(cap)[..., None]
    np.testing.assert_allclose(np.asarray(capped.trajectory.decision.q_BxLxT)[upto_BxLxT],
                               np.asarray(uncapped.trajectory.decision.q_BxLxT)[upto_BxLxT],
                               atol=1e-6)


def test_solvable_mask_by_hand():
  opts = Ingredients(iteration_loss=1.0, iteration_loss_solvable=1.0)
  answer = jnp.array([[1.0, 1.0, 1.0, 0.0]])
  complexity = jnp.array([[1.0, 2.0, 3.0, 1.0]])
  mask = ingredients.iteration_mask(opts, answer, complexity, 3)
  np.testing.assert_array_equal(mask[:, 0], [[1, 0, 0, 0], [1, 1, 0, 0], [1, 1, 1, 0]])
  half = ingredients.iteration_mask(Ingredients(iteration_loss_solvable=0.5), answer, complexity, 3)
  np.testing.assert_array_equal(half[:, 0], [[1, 1, 0, 0], [1, 1, 1, 0], [1, 1, 1, 0]])
  every = ingredients.iteration_mask(Ingredients(iteration_loss=1.0), answer, complexity, 3)
  np.testing.assert_array_equal(every[:, 0], [[1, 1, 1, 0]] * 3)


@pytest.mark.parametrize('solvable', [0.0, 1.0])
def test_iteration_loss_adds_the_mean_readout_cross_entropy_and_nothing_else(solvable):
  opts = Ingredients(iteration_loss=0.5, iteration_loss_solvable=solvable)
  anira, params, off = _terms('early', Ingredients())
  _, _, on = _terms('early', opts)
  batch = _batch()
  out = anira.apply(params, batch['tokens'], train=True, key=jax.random.key(2),
                    collect_states=True)
  per_step = [objective.cross_entropy_BxL(anira.network.readout(params['model'], h),
                                          batch['targets'])
              for h in out.trajectory.states_TxBxLxD]
  mask = [np.asarray(batch['complexity']) * solvable <= t for t in range(1, D + 1)]
  expected = sum(float(jnp.sum(c * m)) for c, m in zip(per_step, mask)) / sum(
      float(m.sum()) for m in mask)
  ce, reg, metrics, sums = on
  np.testing.assert_allclose(metrics['iteration_ce'], expected, rtol=1e-5)
  np.testing.assert_allclose(reg, off[1] + 0.5 * expected, rtol=1e-5)
  np.testing.assert_allclose(ce, off[0], rtol=1e-6)  # the task loss is unchanged
  for name in sums:
    np.testing.assert_allclose(sums[name], off[3][name], rtol=1e-6, err_msg=name)
  assert 'iteration_ce' not in off[2]


def test_the_step_is_unchanged_with_every_ingredient_off():
  anira = tiny_anira('online', tiny_model(max_depth=D))
  params = anira.init(jax.random.key(0))
  grads = functools.partial(step.gradients, params, _batch(), jax.random.key(3), anira=anira)
  plain, plain_metrics = jax.jit(grads)()
  explicit, explicit_metrics = jax.jit(functools.partial(grads, ingredients=Ingredients()))()
  jax.tree.map(np.testing.assert_array_equal, plain, explicit)
  assert set(plain_metrics) == set(explicit_metrics)
  with_loss, _ = jax.jit(functools.partial(grads, ingredients=Ingredients(iteration_loss=1.0)))()
  assert not np.allclose(jax.tree.leaves(with_loss)[0], jax.tree.leaves(plain)[0])
