"""Experiment configs: every variant builds, the paper variants say what the paper did, and one
train step runs on every task. Every registered task has its experiment, experiments/<task>.py."""

import functools
import importlib

import jax
import numpy as np
import pytest

import tasks
from anira_jax import deciders, evaluation, experiment
from anira_jax import train_state as state_lib
from anira_jax.deciders import base
from anira_jax.training import step as step_lib
from experiments import brevo, clrs, lano, mano, parity

# Every task but parity (the main job, with its own variants) has the cpu and paper scales;
# the text task (LLM scale) has experiments/gsm_symbolic.py (tests/test_gsm_symbolic.py).
TASK_EXPERIMENTS = {name: importlib.import_module(f'experiments.{name}')
                    for name in sorted(tasks.TASKS) if name not in ('parity', 'text')}
VARIANTS = (None, 'quick', 'scale=cpu', 'scale=paper', 'scale=paper_large,quick')


CASES = [(parity, None), (parity, 'quick'), (parity, 'ponder'), (parity, 'ponder,tokens'),
         (parity, 'ponder,quick'),
         *((module, variant) for module in TASK_EXPERIMENTS.values() for variant in VARIANTS)]


@pytest.mark.parametrize('module,variant', CASES,
                         ids=lambda x: x.__name__.split('.')[-1] if hasattr(x, '__name__')
                         else str(x))
def test_every_variant_builds(module, variant):
  config = module.get_config(variant)
  experiment.build(config)
  if variant and 'quick' in variant:
    assert config.train.steps <= 20 and config.train.curriculum_steps == 0


def test_parity_tokens_argument_needs_ponder():
  assert parity.get_config('ponder,tokens').task.options.layout == 'ponder'
  assert parity.get_config('ponder').task.options.layout == 'vector'
  with pytest.raises(ValueError, match="use it with 'ponder'"):
    parity.get_config('tokens')


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


PAPER_SIZES = {'paper': 5.1e6, 'paper_large': 13.7e6}  # the paper's two synthetic models


def _paper_params(module, scale, decider='early'):
  """(parameters besides the embedding and LM head, decision-head parameters) of a preset."""
  config = module.get_config(f'scale={scale},decider={decider}')
  params = jax.eval_shape(experiment.build(config).anira.init, jax.random.key(0))
  size = lambda tree: sum(x.size for x in jax.tree.leaves(tree))  # noqa: E731
  model = params['model']
  return (size(params) - size(model['embed']) - size(model['readout']['lm_head']),
          size(params['decider']))


@pytest.mark.parametrize('scale', PAPER_SIZES)
@pytest.mark.parametrize('name,module', TASK_EXPERIMENTS.items())
def test_paper_presets_are_the_papers_models(name, module, scale):
  """Within 5% of the paper's parameter counts (the embedding and LM head grow with a task's
  vocabulary, CLRS-Text's ~4,000 number tokens, and are not counted), the decision head ~8% of
  them, one shared core layer (a halted token's keys then hold at every level, as the paper's
  decoding reads them), 250k steps in bfloat16."""
  config = module.get_config(f'scale={scale}')
  assert config.model.core_layers == 1 and config.model.dtype == 'bfloat16'
  assert config.train.steps == 250_000
  for decider in ('early', 'online'):
    total, head = _paper_params(module, scale, decider)
    assert abs(total / PAPER_SIZES[scale] - 1) < 0.05, (decider, total)
    assert 0.07 < head / total < 0.09, (decider, head / total)


def test_paper_depths_and_sizes():
  assert mano.get_config('scale=paper').model.max_depth == 14
  assert mano.get_config('scale=paper').task.options.modulus == 23
  assert experiment.train_sizes(mano.get_config('scale=paper')) == tuple(
      s for s in range(3, 17) if s != 10)
  assert experiment.train_sizes(brevo.get_config('scale=paper')) == tuple(
      s for s in range(3, 31) if s != 20)
  assert experiment.train_sizes(lano.get_config('scale=paper')) == (6,)  # whole cfg3b strings
  assert 'algorithms' not in clrs.get_config('scale=paper').task.options  # the default 23
  for module in (brevo, clrs, lano):
    assert module.get_config('scale=paper').model.max_depth == 6


@pytest.mark.slow
@pytest.mark.parametrize('name,module,scale', [
    *((name, module, 'paper') for name, module in TASK_EXPERIMENTS.items()),
    ('mano', TASK_EXPERIMENTS['mano'], 'paper_large')])
def test_paper_presets_train_on_cpu(name, module, scale):
  """Two train steps of each task's paper preset (its model and sequences) at a batch of one,
  in float32: XLA:CPU emulates the bfloat16 matmuls meant for accelerators, at many times the
  cost. The large model differs only in its sizes (built for every task by
  `test_paper_presets_are_the_papers_models`), so one task trains it."""
  config = module.get_config(f'scale={scale}')
  config.model.dtype = 'float32'
  exp = experiment.build(config)
  tx = state_lib.make_optimizer(exp.config.train)
  state = state_lib.create(exp.anira, tx, jax.random.key(0))
  stream = tasks.Stream(exp.task, exp.train_sizes, 1, seed=0, annotate=False)
  train_step = jax.jit(functools.partial(step_lib.train_step, anira=exp.anira, tx=tx,
                                         key=jax.random.key(1)))
  for i in range(2):
    state, metrics = train_step(state, evaluation.device_batch(stream.batch(i)))
  assert np.isfinite(float(metrics['loss'])) and int(state.skipped_steps) == 0


@pytest.mark.parametrize('module', TASK_EXPERIMENTS.values(),
                         ids=lambda m: m.__name__.split('.')[-1])
def test_one_train_step_has_finite_loss(module):
  """Each task's CPU preset trains (parity's, the main job, is trained throughout the suite)."""
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
