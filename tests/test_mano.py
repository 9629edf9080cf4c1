"""MANO labels against an independent evaluator: prefix tokens -> Python infix string -> eval."""

import numpy as np
import pytest

from tasks import base
from tasks.mano import ManoTask

SIZES = (1, 2, 3, 5, 8, 16, 33, 64)


def _parse(words, depth=1):
  """Recursive descent from the left: (infix string, rest, depth per token, ops per subtree)."""
  head, rest = words[0], words[1:]
  if head not in '+-*':
    return head, rest, [depth], [0]
  left, rest, left_depths, left_ops = _parse(rest, depth + 1)
  right, rest, right_depths, right_ops = _parse(rest, depth + 1)
  n_ops = 1 + left_ops[0] + right_ops[0]  # each list starts with its subtree root's count
  return (f'({left} {head} {right})', rest, [depth] + left_depths + right_depths,
          [n_ops] + left_ops + right_ops)


def _examples(task, seeds=range(40), sizes=SIZES):
  for seed in seeds:
    rng = np.random.default_rng(seed)
    for size in sizes:
      yield size, task.sample(rng, size)


@pytest.mark.parametrize('modulus', [23, 7])
def test_answer_matches_python_eval(modulus):
  task = ManoTask(modulus=modulus)
  for size, ex in _examples(task):
    words = task.decode(ex.tokens)
    assert words[-2] == '=', words
    infix, rest, _, _ = _parse(words[:-2])
    assert rest == []  # the prefix is exactly one complete tree
    # Exact integer arithmetic, reduced once at the end: a ring homomorphism gives the same value.
    assert int(words[-1]) == eval(infix) % modulus, (size, words)
    assert sum(w in '+-*' for w in words[:-2]) == size


def test_features_match_the_parsed_tree():
  task = ManoTask()
  for size, ex in _examples(task, seeds=range(10)):
    _, _, depths, ops = _parse(task.decode(ex.tokens)[:-2])
    np.testing.assert_array_equal(ex.features['node_depth'], depths + [0, 0])
    np.testing.assert_array_equal(ex.features['subtree_ops'], ops + [0, 0])
    assert ex.features['subtree_ops'][0] == size  # the root holds every operation
    np.testing.assert_array_equal(ex.features['tree_height'], max(depths))
    np.testing.assert_array_equal(ex.features['num_ops'], size)
    np.testing.assert_array_equal(ex.complexity, size)
    for name in task.feature_names:
      assert ex.features[name].dtype == np.float32 and ex.features[name].shape == ex.tokens.shape


def test_layout_targets_and_mask():
  task = ManoTask()
  for size, ex in _examples(task, seeds=range(5)):
    assert len(ex.tokens) == task.seq_len(size) == 2 * size + 3
    np.testing.assert_array_equal(ex.targets[:-1], ex.tokens[1:])
    assert ex.targets[-1] == base.PAD
    (scored,) = np.flatnonzero(ex.loss_mask)
    assert task.vocab[ex.tokens[scored]] == '='
    assert ex.targets[scored] == ex.tokens[-1]
    assert ex.tokens.dtype == ex.targets.dtype == np.int32
    assert (ex.tokens != base.PAD).all()


def test_seq_len_bounds_a_stream_and_sizes_are_checked():
  task = ManoTask()
  assert task.vocab[0] == '<pad>' and task.valid_sizes() == (1, 64)
  batch = base.Stream(task, sizes=(1, 17, 64), batch_size=32, seed=0).batch(3)
  assert batch['tokens'].shape == (32, task.seq_len(64))
  with pytest.raises(ValueError, match='cannot generate'):
    base.Stream(task, sizes=(65,), batch_size=1, seed=0)


def test_deterministic_by_seed():
  task = ManoTask()
  a = task.sample(np.random.default_rng(7), 20)
  b = task.sample(np.random.default_rng(7), 20)
  c = task.sample(np.random.default_rng(8), 20)
  np.testing.assert_array_equal(a.tokens, b.tokens)
  for name in task.feature_names:
    np.testing.assert_array_equal(a.features[name], b.features[name])
  assert not np.array_equal(a.tokens, c.tokens)


def test_tree_shapes_and_answers_vary():
  task = ManoTask()
  heights, answers = set(), set()
  for _, ex in _examples(task, seeds=range(200), sizes=(16,)):
    heights.add(int(ex.features['tree_height'][0]))
    answers.add(int(task.vocab[ex.tokens[-1]]))
  # Neither always balanced (height 5) nor always a chain (height 17).
  assert len(heights) >= 4 and max(heights) < 17
  assert answers == set(range(23))


def test_rejects_a_composite_modulus():
  with pytest.raises(ValueError, match='prime'):
    ManoTask(modulus=24)
