"""The per-token record's metrics against hand-computed values, the same on the host (numpy)
and under jit (jax arrays), and per size."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from anira_jax import trace as trace_lib

# Two sequences of four positions; the second is right-padded after three tokens.
TOKENS = np.array([[3, 4, 3, 4], [4, 4, 3, 0]], np.int32)
LOSS_MASK = np.array([[0, 1, 1, 1], [0, 0, 1, 0]], bool)
CORRECT = np.array([[1, 1, 0, 1], [1, 0, 1, 1]], bool)
DEPTH = np.array([[1, 2, 4, 4], [1, 1, 3, 0]], np.int32)
EXPECTED = np.array([[1.5, 2.0, 3.5, 4.0], [1.0, 1.0, 2.5, 0.0]], np.float32)
HEAD_CALLS = np.array([[1, 2, 4, 4], [1, 1, 3, 0]], np.int32)
T = 4


def _trace(xp=np, features=None, **overrides):
  fields = dict(tokens=TOKENS, depth=DEPTH, expected_depth=EXPECTED, head_calls=HEAD_CALLS,
                loss_mask=LOSS_MASK, correct=CORRECT)
  fields.update(overrides)
  return trace_lib.Trace(max_depth=T, **{k: xp.asarray(v) for k, v in fields.items()},
                         size=np.array([4, 3]), features=features or {})


def test_summary_by_hand():
  s = trace_lib.summary(_trace())
  # Answer tokens: (0, 1), (0, 2), (0, 3), (1, 2); correct: three of them; sequence 0 is wrong
  # at (0, 2), sequence 1 right.
  assert (s['examples'], s['answer_tokens']) == (2, 4)
  assert s['token_accuracy'] == pytest.approx(3 / 4)
  assert s['sequence_accuracy'] == pytest.approx(1 / 2)
  assert s['mean_depth'] == pytest.approx((2 + 4 + 4 + 3) / 4)
  assert s['mean_expected_depth'] == pytest.approx((2.0 + 3.5 + 4.0 + 2.5) / 4)
  assert s['share_depth_max'] == pytest.approx(2 / 4) and s['share_depth_1'] == 0
  # Costs over the seven real tokens, padding excluded.
  assert (s['execution_cost'], s['decision_cost']) == (16, 16)
  assert s['execution_cost_per_token'] == pytest.approx(16 / 7)


def test_device_sums_under_jit_equal_the_host_ones():
  host = trace_lib.sums(_trace())
  device = jax.jit(lambda t: trace_lib.sums(_trace(jnp, **t)))(
      dict(tokens=TOKENS, correct=CORRECT))
  assert set(device) == set(host)
  for name in host:
    np.testing.assert_allclose(device[name], host[name], err_msg=name)
  np.testing.assert_allclose(jax.jit(trace_lib.ratios)(device)['token_accuracy'], 0.75)


def test_per_size_and_a_sequence_without_answers():
  per = trace_lib.per_size(_trace())
  assert per[3]['token_accuracy'] == 1.0 and per[3]['sequence_accuracy'] == 1.0
  assert per[4]['token_accuracy'] == pytest.approx(2 / 3) and per[4]['examples'] == 1
  no_answers = _trace(loss_mask=np.zeros_like(LOSS_MASK))
  summary = trace_lib.summary(no_answers)
  assert summary['token_accuracy'] is None and summary['examples'] == 0
  assert summary['execution_cost_per_token'] == pytest.approx(16 / 7)
  assert trace_lib.per_size(no_answers) == {}


def test_ceiling_and_the_share_of_it():
  """The ceiling is the mean of the Bayes-optimal accuracy feature over answer tokens."""
  bayes = np.array([[0.0, 0.5, 1.0, 0.9], [0.0, 0.0, 0.6, 0.0]], np.float32)
  results = trace_lib.split_results(_trace(features={'bayes': bayes}), 'bayes')
  assert results['ceiling_token_accuracy'] == pytest.approx((0.5 + 1.0 + 0.9 + 0.6) / 4)
  assert results['share_of_ceiling'] == pytest.approx(0.75 / 0.75)
  assert results['per_size'][3]['ceiling_token_accuracy'] == pytest.approx(0.6)
  assert 'ceiling_token_accuracy' not in trace_lib.split_results(_trace())
