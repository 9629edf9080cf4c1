"""LANO: next-token prediction on strings of cfg3b, a deep, locally ambiguous PCFG.

The grammar is Physics of Language Models part 1's cfg3b (`tasks.cfg.CFG3B`, source there): a
root (level 0), five levels of three nonterminals, terminals 1, 2, 3 at level 6, exactly two
rules per nonterminal, chosen uniformly.

Difficulty `size` in 1..6 is the height of the derivation: the start symbol is drawn uniformly
from level 6 - size, so size 6 starts at the root and size 1 is a single level-5 rule. String
lengths in terminals by size (the grammar's shortest..longest): 1: 2..3, 2: 6..9, 3: 12..27,
4: 30..72, 5: 60..216, 6: 138..432.

Example layout: `[<bos>, terminals..., <eos>]`; the target at each position is the next token and
every position but `<eos>` is scored. Annotations follow `tasks.base`: position p describes the
prediction made there, of token p + 1, i.e. terminal p (position n, of n terminals, predicts
`<eos>`). `annotated` marks positions 1..n-1, the predictions of a terminal from a context that
holds one: `<bos>` reads the same token in every example, so nothing computed there can follow
the example, and `<eos>` is not a terminal. Structural features are 0 where no terminal is
predicted.

The grammar is locally ambiguous (many substrings some nonterminal derives are not constituents;
only the whole string tells), so the paper's features come from a parser of the string, not from
the derivation that generated it. In practice cfg3b strings have a single parse, the generating
derivation's, so the two readings agree; they would differ on a grammar with competing parses.
Features of terminal i (at position i):
- `rules_opened`, `rules_closed`: nonterminal spans of the generating derivation whose first
  (last) terminal is i (0..size each); `expansion` is their sum (the ANIRA paper's "rules opened
  and closed at the token"), also the example's complexity;
- `nesting_depth`: spans of the generating derivation that contain both terminals i - 1 and i
  (0 for the first): how high in the tree the boundary before i lies (small = a major boundary);
  it equals size - rules_opened, since every terminal sits under `size` spans;
- `parse_rules_opened`, `parse_rules_closed`, `parse_expansion`: the same counts in expectation
  over every parse of the whole string (inside-outside), the parser's reading the paper asks for;
- `bayes_max_prob`, `bayes_entropy` (nats): of the Bayes-optimal next-token distribution at the
  position, given the tokens read so far. The max probability is the Bayes-optimal predictor's
  expected accuracy there (the ceiling, `ceiling_feature`); entropy tells a token that is
  uncertain from one that is hard to compute. Defined at every scored position, `<eos>` targets
  included.
The parse and Bayes features are exact but cost a parse (`LanoTask.annotate`), so training
streams skip them. The Bayes reader knows the stream's sizes but not the example's: its prior
over the start symbol is uniform over those sizes, then uniform within the level.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np

from tasks import base
from tasks import cfg

GRAMMAR = cfg.CFG3B
DEPTH = GRAMMAR.depth  # the terminals' level; also the largest size

_BOS, _EOS = 1, 2
_FIRST_TERMINAL = 3  # token id of terminal index 0


class LanoTask(base.Task):
  """Strings of cfg3b from a start symbol `size` levels above the terminals."""

  name = 'lano'
  feature_names = ('expansion', 'rules_opened', 'rules_closed', 'nesting_depth',
                   'parse_expansion', 'parse_rules_opened', 'parse_rules_closed',
                   'bayes_max_prob', 'bayes_entropy')
  alignment_features = ('parse_expansion', 'expansion', 'parse_rules_opened',
                        'parse_rules_closed', 'rules_opened', 'rules_closed', 'bayes_entropy',
                        'nesting_depth')
  ceiling_feature = 'bayes_max_prob'

  @property
  def vocab(self) -> tuple[str, ...]:
    return ('<pad>', '<bos>', '<eos>', *GRAMMAR.terminals)

  def valid_sizes(self) -> tuple[int, int]:
    return 1, DEPTH

  def seq_len(self, max_size: int) -> int:
    # Longest yields grow with the height, so the tallest allowed start level bounds all sizes.
    return GRAMMAR.lengths(DEPTH - min(max(max_size, 1), DEPTH))[1] + 2

  def derive(self, rng: np.random.Generator, size: int) -> cfg.Derivation:
    """A derivation of height `size`: uniform start symbol of level DEPTH - size, uniform rules."""
    lo, hi = self.valid_sizes()
    if not lo <= size <= hi:
      raise ValueError(f'lano size must be in {lo}..{hi}, got {size}')
    return GRAMMAR.derive(rng, DEPTH - size)

  def sample(self, rng: np.random.Generator, size: int) -> base.Example:
    d = self.derive(rng, size)
    n = len(d.terminals)
    opened = np.bincount(d.start, minlength=n)  # [n]
    closed = np.bincount(d.end - 1, minlength=n)  # [n]
    # A span [s, e) contains both terminals i - 1 and i exactly for s < i < e.
    nesting = np.cumsum(np.bincount(d.start + 1, minlength=n + 1)
                        - np.bincount(d.end, minlength=n + 1))[:n]  # [n]
    tokens = np.concatenate([[_BOS], d.terminals + _FIRST_TERMINAL, [_EOS]]).astype(np.int32)
    targets = np.append(tokens[1:], base.PAD).astype(np.int32)
    expansion = _on_predictions(opened + closed)
    return base.Example(
        tokens=tokens, targets=targets, loss_mask=np.arange(n + 2) <= n, complexity=expansion,
        annotated=(np.arange(n + 2) >= 1) & (np.arange(n + 2) < n),
        features=dict(expansion=expansion, rules_opened=_on_predictions(opened),
                      rules_closed=_on_predictions(closed),
                      nesting_depth=_on_predictions(nesting)))

  def annotate(self, example: base.Example, sizes: Sequence[int]) -> base.Example:
    """`example` with the parse and Bayes features, for a reader of a stream drawing its size
    uniformly from `sizes`."""
    parse = GRAMMAR.parse(example.tokens[1:-1] - _FIRST_TERMINAL,
                          {DEPTH - s: 1 / len(set(sizes)) for s in set(sizes)})
    q = parse.next_token  # [n + 1, terminals + end]
    entropy = -(q * np.log(np.where(q > 0, q, 1))).sum(1)
    features = dict(
        example.features, parse_expansion=_on_predictions(parse.opened + parse.closed),
        parse_rules_opened=_on_predictions(parse.opened),
        parse_rules_closed=_on_predictions(parse.closed),
        bayes_max_prob=np.append(q.max(1), 0).astype(np.float32),
        bayes_entropy=np.append(entropy, 0).astype(np.float32))
    return dataclasses.replace(example, features=features)


def _on_predictions(values: np.ndarray) -> np.ndarray:
  """Per-terminal values [n] -> per-position [n + 2]: position p predicts terminal p, and the last
  two positions (predicting `<eos>`, and `<eos>` itself) predict none."""
  return np.pad(values, (0, 2)).astype(np.float32)
