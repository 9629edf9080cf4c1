"""The study (experiments/study.py): figures and verdicts on constructed records with known
answers, every cell's config, and finished runs read, not retrained."""

import json

import numpy as np
import pytest

from anira_jax import experiment, stats
from anira_jax.analysis import study as study_lib
from experiments import study


def _records(rng, *, acc_in=0.9, acc_longer=0.5, depth_in=2.0, depth_longer=3.0, rho=True,
             sequences=60):
  """One LANO run's records: three splits at D = 6 and 12, accuracies and depths as given
  (ceiling 1 per token; the held-out split 0.05 above in distribution), depth equal to the
  parser expansion when `rho` (else noise)."""
  rows = {k: [] for k in ('split', 'max_depth', 'size', 'answer_tokens', 'correct_tokens',
                          'depth_sum', 'expected_depth_sum', 'ceiling_sum', 'sequence')}
  for split, (acc, depth) in enumerate([(acc_in, depth_in), (acc_in + 0.05, depth_in),
                                        (acc_longer, depth_longer)]):
    for max_depth in (6, 12):
      for s in range(sequences):
        rows['split'].append(split)
        rows['max_depth'].append(max_depth)
        rows['size'].append(split + 1)
        rows['answer_tokens'].append(10)
        rows['correct_tokens'].append(rng.binomial(10, acc))
        rows['depth_sum'].append(10 * depth)
        rows['expected_depth_sum'].append(10 * depth)
        rows['ceiling_sum'].append(10)
        rows['sequence'].append(split * sequences + s)
  tokens = 500
  feature = rng.integers(1, 7, tokens).astype(float)
  depth = feature if rho else rng.integers(1, 7, tokens).astype(float)
  token_rows = {'sequence': np.repeat(np.arange(100), 5), 'depth': depth,
                'expected_depth': depth + rng.normal(0, 0.1, tokens), 'complexity': feature}
  for name in ('parse_expansion', 'expansion', 'parse_rules_opened', 'parse_rules_closed',
               'rules_opened', 'rules_closed', 'bayes_entropy', 'nesting_depth'):
    token_rows[name] = feature
    for k in ('@-1', '@+1'):
      token_rows[name + k] = rng.integers(1, 7, tokens).astype(float)
    token_rows['complexity@-1'] = token_rows['complexity@+1'] = feature
  return {'sequences': {k: np.asarray(v, float) for k, v in rows.items()}, 'tokens': token_rows}


def test_figures_and_verdicts_of_constructed_runs():
  rng = np.random.default_rng(0)
  aligned = [_records(rng) for _ in range(3)]
  unaligned = [_records(rng, acc_longer=0.9, depth_longer=2.0, rho=False) for _ in range(3)]
  figures = {'lano': {'early': study.cell_figures('lano', 'early', aligned, n_boot=40),
                      'online': study.cell_figures('lano', 'online', unaligned, n_boot=40)}}
  e, o = figures['lano']['early'], figures['lano']['online']
  assert e['accuracy_kind'] == 'ceiling'
  assert e['accuracy/in_distribution/T6']['mean'] == pytest.approx(0.9, abs=0.02)
  assert e['drop/longer']['mean'] == pytest.approx(0.4, abs=0.03)
  assert e['depth_rise/longer']['mean'] == pytest.approx(1.0)
  assert e['rho/parse_expansion']['mean'] > 0.95 and abs(o['rho/parse_expansion']['mean']) < 0.2
  claims = study.verdicts(figures)['lano']
  assert claims['early'] == {'alignment': 'holds', 'accuracy falls on held_out': 'does not hold',
                             'accuracy falls on longer': 'holds', 'more depth on longer': 'holds'}
  assert claims['online']['alignment'] == 'does not hold'
  assert claims['online']['accuracy falls on longer'] == 'does not hold'
  text = study.table(figures, study.verdicts(figures), {})
  assert '| lano | early | ceiling | 0.9' in text and 'parse_expansion: 0.9' in text


def test_verdict_rule():
  assert stats.verdict([0.2, 0.4], 0.1) == 'holds'
  assert stats.verdict([-0.1, 0.05], 0.1) == 'does not hold'
  assert stats.verdict([0.05, 0.3], 0.1) == 'inconclusive'
  assert stats.verdict(None, 0.1) == 'inconclusive'


@pytest.mark.parametrize('cell', study.CELLS)
def test_every_cell_builds_its_study_preset(cell):
  for decider in study.DECIDERS:
    exp = experiment.build(study.config_for(cell, decider, seed=2))
    assert exp.config.seed == 2 and exp.config.decider.name == decider
    assert {'in_distribution', 'held_out', 'longer'} <= set(exp.splits)
  assert study.config_for('mano_no_marker', 'early', 0).task.options.length_marker is False


def test_finished_runs_are_read_not_retrained(tmp_path, monkeypatch):
  rng = np.random.default_rng(1)
  workdir = tmp_path / 'lano' / 'early' / 'seed_0'
  workdir.mkdir(parents=True)
  study_lib.save(_records(rng), workdir / 'records.npz')
  (workdir / 'records.json').write_text(json.dumps(
      study.config_for('lano', 'early', 0).train.steps))
  monkeypatch.setattr(study.loop, 'train_and_evaluate', lambda *a: pytest.fail('retrained'))
  records = study.run_cell(tmp_path, 'lano', 'early', 0)
  np.testing.assert_array_equal(records['tokens']['depth'], _records(
      np.random.default_rng(1))['tokens']['depth'])


def test_the_prior_is_chosen_by_accuracy_then_compute():
  points = [{'gamma': 0.01, 'prior_base': 1.0, 'accuracy': 0.96, 'mean_depth': 4.0},
            {'gamma': 0.01, 'prior_base': 1.5, 'accuracy': 0.955, 'mean_depth': 2.5},
            {'gamma': 0.03, 'prior_base': 2.0, 'accuracy': 0.90, 'mean_depth': 1.2}]
  assert study_lib.choose_prior(points, 0.01) is points[1]  # within 0.01 of the best, cheaper
  assert study_lib.choose_prior(points, 0.001) is points[0]
  assert study_lib.task_accuracy(
      {'token_accuracy': 0.7, 'share_of_ceiling': 0.95}) == 0.95
  assert study_lib.task_accuracy(
      {'token_accuracy': 0.7, 'generation': {'accuracy': 0.5}}) == 0.5
