"""The study (experiments/study.py): figures and verdicts on constructed records with known
answers, every cell's config, finished runs read, not retrained, and the prior grid's runs
copied."""

import itertools
import json

import numpy as np
import pytest

from anira_jax import experiment, stats
from anira_jax import workdir as workdir_lib
from anira_jax.analysis import study as study_lib
from experiments import common, study


def _records(rng, *, acc_in=0.96, acc_longer=0.5, depth_in=2.0, depth_longer=3.0, rho=True,
             forced_gain=0.0, sequences=60):
  """One LANO run's records: three splits at D = 6 and 12, accuracies and depths as given
  (ceiling 1 per token; the held-out split 0.03 above in distribution), depth equal to the
  parser expansion when `rho` (else noise); with every token forced to 12 iterations, the longer
  split answers `forced_gain` better (forced to 6, as the decider does)."""
  rows = {k: [] for k in ('split', 'max_depth', 'forced', 'size', 'answer_tokens',
                          'correct_tokens', 'depth_sum', 'expected_depth_sum', 'ceiling_sum',
                          'sequence')}
  for split, (acc, depth) in enumerate([(acc_in, depth_in), (acc_in + 0.03, depth_in),
                                        (acc_longer, depth_longer)]):
    for forced in (False, True):
      for max_depth in (6, 12):
        gain = forced_gain if forced and max_depth == 12 and split == 2 else 0.0
        for s in range(sequences):
          rows['split'].append(split)
          rows['max_depth'].append(max_depth)
          rows['forced'].append(forced)
          rows['size'].append(split + 1)
          rows['answer_tokens'].append(10)
          rows['correct_tokens'].append(rng.binomial(10, acc + gain))
          rows['depth_sum'].append(10 * (max_depth if forced else depth))
          rows['expected_depth_sum'].append(10 * (max_depth if forced else depth))
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
  return {'sequences': {k: np.asarray(v, float) for k, v in rows.items()}, 'tokens': token_rows,
          'meta': {'version': np.asarray(study_lib.RECORDS_VERSION)}}


def test_figures_and_verdicts_of_constructed_runs():
  rng = np.random.default_rng(0)
  aligned = [_records(rng, forced_gain=0.4) for _ in range(3)]
  unaligned = [_records(rng, acc_longer=0.96, depth_longer=2.0, rho=False) for _ in range(3)]
  figures = {'lano': {'early': study.cell_figures('lano', 'early', aligned, n_boot=40),
                      'online': study.cell_figures('lano', 'online', unaligned, n_boot=40)}}
  e, o = figures['lano']['early'], figures['lano']['online']
  assert e['accuracy_kind'] == 'ceiling'
  assert e['seeds'] == 3
  assert e['accuracy/in_distribution/T6']['mean'] == pytest.approx(0.96, abs=0.02)
  assert e['drop/longer']['mean'] == pytest.approx(0.46, abs=0.03)
  assert e['depth_rise/longer']['mean'] == pytest.approx(1.0)
  assert e['rho/parse_expansion']['mean'] > 0.95 and abs(o['rho/parse_expansion']['mean']) < 0.2
  assert e['forced_gain/longer']['mean'] == pytest.approx(0.4, abs=0.03)
  assert e['accuracy/longer/T6/forced']['mean'] == pytest.approx(0.5, abs=0.03)
  claims = study.verdicts(figures)['lano']
  assert claims['early'] == {'alignment': 'holds', 'accuracy falls on held_out': 'does not hold',
                             'accuracy falls on longer': 'holds', 'more depth on longer': 'holds',
                             'every token at 2D answers held_out better': 'does not hold',
                             'every token at 2D answers longer better': 'holds'}
  assert claims['online']['alignment'] == 'does not hold'
  assert claims['online']['accuracy falls on longer'] == 'does not hold'
  assert claims['online']['every token at 2D answers longer better'] == 'does not hold'
  text = study.table(figures, study.verdicts(figures), {}, {})
  assert '| lano | early | 3 | ceiling | 0.96' in text and 'parse_expansion: 0.9' in text
  assert '(paper 0.666) |' in text
  # accuracy with every token forced to D and 2D beside the decider's
  row = next(r for r in text.splitlines() if r.startswith('| lano | early | longer |'))
  decided, forced_d, forced_2d, gain = (float(c.split()[0]) for c in row.split('|')[4:8])
  assert forced_d == pytest.approx(decided, abs=0.05) and gain == pytest.approx(0.4, abs=0.03)
  assert forced_2d == pytest.approx(0.9, abs=0.03)
  # every feature at the predicted position and both neighbours: aligned only at the first
  row = next(r for r in text.splitlines() if r.startswith('| lano | early | rules_closed |'))
  here, before, after = (float(c.split()[0]) for c in row.split('|')[4:7])
  assert here > 0.95 and abs(before) < 0.15 and abs(after) < 0.15


