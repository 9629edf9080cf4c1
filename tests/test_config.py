"""Config checks (`experiment.build`): every bad value stops at start-up with one line naming
field and fix; sizes and evaluation splits derived from the task's sizes."""

import subprocess
import sys

import pytest

from anira_jax import config as config_lib
from anira_jax import deciders, experiment
from anira_jax.options import ConfigError
from anira_jax.training import loop
from experiments import common, parity


def _config(**overrides):
  config = parity.get_config()
  for path, value in overrides.items():
    *parents, leaf = path.split('.')
    node = config
    for p in parents:
      node = node[p]
    node[leaf] = value
  return config


@pytest.mark.parametrize('path,value,match', [
    ('task.name', 'sudoku', r"config.task.name='sudoku' is not allowed; choose one of \["),
    ('model.kind', 'mixture', r"config.model.kind='mixture'.*'recurrent', 'standard'"),
    ('model.position', 'alibi', r"config.model.position='alibi'.*'rope'"),
    ('model.max_depth', 0, r'config.model.max_depth=0 must be an integer >= 1'),
    ('model.width', 30, r'config.model.width=30 must be a multiple of 2 \* num_heads'),
    ('decider.name', 'sometimes', r"config.decider.name='sometimes' is not allowed"),
    ('decider.online.rule', 'vote', r"config.decider.online.rule='vote'"),
    ('decider.online.threshold', 1.5, r'config.decider.online.threshold=1.5 must lie in \(0, 1\)'),
    ('decider.early.gamma', -1.0, r'config.decider.early.gamma=-1.0 must be a finite number >= 0'),
    ('decider.early.prior_base', 0.0,
     r'config.decider.early.prior_base=0.0 must be a finite number > 0'),
    ('train.learning_rate', -0.1, r'config.train.learning_rate=-0.1 must be a finite number > 0'),
    ('train.steps', 0, r'config.train.steps=0 must be an integer >= 1'),
    ('train.warmup_steps', 5000, r'config.train.warmup_steps=5000 must be below'),
    ('train.grad_accumulation_steps', 0,
     r'config.train.grad_accumulation_steps=0 must be an integer >= 1'),
    ('train.grad_accumulation_steps', 5,
     r'config.train.batch_size=64 must be divisible by train.grad_accumulation_steps=5'),
    ('train.steps_per_dispatch', 0, r'config.train.steps_per_dispatch=0 must be an integer >= 1'),
    ('train.steps_per_dispatch', 3,
     r'config.train.log_every=50 must be a multiple of train.steps_per_dispatch=3'),
    ('train.curriculum_steps', -1, r'config.train.curriculum_steps=-1 must be an integer >= 0'),
    ('train.size_weights', '4', r"config.train.size_weights='4': expected SIZE:WEIGHT pairs"),
    ('train.size_weights', '40:2', r'weighs size 40, which training does not draw'),
    ('train.size_weights', '4:0', r'the weight of size 4 must be > 0'),
    ('train.size_weights', '4:2,4:3', r'weighs size 4 twice'),
    ('task.train_sizes', '8-1', r"config.task.train_sizes='8-1': range 8-1 is empty"),
    ('task.train_sizes', 'many', r"config.task.train_sizes='many': expected sizes like"),
    ('task.holdout_sizes', '1-16', r'removes every training size'),
    ('task.holdout_sizes', '20', r'config.task.holdout_sizes has \[20\] outside the training'),
    ('eval.splits', {'bad': '0-3'}, r'config.eval.splits.bad has sizes \[0\] outside'),
    ('eval.source', 'disk', r"config.eval.source='disk'"),
])
def test_invalid_value_names_field_and_allowed_values(path, value, match):
  with pytest.raises(ConfigError, match=match):
    experiment.build(_config(**{path: value}))


def test_size_weights_are_aligned_with_the_training_sizes():
  built = experiment.build(_config(**{'task.train_sizes': '1-4', 'task.holdout_sizes': '3',
                                      'train.size_weights': '4:4, 1:0.5'}))
  assert built.train_sizes == (1, 2, 4)
  assert built.train_size_weights == (0.5, 1.0, 4.0)
  assert loop.train_stream(built).size_weights == (0.5, 1.0, 4.0)
  assert experiment.build(_config()).train_size_weights is None


def test_a_decider_section_refuses_fields_it_does_not_have():
  config = _config()
  config.decider.online = {**config.decider.online, 'gumbel_temperature': 2.0}
  config.decider.name = 'online'
  with pytest.raises(ConfigError, match="config.decider.online has no field 'gumbel_temperature'"):
    experiment.build(config)


def test_standard_model_needs_fixed_decider():
  with pytest.raises(ConfigError, match='needs decider.name="fixed"'):
    experiment.build(_config(**{'model.kind': 'standard', 'decider.name': 'early'}))
  experiment.build(_config(**{'model.kind': 'standard', 'decider.name': 'fixed'}))


def test_learned_positions_must_cover_the_longest_sequence():
  with pytest.raises(ConfigError, match='max_len=10 is shorter than the longest'):
    experiment.build(_config(**{'model.position': 'learned', 'model.max_len': 10}))


def test_bad_task_options():
  with pytest.raises(ConfigError, match="options are invalid for task 'parity'"):
    experiment.build(_config(**{'task.options': {'layout': 'diagonal'}}))


@pytest.mark.parametrize('decider', sorted(deciders.DECIDERS))
def test_every_decider_builds_with_its_defaults(decider):
  exp = experiment.build(parity.get_config(f'decider={decider}'))
  assert exp.anira.decider.options == exp.anira.decider.resolve(
      deciders.DECIDERS[decider].Options(), exp.train_sizes)


def test_sizes_holdouts_and_derived_splits():
  assert config_lib.parse_sizes('1-3,7') == (1, 2, 3, 7)
  config = _config(**{'task.train_sizes': '1-6', 'task.holdout_sizes': '3,5',
                      'task.longer_sizes': '7-8'})
  assert experiment.train_sizes(config) == (1, 2, 4, 6)
  assert experiment.eval_splits(config) == {'in_distribution': (1, 2, 4, 6), 'held_out': (3, 5),
                                            'longer': (7, 8)}
  config.eval.splits = {'mine': '2,9'}  # a config's own splits replace the derived ones
  assert experiment.eval_splits(config) == {'mine': (2, 9)}


def test_parse_arg_types_and_unknown_keys():
  args = common.parse_arg('decider=online,quick', decider='early', quick=False, n=1)
  assert args.decider == 'online' and args.quick is True and args.n == 1
  with pytest.raises(ValueError, match="unknown config argument 'colour'"):
    common.parse_arg('colour=red', decider='early')
  with pytest.raises(ValueError, match='needs a value'):
    common.parse_arg('decider', decider='early')


def test_launcher_prints_one_clear_line_not_a_traceback(tmp_path):
  result = subprocess.run(
      [sys.executable, 'launch.py', '--config=experiments/parity.py',
       '--config.model.max_depth=0', f'--workdir={tmp_path}'],
      capture_output=True, text=True, timeout=120)
  assert result.returncode != 0
  assert 'Traceback' not in result.stderr
  assert result.stderr.strip().splitlines()[-1] == (
      'error: config.model.max_depth=0 must be an integer >= 1')
