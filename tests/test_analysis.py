"""The analyses give known answers on constructed traces, and their figures are valid PNGs."""

import matplotlib.image
import numpy as np
import pytest

from anira_jax import stats
from anira_jax.analysis import alignment, figures, generalization, timing, tradeoff
from anira_jax.trace import Trace, concatenate

T = 6
# Feature groups of the constructed BREVO-like data below (a task names its own).
GROUPS = {'static_structure': ('out_degree', 'in_degree', 'is_hub', 'num_ancestors'),
          'execution_state': ('dfs_depth', 'frontier_size', 'newly_enabled')}


def make_trace(depth, *, expected=None, complexity=None, features=None, size=None,
               correct=None, loss_mask=None, annotated=None) -> Trace:
  """A Trace with the given per-token arrays [B, L]; every token real, one head call each."""
  depth = np.asarray(depth, np.int32)
  b, length = depth.shape
  q = np.eye(T, dtype=np.float32)[depth - 1]
  return Trace(
      tokens=np.ones((b, length), np.int32), depth=depth, q=q,
      head_calls=np.ones((b, length), np.int32), annotated=annotated,
      expected_depth=depth.astype(np.float32) if expected is None else expected,
      halting=np.full((b, length, T), np.nan, np.float32),
      readout_prediction=np.zeros((T, b, length), np.int32),
      readout_confidence=np.ones((T, b, length), np.float32),
      logits=np.zeros((b, length, 3), np.float32), prediction=np.zeros((b, length), np.int32),
      max_depth=T, rule=None, targets=np.zeros((b, length), np.int32),
      correct=np.ones((b, length), bool) if correct is None else correct,
      loss_mask=np.ones((b, length), bool) if loss_mask is None else loss_mask,
      complexity=complexity, size=size, features=features or {})


# --- alignment ------------------------------------------------------------------------------

def test_monotone_depth_in_complexity_gives_rho_one_with_a_tight_interval():
  rng = np.random.default_rng(0)
  complexity = rng.integers(1, 7, (20, 10)).astype(np.float32)
  depth = np.minimum(complexity, T).astype(np.int32)
  expected = np.exp(complexity / 3).astype(np.float32)  # monotone but not linear
  result = alignment.alignment(make_trace(depth, expected=expected, complexity=complexity),
                               n_boot=200)
  corr = result['correlations']['complexity']
  assert corr['expected_depth']['spearman'] == pytest.approx(1.0)
  assert corr['expected_depth']['spearman_ci'] == pytest.approx([1.0, 1.0])
  assert corr['expected_depth']['pearson'] < 0.99  # Pearson sees the curvature
  assert corr['executed_depth']['pearson'] == pytest.approx(1.0)
  table = result['depth_per_complexity']
  assert table['value'] == [1, 2, 3, 4, 5, 6]
  np.testing.assert_allclose(table['mean_depth'], [1, 2, 3, 4, 5, 6])
  np.testing.assert_allclose(table['std_depth'], 0, atol=1e-6)
  assert sum(table['tokens']) == result['tokens'] == 200


def test_independent_depth_gives_rho_near_zero_and_an_interval_around_it():
  rng = np.random.default_rng(1)
  depth = rng.integers(1, T + 1, (100, 30))
  complexity = rng.integers(1, 10, (100, 30)).astype(np.float32)
  result = alignment.alignment(make_trace(depth, complexity=complexity), n_boot=200)
  corr = result['correlations']['complexity']['executed_depth']
  assert abs(corr['spearman']) < 0.05
  assert corr['spearman_ci'][0] < 0 < corr['spearman_ci'][1]


def test_correlation_of_a_constant_is_undefined():
  assert stats.correlation(np.ones(10), np.arange(10.0))['spearman'] is None
  assert stats.correlation(np.ones(10), np.arange(10.0))['pearson_ci'] is None


def test_cluster_bootstrap_resamples_whole_groups():
  groups = np.repeat(np.arange(5), 3)
  rng = np.random.default_rng(0)
  for idx in stats.cluster_indices(groups, 15, rng, 20):
    chosen = groups[idx]
    assert len(idx) == 15
    for g in np.unique(chosen):  # every drawn group comes whole (3 members per draw)
      assert np.sum(chosen == g) % 3 == 0


def test_alignment_mask_restricts_the_tokens():
  depth = np.array([[1, 2, 3, 4]])
  mask = np.array([[True, True, False, False]])
  result = alignment.alignment(make_trace(depth, complexity=depth.astype(np.float32)), mask,
                               n_boot=0)
  assert result['tokens'] == 2 and result['depth_per_complexity']['value'] == [1, 2]


# --- decision timing ------------------------------------------------------------------------