def test_verdicts_are_withheld_where_the_task_is_not_learned():
  rng = np.random.default_rng(2)
  runs = [_records(rng, acc_in=0.6), _records(rng, acc_in=0.97)]
  figures = {'lano': {'early': study.cell_figures('lano', 'early', runs, n_boot=40)}}
  assert not study.learned(figures['lano']['early'])
  claims = study.verdicts(figures)['lano']['early']
  assert set(claims.values()) == {study.NOT_LEARNED}  # even the alignment, which is there
  # the table names the seed below the bar (italic) beside the one above it
  row = next(r for r in study.table(figures, study.verdicts(figures), {}, {})
             .splitlines() if r.startswith('| lano | early |'))
  low, high = row.split('|')[6].split('·')
  assert low.strip()[0] == low.strip()[-1] == '*'
  assert float(low.strip(' *')) == pytest.approx(0.6, abs=0.03)
  assert float(high) == pytest.approx(0.97, abs=0.015)
  # one learned seed: its interval covers sequences only, so no claim is judged either
  one = {'lano': {'early': study.cell_figures('lano', 'early', runs[1:], n_boot=40)}}
  assert study.learned(one['lano']['early'])
  assert set(study.verdicts(one)['lano']['early'].values()) == {study.ONE_SEED}


def _cue_figures(rho_early, rho_online, acc_online=0.99, seeds_online=3, seed=3):
  """Just what `cue_verdicts` reads of a MANO (cell, decider): accuracy, seeds, ρ draws."""
  rng = np.random.default_rng(seed)
  def one(rho, acc, seeds):
    draws = list(rho + rng.normal(0, 0.02, 200))
    return {'max_depth': 6, 'accuracy/in_distribution/T6': {'mean': acc}, 'seeds': seeds,
            'rho/tree_height': {'mean': rho, 'draws': draws}}
  return {'early': one(rho_early, 0.99, 3), 'online': one(rho_online, acc_online, seeds_online)}


def test_the_static_cue_is_judged_by_the_gap_between_deciders():
  figures = {'mano': _cue_figures(0.6, 0.2), 'mano_no_marker': _cue_figures(0.3, 0.3, seed=4)}
  cue = study.cue_verdicts(figures)
  assert cue['mano']['mean'] == pytest.approx(0.4) and cue['mano']['verdict'] == 'holds'
  assert cue['mano_no_marker']['verdict'] == 'does not hold'
  # the marker's effect on the gap: 0.4 with it against 0 without it
  change = cue['marker: with − without']
  assert change['mean'] == pytest.approx(0.4) and change['verdict'] == 'holds'
  assert change['ci'][0] < 0.4 < change['ci'][1]
  same = study.cue_verdicts({'mano': _cue_figures(0.6, 0.2),
                             'mano_no_marker': _cue_figures(0.5, 0.1, seed=4)})
  assert same['marker: with − without']['verdict'] == 'does not hold'
  half = study.cue_verdicts({'mano': _cue_figures(0.6, 0.2, acc_online=0.5),
                             'mano_no_marker': _cue_figures(0.3, 0.3)})
  assert half['marker: with − without']['verdict'] == study.NOT_LEARNED
  unlearned = study.cue_verdicts({'mano': _cue_figures(0.6, 0.2, acc_online=0.5)})
  assert unlearned['mano']['verdict'] == study.NOT_LEARNED
  one_seed = study.cue_verdicts({'mano': _cue_figures(0.6, 0.2, seeds_online=1)})
  assert one_seed['mano']['verdict'] == study.ONE_SEED
  assert study.cue_verdicts({'mano': {'early': figures['mano']['early']}}) == {}


