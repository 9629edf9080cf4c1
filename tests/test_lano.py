"""LANO and its grammar against independent references: cfg3b's published shape, every
derivation enumerated by brute force (string probabilities, parse posteriors, next-token
distributions), a rule-by-rule check of sampled derivations, and features recounted by hand."""

import collections
import functools
import itertools
import math

import numpy as np
import pytest

from tasks import base
from tasks import cfg
from tasks import lano

TASK = lano.LanoTask()
CFG3B = cfg.CFG3B
BOS, EOS = TASK.vocab.index('<bos>'), TASK.vocab.index('<eos>')

# cfg3b's strings have a single parse each, so a parser that weighs competing parses wrongly
# would still pass on it. This small levelled grammar is ambiguous on purpose, with unary rules
# and start levels whose lengths overlap.
TOY = cfg.Grammar(terminals=('a', 'b'), rules=(
    (((0, 1), (1, 1, 0)),),
    (((0, 1), (1,)), ((0,), (1, 0), (0, 0))),
    (((0,), (0, 1)), ((1,), (1, 0), (0,))),
))


@functools.cache
def derivations(grammar: cfg.Grammar, level: int, symbol: int) -> list:
  """Every derivation of a symbol, as (terminals, probability, spans (level, start, end))."""
  if level == grammar.depth:
    return [((symbol,), 1.0, ())]
  result = []
  rules = grammar.rules[level][symbol]
  for rule in rules:
    for parts in itertools.product(*(derivations(grammar, level + 1, c) for c in rule)):
      terminals, prob, spans = (), 1 / len(rules), []
      for part_terminals, part_prob, part_spans in parts:
        spans += [(lv, s + len(terminals), e + len(terminals)) for lv, s, e in part_spans]
        terminals += part_terminals
        prob *= part_prob
      result.append((terminals, prob, ((level, 0, len(terminals)), *spans)))
  return result


@functools.cache
def enumerate_strings(grammar: cfg.Grammar, start: tuple) -> dict:
  """string -> [probability, expected spans opened at each terminal, expected spans closed],
  over every derivation from the start distribution `start` ((level, probability) pairs)."""
  table = {}
  for level, level_prob in start:
    for symbol in range(grammar.num_symbols(level)):
      for terminals, prob, spans in derivations(grammar, level, symbol):
        weight = level_prob / grammar.num_symbols(level) * prob
        entry = table.setdefault(terminals, [0.0, np.zeros(len(terminals)),
                                             np.zeros(len(terminals))])
        entry[0] += weight
        for _, s, e in spans:
          entry[1][s] += weight
          entry[2][e - 1] += weight
  return {w: (p, opened / p, closed / p) for w, (p, opened, closed) in table.items()}


@functools.cache
def prefix_probs(grammar: cfg.Grammar, start: tuple) -> collections.Counter:
  """prefix -> probability that a string starts with it."""
  probs = collections.Counter()
  for w, (p, _, _) in enumerate_strings(grammar, start).items():
    for k in range(len(w) + 1):
      probs[w[:k]] += p
  return probs


def next_token_by_enumeration(grammar, start, w) -> np.ndarray:
  strings, prefixes = enumerate_strings(grammar, start), prefix_probs(grammar, start)
  rows = []
  for k in range(len(w) + 1):
    ends = strings[w[:k]][0] if w[:k] in strings else 0.0
    rows.append([prefixes[w[:k] + (t,)] for t in range(len(grammar.terminals))] + [ends])
  return np.array(rows) / np.array([[prefixes[w[:k]]] for k in range(len(w) + 1)])


