"""MANO labels against an independent evaluator: prefix tokens -> Python infix string of exact
fractions -> eval, mapped into Z_p."""

import collections
from fractions import Fraction

import numpy as np
import pytest

from tasks import base
from tasks.mano import ManoTask, tree_shapes

SIZES = (1, 2, 3, 5, 8, 16, 33, 64)
OPTIONS = [
    {},
    {'modulus': 7},
    {'ops': '+-*/'},
    {'length_marker': False},
    {'length_marker': False, 'knowledge_augment': False},
    {'knowledge_augment': False, 'ops': '*-'},
]


def _parse(words, depth=1):
  """Recursive descent from the left: (infix string, rest, depth per token, ops per subtree).
  A divisor is wrapped in `nonzero(...)`, which checks it is invertible mod p."""
  head, rest = words[0].rstrip("'"), words[1:]  # a prime marks the synonym
  if head not in '+-*/':
    return f'Fraction({head})', rest, [depth], [0]
  left, rest, left_depths, left_ops = _parse(rest, depth + 1)
  right, rest, right_depths, right_ops = _parse(rest, depth + 1)
  if head == '/':
    right = f'nonzero({right})'
  n_ops = 1 + left_ops[0] + right_ops[0]  # each list starts with its subtree root's count
  return (f'({left} {head} {right})', rest, [depth] + left_depths + right_depths,
          [n_ops] + left_ops + right_ops)


def _split(task, ex):
  """(prefix words, first marker or None, the word before the answer, the answer) of an example."""
  words = task.decode(ex.tokens)
  if task.length_marker:
    assert words[0].rstrip("'") == '<bos>'
    return words[2:-2], words[1], words[-2], words[-1]
  return words[:-2], None, words[-2], words[-1]


def _value(infix, modulus):
  """The exact rational value of the expression, mapped into Z_p (a ring homomorphism from the
  rationals whose denominators p does not divide)."""

  def nonzero(x):
    assert x.numerator % modulus, 'divides by 0 mod p'
    return x

  value = eval(infix, {'Fraction': Fraction, 'nonzero': nonzero})
  assert value.denominator % modulus
  return value.numerator * pow(value.denominator, -1, modulus) % modulus


def _examples(task, seeds=range(30), sizes=SIZES):
  for seed in seeds:
    rng = np.random.default_rng(seed)
    for size in sizes:
      yield size, task.sample(rng, size)


@pytest.mark.parametrize('options', OPTIONS, ids=str)
def test_answer_matches_an_independent_evaluator(options):
  task = ManoTask(**options)
  ops = set()
  for size, ex in _examples(task):
    prefix, first, before_answer, answer = _split(task, ex)
    infix, rest, _, _ = _parse(prefix)
    assert rest == []  # the prefix is exactly one complete tree
    assert int(answer) == _value(infix, task.modulus), (size, prefix)
    words = {w.rstrip("'") for w in prefix}
    assert sum(w.rstrip("'") in '+-*/' for w in prefix) == size
    ops |= words & set('+-*/')
    if task.length_marker:  # both markers name L
      assert first.rstrip("'") == f'L{size}' and before_answer.rstrip("'") == f'L{size}='
    else:
      assert before_answer == '='
  assert ops == set(task.ops)


def test_features_describe_the_predicted_token():
  for options in ({}, {'length_marker': False}):
    task = ManoTask(**options)
    head = 2 if task.length_marker else 0
    for size, ex in _examples(task, seeds=range(10)):
      prefix, *_ = _split(task, ex)
      _, _, depths, ops = _parse(prefix)
      # Position i predicts token i + 1: the prefix's tokens are predicted from head - 1 on
      # (the first one, with no BOS, by no position).
      expected_depth = np.zeros(len(ex.tokens) + 1)
      expected_depth[head:head + len(prefix)] = depths
      expected_ops = np.zeros(len(ex.tokens) + 1)
      expected_ops[head:head + len(prefix)] = ops
      np.testing.assert_array_equal(ex.features['node_depth'], expected_depth[1:])
      np.testing.assert_array_equal(ex.features['subtree_ops'], expected_ops[1:])
      np.testing.assert_array_equal(ex.features['tree_height'], max(depths))
      np.testing.assert_array_equal(ex.features['num_ops'], size)
      np.testing.assert_array_equal(ex.complexity, size)
      assert ex.features['node_depth'][ex.loss_mask] == 0  # the answer is no tree node
      for name in task.feature_names:
        assert ex.features[name].dtype == np.float32 and ex.features[name].shape == ex.tokens.shape


@pytest.mark.parametrize('options', OPTIONS, ids=str)
def test_layout_targets_and_mask(options):
  task = ManoTask(**options)
  for size, ex in _examples(task, seeds=range(5)):
    assert len(ex.tokens) == task.seq_len(size) == 2 * size + (5 if task.length_marker else 3)
    np.testing.assert_array_equal(ex.targets[:-1], ex.tokens[1:])
    assert ex.targets[-1] == base.PAD
    (scored,) = np.flatnonzero(ex.loss_mask)
    assert scored == len(ex.tokens) - 2 and ex.targets[scored] == ex.tokens[-1]
    np.testing.assert_array_equal(ex.annotated, ex.loss_mask)
    assert ex.tokens.dtype == ex.targets.dtype == np.int32
    assert (ex.tokens != base.PAD).all()


