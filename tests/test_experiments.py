"""Experiment configs: every variant validates, the paper variants say what the paper did, and one
train step runs on every task."""

import functools

import jax
import numpy as np
import pytest

import tasks
from anira_jax import config as config_lib
from anira_jax import evaluation
from anira_jax.training import loop
from anira_jax.training import state as state_lib
from anira_jax.training import step as step_lib
from experiments import brevo, clrs, lano, mano, parity

TASK_EXPERIMENTS = {'mano': mano, 'brevo': brevo, 'clrs': clrs, 'lano': lano}
VARIANTS = (None, 'quick', 'scale=cpu', 'scale=paper', 'scale=paper,quick')


CASES = [(parity, None), (parity, 'quick'), (parity, 'ponder'),
         *((module, variant) for module in TASK_EXPERIMENTS.values() for variant in VARIANTS)]


@pytest.mark.parametrize('module,variant', CASES,
                         ids=lambda x: x.__name__.split('.')[-1] if hasattr(x, '__name__')
                         else str(x))
def test_every_variant_validates(module, variant):
  config = module.get_config(variant)
  config_lib.validate(config)
  if variant and 'quick' in variant:
    assert config.train.steps <= 20


@pytest.mark.parametrize('decider', ['fixed', 'early', 'online', 'act', 'ponder', 'oracle'])
def test_every_decider_validates(decider):
  config = mano.get_config(f'decider={decider}')
  assert config.decider.name == decider
  config_lib.validate(config)


@pytest.mark.parametrize('module', TASK_EXPERIMENTS.values())
def test_unknown_scale_or_argument_raises(module):
  with pytest.raises(ValueError, match="scale='laptop'"):
    module.get_config('scale=laptop')
  with pytest.raises(ValueError, match='unknown config argument'):
    module.get_config('size=big')


@pytest.mark.parametrize('name,module', TASK_EXPERIMENTS.items())
def test_splits_are_train_sizes_held_out_and_beyond(name, module):
  for variant in ('scale=cpu', 'scale=paper'):
    config = module.get_config(variant)
    assert config.task.name == name
    splits = config_lib.eval_splits(config)
    train = config_lib.train_sizes(config)
    assert splits['in_distribution'] == train
    if 'held_out' in splits:
      lo, hi = min(train), max(train)
      assert all(lo < s < hi and s not in train for s in splits['held_out'])
      assert splits['held_out'] == config_lib.parse_sizes(config.task.holdout_sizes)
    if 'longer' in splits:
      assert min(splits['longer']) > max(train)
  # Every task but LANO at paper scale (trained on whole strings, the tallest) has all three.
  assert {'in_distribution', 'held_out', 'longer'} <= set(config_lib.eval_splits(
      module.get_config()))


def _paper(module):
  config = module.get_config('scale=paper')
  config_lib.validate(config)
  assert config.model.dtype == 'bfloat16'
  assert config.train.batch_size >= 256 and config.train.steps >= 50_000
  task, anira = loop.build(config)
  params = jax.eval_shape(anira.init, jax.random.key(0))
  # The paper's synthetic models have 5.1 M parameters.
  assert 4.5e6 < sum(x.size for x in jax.tree.leaves(params)) < 5.5e6
  return config


def test_paper_mano():
  config = _paper(mano)
  assert config.model.max_depth == 14
  assert config.task.options.modulus == 23
  assert config_lib.parse_sizes(config.task.train_sizes) == tuple(range(3, 17))


def test_paper_brevo():
  config = _paper(brevo)
  assert config.model.max_depth == 6
  assert config_lib.parse_sizes(config.task.train_sizes) == tuple(range(3, 31))


def test_paper_clrs():
  config = _paper(clrs)
  assert config.model.max_depth == 6
  assert 'algorithms' not in config.task.options  # all of them, merged into one task


def test_paper_lano():
  config = _paper(lano)
  assert config.model.max_depth == 6
  assert config_lib.train_sizes(config) == (6,)  # whole cfg3b strings, from the root


@pytest.mark.parametrize('module', [parity, *TASK_EXPERIMENTS.values()],
                         ids=lambda m: m.__name__.split('.')[-1])
def test_one_train_step_has_finite_loss(module):
  config = module.get_config('quick')
  config.model.update(width=16, num_heads=2, mlp_ratio=2)
  config.decider.head_hidden = 8
  config_lib.validate(config)
  task, anira = loop.build(config)
  tx = state_lib.make_optimizer(config.train)
  state = state_lib.create(anira, tx, jax.random.key(0))
  stream = tasks.Stream(task, config_lib.train_sizes(config), 4, seed=0)
  train_step = jax.jit(functools.partial(step_lib.train_step, anira=anira, tx=tx,
                                         key=jax.random.key(1)))
  state, metrics = train_step(state, evaluation.device_batch(stream.batch(0)))
  assert np.isfinite(float(metrics['loss']))
  assert int(state.step) == 1 and int(state.skipped_steps) == 0


@pytest.mark.parametrize('name', ['mano', 'brevo', 'clrs', 'lano'])
def test_held_out_sizes_never_appear_in_the_training_stream(name):
  config = {'mano': mano, 'brevo': brevo, 'clrs': clrs, 'lano': lano}[name].get_config()
  held_out = set(config_lib.parse_sizes(config.task.holdout_sizes))
  assert held_out, f'{name} has no held-out size'
  task = tasks.make(config.task.name, **config.task.options.to_dict())
  stream = tasks.Stream(task, config_lib.train_sizes(config), 64, seed=0)
  seen = set()
  for step in range(5):
    seen.update(stream.batch(step)['size'].tolist())
  assert not seen & held_out
  assert seen == set(config_lib.train_sizes(config))