@pytest.mark.parametrize('grammar, start, stride', [
    (TOY, ((0, 0.5), (1, 0.5)), 1),
    (TOY, ((1, 1.0),), 1),
    (CFG3B, ((3, 1 / 3), (4, 1 / 3), (5, 1 / 3)), 397),  # sizes 1-3 mixed, every 397th string
], ids=['toy_mixed', 'toy_level1', 'cfg3b_sizes1to3'])
def test_parse_matches_enumeration_of_every_derivation(grammar, start, stride):
  strings = enumerate_strings(grammar, start)
  checked = list(strings)[::stride]
  for w in checked:
    prob, opened, closed = strings[w]
    parse = grammar.parse(np.array(w), dict(start))
    np.testing.assert_allclose(parse.prob, prob, rtol=1e-12, err_msg=str(w))
    np.testing.assert_allclose(parse.opened, opened, atol=1e-12, err_msg=str(w))
    np.testing.assert_allclose(parse.closed, closed, atol=1e-12, err_msg=str(w))
    np.testing.assert_allclose(parse.next_token, next_token_by_enumeration(grammar, start, w),
                               atol=1e-12, err_msg=str(w))
  if grammar is TOY:  # the check weighed competing parses, not just one
    assert any(np.abs(strings[w][1] - np.round(strings[w][1])).max() > 0.1 for w in checked)


def test_parse_rejects_strings_outside_the_language():
  rng = np.random.default_rng(0)
  rejected = 0
  for _ in range(20):
    n = len(TASK.derive(rng, 3).terminals)
    try:
      CFG3B.parse(rng.integers(0, 3, size=n), {3: 1.0})
    except ValueError:
      rejected += 1
  assert rejected >= 18, 'the language is sparse; a parser that accepts noise is broken'
  with pytest.raises(ValueError):  # a height-2 string is not a height-3 one
    CFG3B.parse(TASK.derive(rng, 2).terminals, {3: 1.0})


def test_cfg3b_has_the_published_shape():
  """Part 1's cfg3b: a root, five levels of three nonterminals, terminals 1-3, exactly two distinct
  rules per nonterminal, rule lengths 2-3, every symbol of a level used by the level above."""
  assert CFG3B.terminals == ('1', '2', '3')
  assert [len(level) for level in CFG3B.rules] == [1, 3, 3, 3, 3, 3]
  for level, level_rules in enumerate(CFG3B.rules):
    for rules in level_rules:
      assert len(rules) == 2 and rules[0] != rules[1]
      assert all(len(rule) in (2, 3) for rule in rules)
    used = {c for rules in level_rules for rule in rules for c in rule}
    assert used == set(range(CFG3B.num_symbols(level + 1)))
  assert {len(r) for level in CFG3B.rules for rules in level for r in rules} == {2, 3}


def test_lengths_per_size():
  expected = {1: (2, 3), 2: (6, 9), 3: (12, 27), 4: (30, 72), 5: (60, 216), 6: (138, 432)}
  assert {size: CFG3B.lengths(lano.DEPTH - size) for size in expected} == expected
  for size in (1, 2, 3):  # against the enumeration
    lengths = [len(w) for w in enumerate_strings(CFG3B, ((lano.DEPTH - size, 1.0),))]
    assert (min(lengths), max(lengths)) == expected[size]
  rng = np.random.default_rng(0)
  for _ in range(20):
    assert 138 <= len(TASK.derive(rng, 6).terminals) <= 432


def test_cfg3b_is_locally_ambiguous():
  """Many substrings that some nonterminal derives are not constituents of the string's parse:
  only the rest of the string tells which are."""
  languages = {level: {w for symbol in range(3) for w, _, _ in derivations(CFG3B, level, symbol)}
               for level in (3, 4, 5)}
  d = TASK.derive(np.random.default_rng(0), 4)
  w = tuple(d.terminals.tolist())
  constituents = set(zip(d.level.tolist(), d.start.tolist(), d.end.tolist()))
  derivable = {(level, s, e) for level, language in languages.items()
               for s, e in itertools.combinations(range(len(w) + 1), 2) if w[s:e] in language}
  assert constituents & derivable == {c for c in constituents if c[0] >= 3}
  assert len(derivable - constituents) >= 10


