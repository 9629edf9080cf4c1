"""LANO against independent references: a CYK recognizer, a rule-by-rule derivation check, and
per-token features recounted from the spans with plain loops."""

import itertools

import numpy as np
import pytest

from tasks import base
from tasks import lano

TASK = lano.LanoTask()
BOS, EOS = TASK.vocab.index('<bos>'), TASK.vocab.index('<eos>')


def binary_rules() -> dict[tuple, set]:
  """The grammar in Chomsky normal form: (left, right) -> {parents}.

  Symbols are ('N', level, index) and ('T', index); a 3-symbol rule A -> X Y Z becomes
  A -> X A' and A' -> Y Z with a fresh A' per rule.
  """
  def name(level, index):
    return ('T', index) if level == lano.DEPTH else ('N', level, index)

  rules = {}
  for level, level_rules in enumerate(lano.GRAMMAR):
    for index, symbol_rules in enumerate(level_rules):
      parent = name(level, index)
      for r, rule in enumerate(symbol_rules):
        children = [name(level + 1, c) for c in rule]
        if len(children) == 3:
          rest = ('rest', level, index, r)
          rules.setdefault((children[1], children[2]), set()).add(rest)
          children = [children[0], rest]
        rules.setdefault(tuple(children), set()).add(parent)
  return rules


RULES = binary_rules()


def cyk(terminals) -> dict[tuple[int, int], set]:
  """chart[(i, j)] = every symbol that derives terminals[i:j]."""
  n = len(terminals)
  chart = {(i, i + 1): {('T', int(t))} for i, t in enumerate(terminals)}
  for width in range(2, n + 1):
    for i in range(n - width + 1):
      j = i + width
      cell = set()
      for k in range(i + 1, j):
        for left, right in itertools.product(chart[(i, k)], chart[(k, j)]):
          cell |= RULES.get((left, right), set())
      chart[(i, j)] = cell
  return chart


def in_language(terminals, size) -> bool:
  """Whether a nonterminal of the start level for `size` derives the whole string."""
  top = lano.DEPTH - size
  return any(s[0] == 'N' and s[1] == top for s in cyk(terminals)[(0, len(terminals))])


def check_derivation(d: lano.Derivation):
  """Every span rewrites by one of its symbol's rules into the spans (or terminals) tiling it."""
  n = len(d.terminals)
  spans = list(zip(d.level.tolist(), d.symbol.tolist(), d.start.tolist(), d.end.tolist()))
  top = lano.DEPTH - d.size
  assert [(level, s, e) for level, _, s, e in spans if level == top] == [(top, 0, n)]
  for level, symbol, s, e in spans:
    if level == lano.DEPTH - 1:
      children = [(int(t), i, i + 1) for i, t in enumerate(d.terminals) if s <= i < e]
    else:
      children = sorted(((c_sym, c_s, c_e) for c_level, c_sym, c_s, c_e in spans
                         if c_level == level + 1 and s <= c_s and c_e <= e), key=lambda c: c[1])
    assert children[0][1] == s and children[-1][2] == e
    assert all(a[2] == b[1] for a, b in zip(children, children[1:])), 'children must tile'
    assert tuple(c[0] for c in children) in lano.GRAMMAR[level][symbol]


@pytest.mark.parametrize('size', [1, 2, 3, 4])
def test_strings_parse_and_derivations_follow_the_rules(size):
  for seed in range(12):
    d = TASK.derive(np.random.default_rng(seed), size)
    check_derivation(d)
    chart = cyk(d.terminals)
    assert ('N', lano.DEPTH - size, int(d.symbol[0])) in chart[(0, len(d.terminals))]
    for level, symbol, s, e in zip(d.level, d.symbol, d.start, d.end):
      assert ('N', int(level), int(symbol)) in chart[(int(s), int(e))]


def test_recognizer_accepts_exactly_the_size_1_language():
  language = {rule for rules in lano.GRAMMAR[-1] for rule in rules}
  for n in (1, 2, 3, 4):
    for string in itertools.product(range(3), repeat=n):
      assert in_language(string, 1) == (string in language), string


