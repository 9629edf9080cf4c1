"""The extrapolation grid: every point builds with its ingredients set as it says, and one tiny
point runs end to end (train, evaluate with its own decider and the zero-shot exits, table,
figure) and is read back rather than rerun."""

import pytest

from anira_jax import experiment
from experiments import extrapolation

POINTS = [(task, label) for task in extrapolation.GRID for label in extrapolation.GRID[task]]


@pytest.mark.parametrize('task,label', POINTS)
def test_every_grid_point_builds_with_what_its_label_says(task, label):
  config = extrapolation.get_config(extrapolation.run_variant(task, label, seed=2))
  exp = experiment.build(config)
  assert config.seed == 2 and config.task.name == task
  assert config.decider.name == label.split(' ')[0]
  assert (exp.ingredients.iteration_loss > 0) == ('iteration loss' in label)
  assert (exp.ingredients.random_depth != 'none') == ('random depth' in label)
  assert (config.model.position == 'none') == ('no positions' in label)
  assert (config.model.attention_window > 0) == ('window' in label)
  assert set(exp.splits) == set(extrapolation.SPLIT_NAMES)
  # parity behind <s>: with relative positions a leading run of ones is otherwise one state
  assert (exp.task.vocab[-1] == '<s>') == (task == 'parity')


def test_a_tiny_grid_point_end_to_end(tmp_path, monkeypatch):
  monkeypatch.setattr(extrapolation, 'GRID', {'parity': {'fixed': 'decider=fixed,quick'}})
  monkeypatch.setattr(extrapolation, 'SIZES', {'parity': (
      '1-3', {'in_distribution': '1-3', 'longer': '4-5', 'longest': '6'})})
  monkeypatch.setattr(extrapolation, 'RAISED_DEPTH', {'parity': 4})
  monkeypatch.setattr(extrapolation, 'EXITS', {'confidence': (0.6,), 'fixed_point': (0.1,)})
  get_config = extrapolation.get_config

  def tiny(arg):
    config = get_config(arg + ',depth=2,width=16')
    config.model.update(num_heads=2, mlp_ratio=2)
    config.train.update(steps=2, checkpoint_every=2, warmup_steps=1)
    return config

  monkeypatch.setattr(extrapolation, 'get_config', tiny)
  record = extrapolation.one_run(tmp_path, 'parity', 'fixed', 0)
  assert set(record['evaluations']) == {'own@T=2', 'own@T=4', 'confidence=0.6@T=4',
                                        'fixed_point=0.1@T=4'}
  own = record['evaluations']['own@T=4']['splits']
  assert own['longer']['mean_depth'] == 4  # fixed depth at the raised T
  assert record['evaluations']['confidence=0.6@T=4']['decider'] == 'confidence'
  again = extrapolation.one_run(tmp_path, 'parity', 'fixed', 0)  # read back, not rerun
  assert again == record
  assert extrapolation.aggregate([record, again])[0]['seeds'] == 2  # fresh and read-back mix
  rows = extrapolation.aggregate([record])
  assert len(rows) == 4 and rows[0]['splits']['longer']['token_accuracy']['seeds']
  text = extrapolation.table(extrapolation.headline(rows))
  assert text.count('| parity | fixed |') == 4
  assert extrapolation.figure(rows, tmp_path / 'f.png', ['parity']).stat().st_size > 0
  assert extrapolation.target(rows) == []  # fixed depth is no per-token decision