def test_parse_of_root_strings_is_their_derivation():
  """cfg3b strings sampled at full height have a single parse: the generating derivation's."""
  for seed in range(3):
    d = TASK.derive(np.random.default_rng(seed), lano.DEPTH)
    parse = CFG3B.parse(d.terminals, {0: 1.0})
    n = len(d.terminals)
    np.testing.assert_allclose(parse.opened, np.bincount(d.start, minlength=n), atol=1e-9)
    np.testing.assert_allclose(parse.closed, np.bincount(d.end - 1, minlength=n), atol=1e-9)
    nxt = np.append(d.terminals, len(CFG3B.terminals))  # what does follow each prefix
    assert (parse.next_token[np.arange(n + 1), nxt] > 0).all()


def check_derivation(d: cfg.Derivation):
  """Every span rewrites by one of its symbol's rules into the spans (or terminals) tiling it."""
  n = len(d.terminals)
  spans = list(zip(d.level.tolist(), d.symbol.tolist(), d.start.tolist(), d.end.tolist()))
  assert [(level, s, e) for level, _, s, e in spans if level == d.top] == [(d.top, 0, n)]
  for level, symbol, s, e in spans:
    if level == CFG3B.depth - 1:
      children = [(int(t), i, i + 1) for i, t in enumerate(d.terminals) if s <= i < e]
    else:
      children = sorted(((c_sym, c_s, c_e) for c_level, c_sym, c_s, c_e in spans
                         if c_level == level + 1 and s <= c_s and c_e <= e), key=lambda c: c[1])
    assert children[0][1] == s and children[-1][2] == e
    assert all(a[2] == b[1] for a, b in zip(children, children[1:])), 'children must tile'
    assert tuple(c[0] for c in children) in CFG3B.rules[level][symbol]


@pytest.mark.parametrize('size', [1, 2, 3, 4, lano.DEPTH])
def test_derivations_follow_the_rules(size):
  for seed in range(6 if size < lano.DEPTH else 2):
    check_derivation(TASK.derive(np.random.default_rng(seed), size))


@pytest.mark.parametrize('size', range(1, lano.DEPTH + 1))
def test_features_match_spans_counted_by_hand(size):
  """Position p describes the prediction of token p + 1, i.e. terminal p."""
  for seed in range(3):
    d = TASK.derive(np.random.default_rng(seed), size)
    ex = TASK.sample(np.random.default_rng(seed), size)
    assert ex.tokens[1:-1].tolist() == [TASK.vocab.index(CFG3B.terminals[t]) for t in d.terminals]
    spans = list(zip(d.start.tolist(), d.end.tolist()))
    n = len(d.terminals)
    opened = [sum(s == i for s, _ in spans) for i in range(n)]
    closed = [sum(e - 1 == i for _, e in spans) for i in range(n)]
    nesting = [sum(s <= i - 1 and i < e for s, e in spans) if i else 0 for i in range(n)]
    expected = dict(rules_opened=opened, rules_closed=closed, nesting_depth=nesting,
                    expansion=[o + c for o, c in zip(opened, closed)])
    for name, values in expected.items():
      np.testing.assert_array_equal(ex.features[name], [*values, 0, 0], err_msg=name)
    np.testing.assert_array_equal(ex.complexity, ex.features['expansion'])
    assert len(spans) == sum(opened) == sum(closed)


def sample_string(size: int, string: str) -> base.Example:
  seed = next(s for s in range(1000)
              if ''.join(TASK.decode(TASK.sample(np.random.default_rng(s), size).tokens[1:-1]))
              == string)
  return TASK.sample(np.random.default_rng(seed), size)