def _brevo_like(rng, sequences=300, length=12):
  """Independent features per token and a graph size per sequence (as BREVO annotates them)."""
  size = rng.integers(3, 11, sequences)
  shape = (sequences, length)
  features = {'graph_size': np.broadcast_to(size[:, None], shape).astype(np.float32),
              'num_ancestors': np.broadcast_to((size // 2)[:, None], shape).astype(np.float32)}
  for name in ('out_degree', 'in_degree', 'is_hub', 'dfs_depth', 'frontier_size',
               'newly_enabled'):
    features[name] = rng.integers(0, 5, shape).astype(np.float32) + (name == 'dfs_depth')
  features['is_hub'] = (features['is_hub'] > 3).astype(np.float32)
  return size, features


def test_depth_an_exact_function_of_one_group_is_fully_explained_by_that_group():
  rng = np.random.default_rng(0)
  size, f = _brevo_like(rng)
  y = 1 + 0.5 * f['dfs_depth'] + 0.3 * f['frontier_size'] - 0.2 * f['newly_enabled']
  result = timing.decision_timing(make_trace(np.ones(y.shape, np.int32), expected=y,
                                             features=f, size=size), GROUPS, 'graph_size',
                                   n_boot=20)
  execution, static = result['groups']['execution_state'], result['groups']['static_structure']
  assert result['r2_full'] == pytest.approx(1.0)
  assert execution['partial'] == pytest.approx(1.0)
  assert execution['added'] > 0.95 and execution['unique'] > 0.95
  assert static['added'] < 0.02 and static['unique'] < 1e-9
  assert result['r2_control'] < 0.03
  assert result['intervals']['groups/execution_state/added'][0] > 0.95
  assert result['features']['dfs_depth']['added'] > result['features']['newly_enabled']['added']


def test_independent_noise_is_explained_by_nothing():
  rng = np.random.default_rng(1)
  size, f = _brevo_like(rng)
  y = rng.normal(size=size.shape + (12,))
  result = timing.decision_timing(make_trace(np.ones(y.shape, np.int32), expected=y,
                                             features=f, size=size), GROUPS, 'graph_size',
                                   n_boot=0)
  assert result['r2_full'] < 0.03
  for group in result['groups'].values():
    assert group['added'] < 0.02 and group['alone'] < 0.02


def test_categorical_control_absorbs_a_pure_size_effect():
  rng = np.random.default_rng(2)
  size, f = _brevo_like(rng)
  y = np.broadcast_to(np.log(size)[:, None] * 3, (len(size), 12))  # nonlinear in size
  result = timing.decision_timing(make_trace(np.ones(y.shape, np.int32), expected=y,
                                             features=f, size=size), GROUPS, 'graph_size',
                                   n_boot=0)
  assert result['r2_control'] == pytest.approx(1.0)
  static = result['groups']['static_structure']
  assert static['alone'] > 0.2  # num_ancestors tracks size, so alone it seems to matter ...
  assert abs(static['added']) < 1e-9  # ... but not beyond the control
  assert abs(result['groups']['execution_state']['added']) < 1e-9


def test_timing_counts_only_correct_samples_and_annotated_tokens():
  rng = np.random.default_rng(3)
  size, f = _brevo_like(rng, sequences=10, length=5)
  annotated = np.ones((10, 5), bool)
  annotated[:, -1] = False  # the <eos> position carries no annotation
  correct = np.ones((10, 5), bool)
  correct[:4, 1] = False  # four samples answered wrongly
  y = f['dfs_depth'] + rng.normal(size=(10, 5))
  result = timing.decision_timing(make_trace(np.ones((10, 5), np.int32), expected=y, features=f,
                                             size=size, correct=correct, annotated=annotated),
                                  GROUPS, 'graph_size', n_boot=0)
  assert (result['samples_total'], result['tokens_total']) == (10, 40)
  assert (result['samples'], result['tokens']) == (6, 24)


def test_dummies_drop_one_level():
  d = timing.dummies(np.array([3, 5, 3, 9]))
  np.testing.assert_array_equal(d, [[0, 0], [1, 0], [0, 0], [0, 1]])


# --- generalization ---------------------------------------------------------------------------

def test_per_size_and_category_accuracy_and_depth():
  size = np.array([1, 2, 3, 4, 5, 6])
  depth = np.repeat(size[:, None], 2, 1).clip(1, T)
  correct = np.array([[1, 1], [1, 1], [1, 0], [1, 1], [0, 0], [1, 0]], bool)
  result = generalization.generalization(
      {T: make_trace(depth, size=size, correct=correct)}, train_sizes=(1, 2, 4), trained_depth=T)
  table = result['by_max_depth'][T]
  assert {s: v['category'] for s, v in table['per_size'].items()} == {
      1: 'train', 2: 'train', 3: 'held_out', 4: 'train', 5: 'beyond', 6: 'beyond'}
  assert table['per_size'][3]['token_accuracy'] == 0.5
  assert table['per_size'][3]['sequence_accuracy'] == 0.0
  cat = table['per_category']
  assert cat['train']['token_accuracy'] == 1.0 and cat['train']['examples'] == 3
  assert cat['beyond']['token_accuracy'] == 0.25 and cat['beyond']['mean_depth'] == 5.5
  assert 'below' not in cat


# --- trade-off ------------------------------------------------------------------------------

def test_pareto_front_of_known_points():
  cost = [1.0, 2.0, 3.0, 2.5, 4.0]
  acc = [0.5, 0.7, 0.9, 0.6, 0.9]
  assert tradeoff.pareto_front(cost, acc) == [0, 1, 2]


def test_tradeoff_points_from_traces():
  shallow = make_trace(np.ones((2, 3), np.int32),
                       correct=np.array([[1, 0, 0], [1, 1, 0]], bool))
  deep = make_trace(np.full((2, 3), 4, np.int32), correct=np.ones((2, 3), bool))
  wasteful = make_trace(np.full((2, 3), 6, np.int32), correct=np.ones((2, 3), bool))
  result = tradeoff.tradeoff({'mode': shallow, 'median': deep, 'threshold=0.9': wasteful})
  assert result['points']['mode']['token_accuracy'] == pytest.approx(0.5)
  assert result['points']['median']['execution_cost_per_token'] == 4.0
  assert result['pareto'] == ['mode', 'median']


# --- traces and figures ---------------------------------------------------------------------

def test_concatenate_pads_shorter_sequences():
  a = make_trace(np.ones((2, 3), np.int32), size=np.array([1, 2]),
                 features={'x': np.ones((2, 3), np.float32)})
  b = make_trace(np.full((1, 5), 2, np.int32), size=np.array([3]),
                 features={'x': np.ones((1, 5), np.float32)})
  c = concatenate([a, b])
  assert c.tokens.shape == (3, 5) and c.readout_confidence.shape == (T, 3, 5)
  assert c.real.sum() == 11 and c.answer_mask.sum() == 11
  np.testing.assert_array_equal(c.size, [1, 2, 3])
  assert c.features['x'].shape == (3, 5)


def _valid_png(path):
  assert path.read_bytes().startswith(b'\x89PNG\r\n\x1a\n')
  image = matplotlib.image.imread(path)
  assert image.ndim == 3 and image.shape[0] > 100 and image.shape[1] > 100


def test_figures_are_valid_pngs(tmp_path):
  rng = np.random.default_rng(0)
  size, f = _brevo_like(rng, sequences=40, length=8)
  complexity = f['dfs_depth']
  depth = np.clip(complexity, 1, T).astype(np.int32)
  trace = make_trace(depth, complexity=complexity, features=f, size=size,
                     correct=rng.random(depth.shape) < 0.9)
  decode = lambda tokens: [f't{int(x)}' for x in tokens]  # noqa: E731
  _valid_png(figures.depth_heatmap(trace, decode, tmp_path / 'heat.png'))
  _valid_png(figures.depth_vs_complexity(alignment.alignment(trace, n_boot=10),
                                         tmp_path / 'align.png'))
  gen = generalization.generalization({T: trace, 2 * T: trace}, (3, 4, 5, 7), T)
  _valid_png(figures.generalization_figure(gen, tmp_path / 'gen.png'))
  _valid_png(figures.variance_explained(
      timing.decision_timing(trace, GROUPS, 'graph_size', n_boot=10), tmp_path / 'var.png'))
  _valid_png(figures.pareto(tradeoff.tradeoff({'a': trace, 'b': make_trace(depth + 0)}),
                            tmp_path / 'pareto.png'))


def test_a_feature_read_one_position_away():
  """Depth equal to the feature of the *next* position: ρ = 1 at offset +1, not at 0; positions
  whose neighbour is not annotated are left out."""
  rng = np.random.default_rng(4)
  feature = rng.integers(1, T + 1, (30, 8)).astype(np.float32)
  depth = np.zeros((30, 8), np.int32)
  depth[:, :-1] = feature[:, 1:]
  depth[:, -1] = 1
  annotated = np.ones((30, 8), bool)
  annotated[:, 0] = False
  trace = make_trace(depth, features={'x': feature}, annotated=annotated)
  result = alignment.alignment(trace, trace.analysis_mask, ['x'], offsets=(-1, 1), n_boot=0)
  ahead = result['neighbours'][1]['x']['executed_depth']
  assert ahead['spearman'] == pytest.approx(1.0) and ahead['tokens'] == 30 * 6
  assert abs(result['correlations']['x']['executed_depth']['spearman']) < 0.3
  assert result['neighbours'][-1]['x']['executed_depth']['tokens'] == 30 * 6
  np.testing.assert_array_equal(alignment.shifted(np.array([[1, 2, 3]]), -1), [[0, 1, 2]])