def test_the_original_layout_on_a_fixed_seed():
  # A golden example: update it only when the drawing rule changes on purpose.
  ex = ManoTask().sample(np.random.default_rng(0), 3)
  assert ManoTask().decode(ex.tokens) == [
      '<bos>', "L3'", "*'", '6', "-'", '14', "-'", '20', '11', "L3='", '7']
  # 6 * (14 - (20 - 11)) = 30 = 7 mod 23. Without markers or synonyms, the earlier generator's
  # tokens exactly (its streams too: nothing more is drawn).
  plain = ManoTask(length_marker=False, knowledge_augment=False)
  assert plain.decode(plain.sample(np.random.default_rng(0), 3).tokens) == [
      '*', '6', '-', '14', '-', '20', '11', '=', '7']


def test_synonyms_are_drawn_per_occurrence():
  task = ManoTask()
  seen = set()
  for _, ex in _examples(task, seeds=range(20), sizes=(8,)):
    seen.update(task.decode(ex.tokens))
  assert {'<bos>', "<bos>'", 'L8', "L8'", 'L8=', "L8='", '+', "+'", '-', "-'", '*', "*'"} <= seen
  plain = ManoTask(knowledge_augment=False)
  assert not any(w.endswith("'") for w in plain.vocab)


def test_vocab():
  assert ManoTask().vocab_size == 1 + 2 + 3 * 2 + 64 * 4 + 23
  assert ManoTask(max_ops=24).vocab_size == 128
  assert ManoTask(max_ops=24, knowledge_augment=False).vocab_size == 1 + 1 + 3 + 24 * 2 + 23
  legacy = ManoTask(length_marker=False, knowledge_augment=False)
  assert legacy.vocab == ('<pad>', '=', '+', '-', '*', *(str(v) for v in range(23)))
  for options in OPTIONS:
    task = ManoTask(**options)
    assert task.vocab[0] == '<pad>' and len(set(task.vocab)) == task.vocab_size


def test_seq_len_bounds_a_stream_and_sizes_are_checked():
  task = ManoTask()
  assert task.valid_sizes() == (1, 64)
  batch = base.Stream(task, sizes=(1, 17, 64), batch_size=32, seed=0).batch(3)
  assert batch['tokens'].shape == (32, task.seq_len(64))
  with pytest.raises(ValueError, match='cannot generate'):
    base.Stream(task, sizes=(65,), batch_size=1, seed=0)


def test_deterministic_by_seed():
  task = ManoTask(ops='+-*/')
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


def test_tree_shapes_are_drawn_with_their_enumerated_probabilities():
  task = ManoTask(modulus=5, max_ops=4, length_marker=False, knowledge_augment=False)
  is_op = np.zeros(len(task.vocab), bool)
  is_op[[task.vocab.index(op) for op in task.ops]] = True
  rng = np.random.default_rng(0)
  n = 20_000
  drawn = collections.Counter(tuple(is_op[task.sample(rng, 4).tokens[:-2]]) for _ in range(n))
  shapes = dict(tree_shapes(4))
  assert len(shapes) == 14 and sum(shapes.values()) == pytest.approx(1.0)  # Catalan(4) trees
  assert set(drawn) == set(shapes)
  for pattern, p in shapes.items():  # 4 standard errors of a share of 20,000 draws
    assert abs(drawn[pattern] / n - p) < 4 * np.sqrt(p * (1 - p) / n), pattern


@pytest.mark.parametrize('ops, size, expected', [
    # L = 1 over Z_5: + and * are order-free; a - b is known when a = b (1/5), else a coin flip.
    ('+-*', 1, (1 + 1 + (1 / 5 + 4 / 5 * 1 / 2)) / 3),
    # a / b, b != 0: sure when a = 0, a = b or a = -b (12 of 20 pairs); else a coin flip.
    ('/', 1, (12 + 8 / 2) / 20),
    ('+', 3, 1.0),  # a sum is the same whatever the tree
])
def test_order_blind_accuracy_closed_forms(ops, size, expected):
  assert ManoTask(modulus=5, ops=ops).order_blind_accuracy(size) == pytest.approx(expected)


def test_order_blind_accuracy_falls_with_size():
  task = ManoTask(modulus=5)
  floors = [task.order_blind_accuracy(size) for size in (1, 2, 3)]
  assert floors[0] > floors[1] > floors[2] > 1 / 5


def test_rejects_bad_options():
  with pytest.raises(ValueError, match='prime'):
    ManoTask(modulus=24)
  for ops in ('', '++', '+^'):
    with pytest.raises(ValueError, match='ops'):
      ManoTask(ops=ops)