def test_annotations_describe_the_token_predicted_by_hand():
  """`1 2 3` is the level-5 rule 7 -> 1 2 3: the one span opens at `1` and closes at `3`. The
  first terminal is 3 with probability 2/3 (1/6 each for 1 and 2); after `1` the rest is certain.
  A reader who also expects height-2 strings is unsure whether `1 2 3` ends: 1/2."""
  ex = sample_string(1, '123')
  assert ex.tokens.tolist() == [BOS, *(TASK.vocab.index(t) for t in '123'), EOS]
  np.testing.assert_array_equal(ex.complexity, [1, 0, 1, 0, 0])  # on the token read: 0 1 0 1 0
  np.testing.assert_array_equal(ex.loss_mask, [1, 1, 1, 1, 0])
  np.testing.assert_array_equal(ex.annotated, [0, 1, 1, 0, 0])
  one = TASK.annotate(ex, [1])
  np.testing.assert_allclose(one.features['bayes_max_prob'], [2 / 3, 1, 1, 1, 0], rtol=1e-6)
  first = -(2 / 3 * math.log(2 / 3) + 2 / 6 * math.log(1 / 6))
  np.testing.assert_allclose(one.features['bayes_entropy'], [first, 0, 0, 0, 0], atol=1e-6)
  np.testing.assert_allclose(one.features['parse_expansion'], [1, 0, 1, 0, 0], atol=1e-6)
  two = TASK.annotate(ex, [1, 2])
  np.testing.assert_allclose(two.features['bayes_max_prob'][3], 0.5, rtol=1e-6)
  for name, values in ex.features.items():  # annotate only adds
    np.testing.assert_array_equal(two.features[name], values)


def test_layout_and_masks():
  assert TASK.vocab[base.PAD] == '<pad>'
  ex = TASK.sample(np.random.default_rng(3), 4)
  n = len(ex.tokens) - 2
  assert ex.tokens[0] == BOS and ex.tokens[-1] == EOS
  assert not np.isin(ex.tokens[1:-1], [base.PAD, BOS, EOS]).any()
  np.testing.assert_array_equal(ex.targets[:-1], ex.tokens[1:])
  assert ex.loss_mask[:-1].all() and not ex.loss_mask[-1]
  assert ex.annotated.tolist() == [False] + [True] * (n - 1) + [False, False]


def test_deterministic_by_seed():
  a, b = (TASK.sample(np.random.default_rng(7), 5) for _ in range(2))
  for name in ('tokens', 'targets', 'loss_mask', 'annotated', 'complexity'):
    np.testing.assert_array_equal(getattr(a, name), getattr(b, name))
  for name in a.features:
    np.testing.assert_array_equal(a.features[name], b.features[name])
  c = TASK.sample(np.random.default_rng(8), 5)
  assert a.tokens.tolist() != c.tokens.tolist()


def test_seq_len_is_the_longest_possible_string():
  def longest(level, symbol):
    if level == CFG3B.depth:
      return 1
    return max(sum(longest(level + 1, c) for c in rule) for rule in CFG3B.rules[level][symbol])

  rng = np.random.default_rng(0)
  for size in range(1, lano.DEPTH + 1):
    top = lano.DEPTH - size
    assert TASK.seq_len(size) == 2 + max(longest(top, s) for s in range(len(CFG3B.rules[top])))
    assert max(len(TASK.sample(rng, size).tokens) for _ in range(20)) <= TASK.seq_len(size)


def test_stream_batches_annotate_only_when_asked():
  for annotate in (True, False):
    batch = base.Stream(TASK, sizes=(1, 3, 6), batch_size=4, seed=0, annotate=annotate).batch(0)
    assert batch['tokens'].shape == (4, TASK.seq_len(6))
    assert set(batch['features']) == set(TASK.feature_names)
    ceiling = batch['features']['bayes_max_prob'][batch['annotated']]
    if annotate:
      assert (ceiling >= 1 / 4).all() and (ceiling <= 1).all()
    else:
      assert (ceiling == 0).all()
  for size in (0, lano.DEPTH + 1):
    with pytest.raises(ValueError):
      TASK.sample(np.random.default_rng(0), size)


def test_analysis_metadata_names_features():
  assert set(TASK.alignment_features) <= set(TASK.feature_names)
  assert TASK.alignment_features[0] == 'parse_expansion'
  assert TASK.ceiling_feature in TASK.feature_names