def _brevo_records(rng, follows: str, sequences=40, tokens_per=6):
  """One BREVO run whose every answer is right and whose E[d] is graph size plus `follows` (a
  static-structure or an execution-state feature) plus noise: decision timing with a known
  answer."""
  rows = {k: [] for k in ('split', 'max_depth', 'forced', 'size', 'answer_tokens',
                          'correct_tokens', 'depth_sum', 'expected_depth_sum', 'right',
                          'sequence')}
  for split in range(3):
    for max_depth, forced in itertools.product((6, 12), (0, 1)):
      depth = max_depth if forced else 2
      for i in range(sequences):
        for key, value in (('split', split), ('max_depth', max_depth), ('forced', forced),
                           ('size', split + 3), ('answer_tokens', tokens_per),
                           ('correct_tokens', tokens_per), ('depth_sum', depth * tokens_per),
                           ('expected_depth_sum', depth * tokens_per), ('right', 1),
                           ('sequence', split * sequences + i)):
          rows[key].append(value)
  n = sequences * tokens_per
  timing = {'sequence': np.repeat(np.arange(sequences), tokens_per).astype(float),
            'graph_size': np.repeat(rng.integers(3, 9, sequences), tokens_per).astype(float)}
  for name in ('out_degree', 'in_degree', 'num_ancestors', 'dfs_depth', 'frontier_size',
               'newly_enabled'):
    timing[name] = rng.integers(0, 6, n).astype(float)
  timing['expected_depth'] = (0.3 * timing['graph_size'] + timing[follows]
                              + rng.normal(0, 0.3, n))
  tokens = {'sequence': timing['sequence'], 'depth': timing['expected_depth'],
            'expected_depth': timing['expected_depth'], 'complexity': timing['graph_size']}
  for name in ('complexity', 'dfs_depth', 'graph_size', 'num_ancestors', 'frontier_size'):
    tokens[name] = timing.get(name, timing['graph_size'])
    for k in ('@-1', '@+1'):
      tokens[name + k] = tokens[name]
  return {'sequences': {k: np.asarray(v, float) for k, v in rows.items()}, 'tokens': tokens,
          'timing': timing}


def test_decision_timing_tells_static_from_execution_state():
  rng = np.random.default_rng(5)
  figures = {'brevo': {
      'early': study.cell_figures('brevo', 'early',
                                  [_brevo_records(rng, 'num_ancestors') for _ in range(2)], 50),
      'online': study.cell_figures('brevo', 'online',
                                   [_brevo_records(rng, 'dfs_depth') for _ in range(2)], 50)}}
  e, o = figures['brevo']['early'], figures['brevo']['online']
  assert o['timing/groups/execution_state/added']['mean'] > 0.5
  assert e['accuracy_kind'] == 'right' and study.learned(e) and e['timing/samples'] == 80
  assert e['timing/groups/static_structure/added']['mean'] > 0.5
  assert e['timing/groups/execution_state/added']['mean'] < 0.05
  timing = study.timing_verdicts(figures)
  assert timing['execution state: O − E']['verdict'] == 'holds'
  assert timing['static structure: E − O']['verdict'] == 'holds'
  text = study.table(figures, study.verdicts(figures), timing, {})
  assert '| execution state: O − E |' in text and '| early | 80 | ' in text and '| 0.28 |' in text


def test_verdict_rule():
  assert stats.verdict([0.2, 0.4], 0.1) == 'holds'
  assert stats.verdict([-0.1, 0.05], 0.1) == 'does not hold'
  assert stats.verdict([0.05, 0.3], 0.1) == 'inconclusive'
  assert stats.verdict(None, 0.1) == 'inconclusive'
  # a change claimed in either direction
  assert stats.change_verdict([0.2, 0.4], 0.1) == stats.change_verdict([-0.4, -0.2], 0.1) == 'holds'
  assert stats.change_verdict([-0.05, 0.08], 0.1) == 'does not hold'
  assert stats.change_verdict([-0.2, 0.05], 0.1) == 'inconclusive'
  assert stats.change_verdict(None, 0.1) == 'inconclusive'


