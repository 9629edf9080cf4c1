"""The task study's table, overrides and reuse of finished runs (experiments/study.py)."""

import json

import pytest

from experiments import brevo, study


def _results(step):
  split = lambda acc, depth: {'token_accuracy': acc, 'mean_depth': depth}
  return {'step': step, 'splits': {'in_distribution': split(0.9, 2.0),
                                   'held_out': split(0.5, 2.5), 'longer': split(0.25, 3.0)}}


def _analysis(step, timing=True):
  corr = lambda rho: {'expected_depth': {'spearman': rho}}
  analysis = {
      'step': step, 'max_depth': 6,
      'generalization': {'by_max_depth': {'6': {'per_size': {
          '3': {'mean_depth': 1.5}, '4': {'mean_depth': 2.25}}}}},
      'alignment': {'all': {'correlations': {'complexity': corr(0.5), 'dfs_depth': corr(0.4)}}}}
  if timing:
    analysis['timing'] = {'r2_control': 0.28, 'samples': 40, 'groups': {
        'static_structure': {'added': 0.3}, 'execution_state': {'added': 0.1}}}
  return analysis


def test_row_and_table_carry_every_number():
  row = study.row('brevo', 'early', _results(10), _analysis(10))
  assert row['accuracy'] == {'in_distribution': 0.9, 'held_out': 0.5, 'longer': 0.25}
  assert row['depth_per_size'] == {'3': 1.5, '4': 2.25}
  assert (row['spearman_complexity'], row['spearman_feature']) == (0.5, 0.4)
  text = study.table([row], 'γ = 0.01')
  assert '| brevo | early | 0.900 | 0.500 | 0.250 | 2.00 | 3.00 | 0.50 | dfs_depth: 0.40 |' in text
  assert '3: 1.50 · 4: 2.25' in text
  assert '| early | 40 | 0.280 | 0.300 | 0.100 |' in text
  no_timing = study.table([study.row('mano', 'online', _results(10), _analysis(10, False))], '')
  assert 'tree_height: –' in no_timing and 'Decision timing' not in no_timing


def test_overrides_are_typed_and_checked():
  config = brevo.get_config()
  study.apply_overrides(config, ['decider.early.gamma=0.5', 'train.steps=7',
                                 'model.remat=false'])
  assert config.decider.early.gamma == 0.5 and config.train.steps == 7
  assert config.model.remat is False
  study.apply_overrides(config, ['model.remat=True'])
  assert config.model.remat is True
  with pytest.raises(ValueError, match="model.remat='yes', expected true or false"):
    study.apply_overrides(config, ['model.remat=yes'])
  with pytest.raises(ValueError, match="no config field 'decider.early.gama'"):
    study.apply_overrides(config, ['decider.early.gama=1'])
  with pytest.raises(ValueError, match='expected FIELD=VALUE'):
    study.apply_overrides(config, ['decider.early.gamma'])


def test_finished_runs_are_read_not_recomputed(tmp_path, monkeypatch):
  config = brevo.get_config()
  (tmp_path / 'results.json').write_text(json.dumps(_results(config.train.steps)))
  (tmp_path / 'analysis.json').write_text(json.dumps(_analysis(config.train.steps)))
  monkeypatch.setattr(study.loop, 'train_and_evaluate', lambda *a: pytest.fail('retrained'))
  results, analysis = study.finished_run(config, tmp_path)
  assert results['step'] == analysis['step'] == config.train.steps
  (tmp_path / 'analysis.json').write_text(json.dumps(_analysis(config.train.steps - 1)))
  with pytest.raises(pytest.fail.Exception, match='retrained'):
    study.finished_run(config, tmp_path)