def test_recognizer_rejects_random_strings():
  rng = np.random.default_rng(0)
  lengths = [len(TASK.derive(rng, 3).terminals) for _ in range(20)]
  accepted = sum(in_language(rng.integers(0, 3, size=n), 3) for n in lengths)
  assert accepted <= 2, 'the language is sparse; a recognizer that accepts noise is broken'


def test_grammar_is_locally_ambiguous():
  """Some substring of a sampled string is derived by two nonterminals of one level."""
  chart = cyk(TASK.derive(np.random.default_rng(0), 4).terminals)
  assert any(len({s for s in cell if s[0] == 'N'}) > len({s[1] for s in cell if s[0] == 'N'})
             for cell in chart.values())


def test_derivations_at_full_depth_follow_the_rules():
  for seed in range(2):
    check_derivation(TASK.derive(np.random.default_rng(seed), lano.DEPTH))


@pytest.mark.parametrize('size', range(1, lano.DEPTH + 1))
def test_features_match_spans_counted_by_hand(size):
  for seed in range(4):
    d = TASK.derive(np.random.default_rng(seed), size)
    ex = TASK.sample(np.random.default_rng(seed), size)
    assert ex.tokens[1:-1].tolist() == [TASK.vocab.index(lano.TERMINALS[t]) for t in d.terminals]
    spans = list(zip(d.start.tolist(), d.end.tolist()))
    n = len(d.terminals)
    opened = [sum(s == i for s, _ in spans) for i in range(n)]
    closed = [sum(e - 1 == i for _, e in spans) for i in range(n)]
    nesting = [sum(s <= i - 1 and i < e for s, e in spans) if i else 0 for i in range(n)]
    expected = dict(rules_opened=opened, rules_closed=closed, nesting_depth=nesting,
                    expansion=[o + c for o, c in zip(opened, closed)])
    for name, values in expected.items():
      np.testing.assert_array_equal(ex.features[name], [0, *values, 0], err_msg=name)
    np.testing.assert_array_equal(ex.complexity, ex.features['expansion'])
    assert len(spans) == sum(opened) == sum(closed)


def test_deterministic_by_seed():
  a, b = (TASK.sample(np.random.default_rng(7), 5) for _ in range(2))
  for name in ('tokens', 'targets', 'loss_mask', 'complexity'):
    np.testing.assert_array_equal(getattr(a, name), getattr(b, name))
  for name in TASK.feature_names:
    np.testing.assert_array_equal(a.features[name], b.features[name])
  c = TASK.sample(np.random.default_rng(8), 5)
  assert a.tokens.tolist() != c.tokens.tolist()


def test_seq_len_is_the_longest_possible_string():
  def longest(level, symbol):
    if level == lano.DEPTH:
      return 1
    return max(sum(longest(level + 1, c) for c in rule) for rule in lano.GRAMMAR[level][symbol])

  rng = np.random.default_rng(0)
  for size in range(1, lano.DEPTH + 1):
    top = lano.DEPTH - size
    assert TASK.seq_len(size) == 2 + max(longest(top, s) for s in range(len(lano.GRAMMAR[top])))
    assert max(len(TASK.sample(rng, size).tokens) for _ in range(50)) <= TASK.seq_len(size)


def test_layout_and_loss_mask():
  assert TASK.vocab[base.PAD] == '<pad>'
  ex = TASK.sample(np.random.default_rng(3), 4)
  assert ex.tokens[0] == BOS and ex.tokens[-1] == EOS
  assert not np.isin(ex.tokens[1:-1], [base.PAD, BOS, EOS]).any()
  np.testing.assert_array_equal(ex.targets[:-1], ex.tokens[1:])
  assert ex.loss_mask[:-1].all() and not ex.loss_mask[-1]


def test_stream_batches_and_size_bounds():
  batch = base.Stream(TASK, sizes=(1, 3, 6), batch_size=4, seed=0).batch(0)
  assert batch['tokens'].shape == (4, TASK.seq_len(6))
  assert set(batch['features']) == set(TASK.feature_names)
  for size in (0, lano.DEPTH + 1):
    with pytest.raises(ValueError):
      TASK.sample(np.random.default_rng(0), size)