@pytest.mark.parametrize('cell', study.CELLS)
def test_every_cell_builds_its_study_preset(cell):
  for decider in study.DECIDERS:
    exp = experiment.build(study.config_for(cell, decider, seed=2))
    assert exp.config.seed == 2 and exp.config.decider.name == decider
    assert {'in_distribution', 'held_out', 'longer'} <= set(exp.splits)
  assert study.config_for('mano_no_marker', 'early', 0).task.options.length_marker is False


def _finished_run(out, decider: str, seed: int, rng, **train) -> None:
  """A LANO run in `out` as `study.run_cell` leaves one: its records and their config stamp
  (of the study preset, or of the preset with `train` overrides: a run of an older preset)."""
  workdir = out / 'lano' / decider / f'seed_{seed}'
  workdir.mkdir(parents=True)
  study_lib.save(_records(rng), workdir / 'records.npz')
  config = study.config_for('lano', decider, seed)
  config.train.update(train)
  (workdir / 'records.json').write_text(config.to_json_best_effort())


class _Trained(Exception):
  """Raised by a stand-in for training: the workdir it was given, as the run had it then."""


def _raise_trained(config, workdir):
  raise _Trained(workdir)


def test_finished_runs_are_read_not_retrained(tmp_path, monkeypatch):
  _finished_run(tmp_path, 'early', 0, np.random.default_rng(1))
  monkeypatch.setattr(study.loop, 'train_and_evaluate', lambda *a: pytest.fail('retrained'))
  records = study.run_cell(tmp_path, 'lano', 'early', 0)
  np.testing.assert_array_equal(records['tokens']['depth'], _records(
      np.random.default_rng(1))['tokens']['depth'])


def test_records_stamped_before_a_config_field_existed_are_read(tmp_path):
  _finished_run(tmp_path, 'early', 0, np.random.default_rng(1), log_every=7)
  stamp = tmp_path / 'lano' / 'early' / 'seed_0' / 'records.json'
  stored = json.loads(stamp.read_text())
  del stored['train']['curriculum_steps']  # a field added after the run, at its default now
  stamp.write_text(json.dumps(stored))
  assert study.run_cell(tmp_path, 'lano', 'early', 0, train=False) is not None


def test_records_of_an_older_analysis_are_read_again_from_the_run(tmp_path, monkeypatch):
  _finished_run(tmp_path, 'early', 0, np.random.default_rng(1))
  path = tmp_path / 'lano' / 'early' / 'seed_0' / 'records.npz'
  records = study_lib.load(path)
  del records['meta']  # written before `run_records` had a version
  study_lib.save(records, path)
  assert study.run_cell(tmp_path, 'lano', 'early', 0, train=False) is None
  monkeypatch.setattr(study.loop, 'train_and_evaluate', _raise_trained)
  with pytest.raises(_Trained):  # resumed at its last checkpoint, then read again
    study.run_cell(tmp_path, 'lano', 'early', 0)


@pytest.mark.parametrize('change', [{'learning_rate': 0.5}, {'steps': 7}])
def test_records_of_another_config_are_not_read(tmp_path, monkeypatch, change):
  _finished_run(tmp_path, 'early', 0, np.random.default_rng(1), **change)
  assert study.run_cell(tmp_path, 'lano', 'early', 0, train=False) is None
  monkeypatch.setattr(study.loop, 'train_and_evaluate', _raise_trained)
  with pytest.raises(_Trained):  # a stale run is trained again
    study.run_cell(tmp_path, 'lano', 'early', 0)


def _prior_grid_run(prior_runs, *, spoil: str = '') -> None:
  """A run of `experiments.select_prior`'s grid as it leaves one (ANIRA-E, seed 0, LANO's study
  preset at its prior), or one it must not lend: of another config, unfinished, or in use."""
  config = study.config_for('lano', 'early', 0)
  prior = config.decider.early
  source = common.prior_run_dir(prior_runs, 'lano', 'study', gamma=prior.gamma,
                                prior_base=prior.prior_base)
  (source / 'checkpoints').mkdir(parents=True)
  (source / 'checkpoints' / 'last').write_text('trained')
  if spoil == 'config':
    config.train.learning_rate *= 2
  (source / 'config.json').write_text(config.to_json_best_effort())
  step = config.train.steps - (spoil == 'unfinished')
  (source / 'results.json').write_text(json.dumps({'step': step}))
  if spoil == 'in use':
    (source / workdir_lib.LOCK_FILE).write_text('{}')


