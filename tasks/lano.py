"""LANO: next-token prediction on strings of a fixed, deep, locally ambiguous PCFG (cfg3b-style).

The grammar follows the shape of Physics of Language Models 4.1's cfg3b: nonterminals in levels,
one root at level 0 and three nonterminals at each of levels 1..5; every rule of a level-l
nonterminal is a sequence of 2 or 3 symbols of level l + 1, and level 5 rewrites to the terminals
{a, b, c}. Each nonterminal has 2 or 3 rules, chosen uniformly. Every derivation therefore has all
its terminals at the same depth, and strings from the root are 90..486 terminals long (about 250
on average).

The rules were drawn once, offline, by a seeded procedure (rule count and lengths uniform in
{2, 3}, symbols uniform over the next level, distinct rules per nonterminal, every next-level
symbol used) and the draw was kept because it is locally ambiguous: the same terminal substring
is often derived by different nonterminals (N5.0 and N5.1 both rewrite to `abc` and to `baa`),
about a fifth of size-3 strings and half of size-4 strings have more than one bracketing, and yet
uniformly random strings of those lengths are almost never in the language. The table below is
the grammar; nothing regenerates it.

Difficulty `size` in 1..6 is the height of the derivation: the start symbol is drawn uniformly
from level 6 - size, so size 6 starts at the root and size 1 is a single level-5 rule.
Lengths in terminals, the grammar's min..max (sampled mean): size 1 2..3 (2.6); 2 4..9 (7);
3 9..27 (17); 4 18..81 (48); 5 36..243 (121); 6 90..486 (246).

Example layout: `[<bos>, terminals..., <eos>]`; the target at each position is the next token and
every position except `<eos>` is scored. Per-token annotations come from the *generating*
derivation. The grammar is ambiguous, so that derivation is one of possibly several parses of the
string; the labels describe how the string was made, not a canonical parse. With terminal i at
position i + 1 and `size` nonterminal spans above every terminal:
- `rules_opened[i]`: nonterminal spans whose first terminal is i (0..size);
- `rules_closed[i]`: nonterminal spans whose last terminal is i (0..size);
- `expansion[i] = rules_opened[i] + rules_closed[i]` (the ANIRA paper's "rules opened and closed
  at the token"), also the example's complexity;
- `nesting_depth[i]`: spans that contain both terminal i - 1 and terminal i, i.e. the depth of
  their lowest common ancestor with the start symbol at depth 1 (0 for the first terminal).
  Every terminal sits under exactly `size` spans, so the plain count of enclosing spans carries no
  information; this one says how high in the tree the boundary before token i lies (small = a
  major boundary), and the spans below the ancestor are exactly those opened at i, so
  `nesting_depth[i] = size - rules_opened[i]`.
`<bos>` and `<eos>` carry 0 in every annotation. Annotations sit on the token they describe; the
values for the token being predicted at position p are those at p + 1.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from tasks import base

TERMINALS = ('a', 'b', 'c')

# GRAMMAR[level][symbol] = the rules of nonterminal N{level}.{symbol}; each rule lists symbols of
# level + 1 by index (for level 5, indices into TERMINALS: 0 = a, 1 = b, 2 = c).
GRAMMAR: tuple[tuple[tuple[tuple[int, ...], ...], ...], ...] = (
    # level 0, the root
    (((0, 0), (1, 1), (2, 1)),),
    # level 1
    (((1, 0), (0, 0, 2), (2, 0, 2)),
     ((1, 2), (2, 2, 1)),
     ((0, 0), (1, 1), (2, 1, 1))),
    # level 2
    (((1, 1), (2, 2), (2, 2, 2)),
     ((0, 1, 0), (0, 1, 2), (2, 1, 2)),
     ((0, 1, 1), (1, 1, 1), (2, 1, 1))),
    # level 3
    (((1, 0), (1, 1, 0), (1, 1, 2)),
     ((0, 0), (1, 0), (2, 1, 1)),
     ((2, 2), (0, 2, 1))),
    # level 4
    (((1, 0), (0, 1, 0), (0, 2, 2)),
     ((0, 0), (2, 2), (0, 0, 0)),
     ((1, 1, 1), (1, 1, 2))),
    # level 5, rewriting to terminals: abb abc baa | ca abc baa | ab bc
    (((0, 1, 1), (0, 1, 2), (1, 0, 0)),
     ((2, 0), (0, 1, 2), (1, 0, 0)),
     ((0, 1), (1, 2))),
)
DEPTH = len(GRAMMAR)  # the level of the terminals; also the largest size

_BOS, _EOS = 1, 2
_FIRST_TERMINAL = 3  # token id of TERMINALS[0]
_MAX_RULES = _MAX_RHS = 3


def _rule_tables(level: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Padded arrays of one level's rules, so a whole frontier expands in a few numpy ops.

  Returns rule counts [N], rule lengths [N, R] and right-hand sides [N, R, K] (padding -1), with
  N the level's nonterminals, R = 3 rules at most and K = 3 symbols at most.
  """
  rules = GRAMMAR[level]
  num_rules = np.array([len(r) for r in rules])
  length = np.zeros((len(rules), _MAX_RULES), np.int64)
  rhs = np.full((len(rules), _MAX_RULES, _MAX_RHS), -1, np.int64)
  for s, symbol_rules in enumerate(rules):
    for r, rule in enumerate(symbol_rules):
      length[s, r] = len(rule)
      rhs[s, r, :len(rule)] = rule
  return num_rules, length, rhs


