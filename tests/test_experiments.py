"""Experiment configs: every variant builds, the paper variants say what the paper did, and one
train step runs on every task. Every registered task has its experiment, experiments/<task>.py."""

import functools
import importlib

import jax
import numpy as np
import pytest

import tasks
from anira_jax import config as config_lib
from anira_jax import deciders, evaluation, experiment
from anira_jax import train_state as state_lib
from anira_jax.deciders import base
from anira_jax.training import step as step_lib
from experiments import brevo, clrs, lano, mano, parity

# Every task but parity (the main job, with its own variants) has the cpu and paper scales;
# the text task (LLM scale) has experiments/gsm_symbolic.py (tests/test_gsm_symbolic.py).
TASK_EXPERIMENTS = {name: importlib.import_module(f'experiments.{name}')
                    for name in sorted(tasks.TASKS) if name not in ('parity', 'text')}
VARIANTS = (None, 'quick', 'scale=cpu', 'scale=paper', 'scale=paper,quick')


CASES = [(parity, None), (parity, 'quick'), (parity, 'ponder'),
         *((module, variant) for module in TASK_EXPERIMENTS.values() for variant in VARIANTS)]


@pytest.mark.parametrize('module,variant', CASES,
                         ids=lambda x: x.__name__.split('.')[-1] if hasattr(x, '__name__')
                         else str(x))
def test_every_variant_builds(module, variant):
  config = module.get_config(variant)
  experiment.build(config)
  if variant and 'quick' in variant:
    assert config.train.steps <= 20


@pytest.mark.parametrize('decider', sorted(deciders.DECIDERS))
def test_every_decider_builds(decider):
  config = mano.get_config(f'decider={decider}')
  assert config.decider.name == decider
  experiment.build(config)


@pytest.mark.parametrize('module', TASK_EXPERIMENTS.values())
def test_unknown_scale_or_argument_raises(module):
  with pytest.raises(ValueError, match="scale='laptop'"):
    module.get_config('scale=laptop')
  with pytest.raises(ValueError, match='unknown config argument'):
    module.get_config('size=big')


@pytest.mark.parametrize('name,module', TASK_EXPERIMENTS.items())
def test_cpu_scale_evaluates_held_out_and_longer_sizes(name, module):
  exp = experiment.build(module.get_config())
  assert exp.config.task.name == name
  assert set(exp.splits) == {'in_distribution', 'held_out', 'longer'}


def _paper(module):
  config = module.get_config('scale=paper')
  anira = experiment.build(config).anira
  assert config.model.dtype == 'bfloat16'
  assert config.train.batch_size >= 256 and config.train.steps >= 50_000
  params = jax.eval_shape(anira.init, jax.random.key(0))
  # The paper's synthetic models have 5.1 M parameters besides the embedding and LM head, which
  # grow with the task's vocabulary (CLRS-Text's ~4,000 number tokens).
  size = lambda tree: sum(x.size for x in jax.tree.leaves(tree))  # noqa: E731
  model = params['model']
  assert 4.5e6 < size(params) - size(model['embed']) - size(model['readout']['lm_head']) < 5.5e6
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
  assert experiment.train_sizes(config) == (6,)  # whole cfg3b strings, from the root


@pytest.mark.parametrize('module', [parity, *TASK_EXPERIMENTS.values()],
                         ids=lambda m: m.__name__.split('.')[-1])
def test_one_train_step_has_finite_loss(module):
  config = module.get_config('quick')
  config.model.update(width=16, num_heads=2, mlp_ratio=2)
  if issubclass(deciders.DECIDERS[config.decider.name].Options, base.HeadOptions):
    config.decider[config.decider.name].head_hidden = 8
  exp = experiment.build(config)
  tx = state_lib.make_optimizer(config.train)
  state = state_lib.create(exp.anira, tx, jax.random.key(0))
  stream = tasks.Stream(exp.task, exp.train_sizes, 4, seed=0, annotate=False)
  train_step = jax.jit(functools.partial(step_lib.train_step, anira=exp.anira, tx=tx,
                                         key=jax.random.key(1)))
  state, metrics = train_step(state, evaluation.device_batch(stream.batch(0)))
  assert np.isfinite(float(metrics['loss']))
  assert int(state.step) == 1 and int(state.skipped_steps) == 0


@pytest.mark.parametrize('name,module', TASK_EXPERIMENTS.items())
def test_held_out_sizes_never_appear_in_the_training_stream(name, module):
  exp = experiment.build(module.get_config())
  held_out = set(exp.splits['held_out'])
  stream = tasks.Stream(exp.task, exp.train_sizes, 64, seed=0, annotate=False)
  seen = set()
  for step in range(5):
    seen.update(stream.batch(step)['size'].tolist())
  assert not seen & held_out
  assert seen == set(exp.train_sizes)