@pytest.mark.parametrize('decider, spoil, copied', [
    ('early', '', True), ('online', '', False), ('early', 'config', False),
    ('early', 'unfinished', False), ('early', 'in use', False)])
def test_a_run_the_prior_grid_trained_is_copied_not_trained_twice(tmp_path, monkeypatch, decider,
                                                                  spoil, copied):
  _prior_grid_run(tmp_path / 'prior', spoil=spoil)
  monkeypatch.setattr(study.loop, 'train_and_evaluate', _raise_trained)
  with pytest.raises(_Trained) as trained:
    study.run_cell(tmp_path / 'out', 'lano', decider, 0, prior_runs=tmp_path / 'prior')
  workdir = trained.value.args[0]
  assert workdir == tmp_path / 'out' / 'lano' / decider / 'seed_0'
  assert (workdir / 'checkpoints' / 'last').exists() == copied
  with pytest.raises(_Trained) as trained:  # without a grid to copy from, it trains
    study.run_cell(tmp_path / 'alone', 'lano', decider, 0)
  assert not (trained.value.args[0] / 'checkpoints').exists()


def test_table_only_tabulates_finished_runs_and_trains_nothing(tmp_path, monkeypatch):
  _finished_run(tmp_path, 'online', 1, np.random.default_rng(4))
  monkeypatch.setattr(study.loop, 'train_and_evaluate', lambda *a: pytest.fail('trained'))
  text = study.run_study(tmp_path, [], [0, 1, 2], n_boot=20, train=False)
  rows = [line for line in text.splitlines() if line.startswith('| lano | online | 1 |')]
  assert len(rows) == 1 and '| lano | early' not in text and '| mano' not in text
  assert json.loads((tmp_path / 'study.json').read_text())['learned'] == study.LEARNED


def test_a_table_recomputes_only_the_figures_whose_runs_changed(tmp_path, monkeypatch):
  for decider, seed in (('early', 0), ('online', 0), ('online', 1)):
    _finished_run(tmp_path, decider, seed, np.random.default_rng(seed + 7))
  computed = []
  real = study.cell_figures
  monkeypatch.setattr(study, 'cell_figures', lambda cell, decider, runs, n_boot: (
      computed.append((decider, len(runs))) or real(cell, decider, runs, n_boot)))
  first = study.run_study(tmp_path, [], [0, 1, 2], n_boot=20, train=False)
  assert sorted(computed) == [('early', 1), ('online', 2)]
  computed.clear()
  assert study.run_study(tmp_path, [], [0, 1, 2], n_boot=20, train=False) == first
  assert computed == []
  # A run added or trained again: only its (cell, decider) is recomputed.
  _finished_run(tmp_path, 'early', 1, np.random.default_rng(9))
  study.run_study(tmp_path, [], [0, 1, 2], n_boot=20, train=False)
  assert computed == [('early', 2)]
  computed.clear()
  study_lib.save(_records(np.random.default_rng(10)), tmp_path / 'lano/online/seed_1/records.npz')
  study.run_study(tmp_path, [], [0, 1, 2], n_boot=20, train=False)
  assert computed == [('online', 2)]
  computed.clear()
  study.run_study(tmp_path, [], [0, 1, 2], n_boot=30, train=False)  # other draws: every one
  assert sorted(computed) == [('early', 2), ('online', 2)]


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


def test_the_prior_designs_are_the_grid_or_its_corners_and_centre():
  gammas, bases = [0.003, 0.01, 0.03], [1.0, 1.5, 2.0]
  full = study_lib.prior_design(gammas, bases, 'grid')
  assert len(full) == 9 and len(set(full)) == 9
  assert study_lib.prior_design(gammas, bases, 'corners') == [
      (0.003, 1.0), (0.003, 2.0), (0.03, 1.0), (0.03, 2.0), (0.01, 1.5)]
  assert study_lib.prior_design([0.01], [1.5], 'corners') == [(0.01, 1.5)]