_TABLES = tuple(_rule_tables(level) for level in range(DEPTH))


def _longest_yields() -> tuple[int, ...]:
  """The longest terminal string of any nonterminal of each level (a tight seq_len bound)."""
  longest = [1] * len(TERMINALS)
  per_level = [1] * (DEPTH + 1)
  for level in reversed(range(DEPTH)):
    longest = [max(sum(longest[c] for c in rule) for rule in rules) for rules in GRAMMAR[level]]
    per_level[level] = max(longest)
  return tuple(per_level)


_LONGEST = _longest_yields()


@dataclasses.dataclass(frozen=True)
class Derivation:
  """The derivation tree of one string, as its terminals and its nonterminal spans.

  Spans are listed top-down by level, left to right within a level; span k is nonterminal
  N{level[k]}.{symbol[k]} deriving `terminals[start[k]:end[k]]`.
  """

  size: int
  terminals: np.ndarray  # [n] int, indices into TERMINALS
  level: np.ndarray  # [S] int
  symbol: np.ndarray  # [S] int
  start: np.ndarray  # [S] int, first terminal
  end: np.ndarray  # [S] int, one past the last terminal


class LanoTask(base.Task):
  """Strings of a fixed cfg3b-style PCFG from a start symbol `size` levels above the terminals."""

  name = 'lano'
  feature_names = ('expansion', 'rules_opened', 'rules_closed', 'nesting_depth')

  @property
  def vocab(self) -> tuple[str, ...]:
    return ('<pad>', '<bos>', '<eos>', *TERMINALS)

  def valid_sizes(self) -> tuple[int, int]:
    return 1, DEPTH

  def seq_len(self, max_size: int) -> int:
    # Longest yields grow with the height, so the tallest allowed start level bounds all sizes.
    return _LONGEST[DEPTH - min(max(max_size, 1), DEPTH)] + 2

  def derive(self, rng: np.random.Generator, size: int) -> Derivation:
    """Samples a derivation of height `size`: uniform start symbol, then uniform rules.

    The tree is grown one level at a time over the whole frontier; spans are then found bottom-up,
    since a node's width is the sum of its children's and siblings tile their level in order.
    """
    lo, hi = self.valid_sizes()
    if not lo <= size <= hi:
      raise ValueError(f'lano size must be in {lo}..{hi}, got {size}')
    top = DEPTH - size
    frontier = rng.integers(len(GRAMMAR[top]), size=1)
    symbols, lengths = [], []
    for level in range(top, DEPTH):
      num_rules, rule_length, rhs = _TABLES[level]
      rule = rng.integers(0, num_rules[frontier])  # [nodes]
      length = rule_length[frontier, rule]  # [nodes]
      symbols.append(frontier)
      lengths.append(length)
      frontier = rhs[frontier, rule][np.arange(_MAX_RHS) < length[:, None]]  # [children]
    width = np.ones(len(frontier), np.int64)  # [n], terminals
    starts, widths = [], []
    for length in reversed(lengths):
      width = np.add.reduceat(width, np.cumsum(length) - length)  # [nodes] of this level
      starts.insert(0, np.cumsum(width) - width)
      widths.insert(0, width)
    start = np.concatenate(starts)
    return Derivation(
        size=size, terminals=frontier,
        level=np.repeat(np.arange(top, DEPTH), [len(s) for s in symbols]),
        symbol=np.concatenate(symbols), start=start, end=start + np.concatenate(widths))

  def sample(self, rng: np.random.Generator, size: int) -> base.Example:
    d = self.derive(rng, size)
    n = len(d.terminals)
    opened = np.bincount(d.start, minlength=n)  # [n]
    closed = np.bincount(d.end - 1, minlength=n)  # [n]
    # A span [s, e) contains both terminals i - 1 and i exactly for s < i < e.
    nesting = np.cumsum(np.bincount(d.start + 1, minlength=n + 1)
                        - np.bincount(d.end, minlength=n + 1))[:n]  # [n]

    def on_tokens(values: np.ndarray) -> np.ndarray:  # [n] -> [n + 2], 0 at <bos> and <eos>
      return np.pad(values, 1).astype(np.float32)

    tokens = np.concatenate([[_BOS], d.terminals + _FIRST_TERMINAL, [_EOS]]).astype(np.int32)
    targets = np.append(tokens[1:], base.PAD).astype(np.int32)
    loss_mask = np.arange(n + 2) < n + 1
    expansion = on_tokens(opened + closed)
    return base.Example(
        tokens=tokens, targets=targets, loss_mask=loss_mask, complexity=expansion,
        features=dict(expansion=expansion, rules_opened=on_tokens(opened),
                      rules_closed=on_tokens(closed), nesting_depth=on_tokens(nesting)))
