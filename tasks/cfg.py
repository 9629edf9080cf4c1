"""Levelled PCFGs: Physics of Language Models' cfg3b, a sampler, and an exact parser.

A levelled grammar puts its nonterminals in levels 0..depth-1; a rule of a level-l nonterminal
rewrites it to one or more symbols of level l + 1, and level `depth` holds the terminals. Every
derivation therefore has all its terminals at the same depth, a nonterminal's yield has a bounded
length, and each rule of a nonterminal is equally likely.

`CFG3B` is the grammar cfg3b of Allen-Zhu & Li, *Physics of Language Models: Part 1, Learning
Hierarchical Language Structures* (arXiv 2305.13673), as published with the authors' generator in
github.com/facebookresearch/PhysicsLM4, file data-synthetic-pretrain/Lano-cfg/configs/cfg3b.json
(commit 75806965): a root, five levels of three nonterminals, terminals 1, 2, 3, exactly two
rules per nonterminal, rule lengths 2-3. The generator there (data_cfg.py, `CFG_Node.generate`)
picks each rule of a nonterminal uniformly, as `Grammar.derive` does. Strings from the root are
138..432 terminals long.

`Grammar.parse` reads one string exactly, in float64 (a root string's probability is 2^-100 to
2^-250 or so, far from underflow):
- the posterior, over every parse of the whole string, of the spans its nonterminals cover
  (inside-outside), summed into the expected number of rules opened and closed at each terminal;
- the Bayes-optimal next-token distribution after every prefix (prefix probabilities: the
  probability that a derivation's yield starts with the prefix and a given symbol starts right
  after it, computed top-down level by level as in the authors' data_cfg.py).
Both marginalise over the start symbol, drawn from a given distribution over levels (uniform
within a level). Charts are banded: the yields of a level's symbols span a fixed range of
lengths, so a chart stores, for each start position, only the widths in that range; and few
spans of a string are derivable at all, so each rule's products run over nonzero entries only,
in a few vectorised numpy operations.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Mapping

import numpy as np

Rules = tuple[tuple[tuple[tuple[int, ...], ...], ...], ...]


@dataclasses.dataclass(frozen=True)
class Derivation:
  """The derivation tree of one string, as its terminals and its nonterminal spans.

  Spans are listed top-down by level, left to right within a level; span k is the nonterminal
  `symbol[k]` of level `level[k]`, deriving `terminals[start[k]:end[k]]`.
  """

  top: int  # the start symbol's level
  terminals: np.ndarray  # [n] int, terminal indices
  level: np.ndarray  # [S] int
  symbol: np.ndarray  # [S] int
  start: np.ndarray  # [S] int, first terminal
  end: np.ndarray  # [S] int, one past the last terminal


@dataclasses.dataclass(frozen=True)
class Parse:
  """What an exact reader of one string of n terminals knows about it.

  `next_token[k]` is the distribution of what follows the first k terminals: the terminals by
  index, then the end of the string (last column). `opened[i]` and `closed[i]` are the expected
  numbers of nonterminal spans whose first (last) terminal is i, over the parses of the whole
  string. `prob` is the string's probability.
  """

  next_token: np.ndarray  # [n + 1, num_terminals + 1]
  opened: np.ndarray  # [n]
  closed: np.ndarray  # [n]
  prob: float


@dataclasses.dataclass(frozen=True)
class Grammar:
  """A levelled PCFG; `rules[level][symbol]` lists that nonterminal's rules, each a tuple of
  symbols of level + 1 by index (terminal indices for the last level)."""

  terminals: tuple[str, ...]
  rules: Rules

  @property
  def depth(self) -> int:
    """The terminals' level."""
    return len(self.rules)

  def num_symbols(self, level: int) -> int:
    return len(self.terminals) if level == self.depth else len(self.rules[level])

  @functools.cached_property
  def yield_bounds(self) -> tuple[tuple[np.ndarray, np.ndarray], ...]:
    """(shortest, longest) yield of each symbol [num_symbols], for each level 0..depth."""
    ones = np.ones(len(self.terminals), np.int64)
    bounds = [(ones, ones)]
    for level_rules in reversed(self.rules):
      short, long = bounds[0]
      bounds.insert(0, tuple(np.array([bound(ends[list(r)].sum() for r in rules)
                                       for rules in level_rules])
                             for bound, ends in ((min, short), (max, long))))
    return tuple(bounds)

  @functools.cached_property
  def shortest(self) -> tuple[int, ...]:
    """The shortest string of any symbol of each level 0..depth: where the level's charts start."""
    return tuple(int(short.min()) for short, _ in self.yield_bounds)

  def lengths(self, level: int) -> tuple[int, int]:
    """The shortest and longest string of any symbol of `level`."""
    short, long = self.yield_bounds[level]
    return int(short.min()), int(long.max())

  @functools.cached_property
  def _tables(self) -> tuple[tuple[np.ndarray, np.ndarray, np.ndarray], ...]:
    """Per level, padded rule arrays so a whole frontier expands in a few numpy ops: rule counts
    [N], rule lengths [N, R] and right-hand sides [N, R, K] (padding -1)."""
    tables = []
    for level_rules in self.rules:
      max_rules = max(map(len, level_rules))
      max_length = max(len(r) for rules in level_rules for r in rules)
      length = np.zeros((len(level_rules), max_rules), np.int64)
      rhs = np.full((len(level_rules), max_rules, max_length), -1, np.int64)
      for s, rules in enumerate(level_rules):
        for r, rule in enumerate(rules):
          length[s, r] = len(rule)
          rhs[s, r, :len(rule)] = rule
      tables.append((np.array([len(r) for r in level_rules]), length, rhs))
    return tuple(tables)

  def derive(self, rng: np.random.Generator, top: int) -> Derivation:
    """Samples a derivation from a start symbol drawn uniformly from level `top`, then uniform
    rules.

    The tree is grown one level at a time over the whole frontier; spans are then found bottom-up,
    since a node's width is the sum of its children's and siblings tile their level in order.
    """
    frontier = rng.integers(self.num_symbols(top), size=1)
    symbols, lengths = [], []
    for level in range(top, self.depth):
      num_rules, rule_length, rhs = self._tables[level]
      rule = rng.integers(0, num_rules[frontier])  # [nodes]
      length = rule_length[frontier, rule]  # [nodes]
      symbols.append(frontier)
      lengths.append(length)
      frontier = rhs[frontier, rule][np.arange(rhs.shape[-1]) < length[:, None]]  # [children]
    width = np.ones(len(frontier), np.int64)  # [n], terminals
    starts, widths = [], []
    for length in reversed(lengths):
      width = np.add.reduceat(width, np.cumsum(length) - length)  # [nodes] of this level
      starts.insert(0, np.cumsum(width) - width)
      widths.insert(0, width)
    start = np.concatenate(starts)
    return Derivation(
        top=top, terminals=frontier,
        level=np.repeat(np.arange(top, self.depth), [len(s) for s in symbols]),
        symbol=np.concatenate(symbols), start=start, end=start + np.concatenate(widths))

  def parse(self, terminals: np.ndarray, start: Mapping[int, float]) -> Parse:
    """Reads `terminals` (indices) exactly; `start` maps a level to the probability that the start
    symbol is drawn (uniformly) from it. Raises ValueError if the string has probability 0."""
    terminals = np.asarray(terminals)
    n = len(terminals)
    prior = {level: p / self.num_symbols(level) for level, p in start.items() if p > 0}
    inside, chains = _inside(self, terminals, min(prior))
    ends = np.zeros(n + 1)  # ends[k]: P(the string is exactly the first k terminals)
    for level, p in prior.items():
      _add_band(ends[None], 0, p * inside[level][:, 0].sum(0, keepdims=True), self.shortest[level])
    if ends[n] == 0:
      raise ValueError('the string has probability 0 under this start distribution')
    opened, closed = _span_posterior(self, inside, chains, prior, ends[n])
    next_token = np.concatenate([_prefix(self, chains, prior, n).T, ends[:, None]], 1)
    return Parse(next_token=next_token / next_token.sum(1, keepdims=True), opened=opened,
                 closed=closed, prob=float(ends[n]))


def _inside(grammar: Grammar, terminals: np.ndarray, top: int) -> tuple[dict, dict]:
  """Inside probabilities, bottom-up from the terminals to level `top`.

  Returns `inside[l][X, i, a]`, the probability that the level-l symbol X derives the span
  [i, i + lo_l + a) (lo_l: the level's shortest yield; rows: every start 0..n, or only 0 at the
  top level), and `chains[l, X, r][j]`, the same for the first j + 1 children of X's rule r.
  """
  n, depth = len(terminals), grammar.depth
  lo = grammar.shortest
  one_hot = terminals == np.arange(len(grammar.terminals))[:, None]  # [terminals, n]
  inside = {depth: np.pad(one_hot, ((0, 0), (0, 1)))[:, :, None].astype(float)}  # none at n
  chains = {}
  for level in reversed(range(top, depth)):
    rows = 1 if level == top else n + 1  # symbols of the top level start at 0 only
    short, long = grammar.lengths(level)
    chart = np.zeros((grammar.num_symbols(level), rows, long - short + 1))
    for x, rules in enumerate(grammar.rules[level]):
      for r, rule in enumerate(rules):
        chain = [inside[level + 1][rule[0], :rows]]
        for j, child in enumerate(rule[1:], 1):
          chain.append(_concat(chain[-1], j * lo[level + 1], inside[level + 1][child]))
        chains[level, x, r] = chain
        _add_band(chart[x], short, chain[-1], len(rule) * lo[level + 1], 1 / len(rules))
    inside[level] = chart
  return inside, chains


def _span_posterior(grammar: Grammar, inside: dict, chains: dict, prior: dict,
                    total: float) -> tuple[np.ndarray, np.ndarray]:
  """Outside probabilities, top-down, normalised by the string's probability `total` so that
  inside * outside is a span's posterior; returns the expected numbers of spans opened and
  closed at each terminal."""
  depth, top, n = grammar.depth, min(inside), inside[grammar.depth].shape[1] - 1
  lo = grammar.shortest
  outside = {level: np.zeros_like(inside[level]) for level in range(top, depth)}
  for level, p in prior.items():
    _add_band(outside[level][:, 0, None, :], lo[level], np.full((1, 1), p / total), n)
  opened, closed = np.zeros(n + 1), np.zeros(n + 1)
  for level in range(top, depth):
    posterior = (inside[level] * outside[level]).sum(0)  # [rows, widths]
    opened[:len(posterior)] += posterior.sum(1)
    last = np.arange(len(posterior))[:, None] + np.arange(posterior.shape[1]) + lo[level] - 1
    closed += _scatter_add(last, posterior, n + 1)[:n + 1]
    if level + 1 == depth:
      break
    for x, rules in enumerate(grammar.rules[level]):
      for r, rule in enumerate(rules):
        chain = chains[level, x, r]
        grad = np.zeros_like(chain[-1])
        _add_band(grad, len(rule) * lo[level + 1], outside[level][x], lo[level], 1 / len(rules))
        for j in reversed(range(1, len(rule))):
          grad, child_grad = _concat_adjoint(grad, chain[j - 1], j * lo[level + 1],
                                             inside[level + 1][rule[j]])
          outside[level + 1][rule[j]] += child_grad
        outside[level + 1][rule[0], :len(grad)] += grad
  return opened[:n], closed[:n]


def _prefix(grammar: Grammar, chains: dict, prior: dict, n: int) -> np.ndarray:
  """Prefix probabilities, top-down: `prefix[l][X, k]` is the probability that the string starts
  with its first k terminals and a level-l node X starts right after them. A child starts where
  its parent does, after the yields of its left siblings. Returns the terminals' [terminals,
  n + 1]: P(the string starts with its first k terminals, then terminal t)."""
  depth, top = grammar.depth, min(prior)
  lo = grammar.shortest
  prefix = {level: np.zeros((grammar.num_symbols(level), n + 1)) for level in range(top, depth + 1)}
  for level, p in prior.items():
    prefix[level][:, 0] += p
  for level in range(top, depth):
    for x, rules in enumerate(grammar.rules[level]):
      for r, rule in enumerate(rules):
        chain = chains[level, x, r]
        left = prefix[level][x, None, :len(chain[0])]  # [1, k]: the first k terminals, then x
        prefix[level + 1][rule[0]] += prefix[level][x] / len(rules)
        for j, child in enumerate(rule[1:], 1):
          _add_band(prefix[level + 1][child, None], 0, _concat(left, 0, chain[j - 1]),
                    j * lo[level + 1], 1 / len(rules))
  return prefix[depth]


def _concat(x: np.ndarray, x_lo: int, y: np.ndarray) -> np.ndarray:
  """Inside probabilities of a symbol sequence followed by one more symbol.

  `x[i, a]` is the probability that the sequence derives the span [i, i + x_lo + a); `y[j, b]`
  that the symbol derives [j, j + y_lo + b), for every start j (rows n + 1, zero at n). Returns
  `z[i, c] = sum over a + b = c of x[i, a] * y[i + x_lo + a, b]`, the sequence then the symbol
  deriving [i, i + x_lo + y_lo + c); z has x's rows. Few spans of a string are derivable at all,
  so the sum runs over the nonzero entries of x only.
  """
  (rows, wx), wy = x.shape, y.shape[1]
  i, a = np.nonzero(x)
  columns = a[:, None] + np.arange(wy)  # [pairs, wy]: c = a + b
  z = _scatter_add(i[:, None] * (wx + wy - 1) + columns, x[i, a, None] * y[i + x_lo + a],
                   rows * (wx + wy - 1))
  return z.reshape(rows, wx + wy - 1)


def _concat_adjoint(grad_z: np.ndarray, x: np.ndarray, x_lo: int,
                    y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """The outside probabilities of x and y given those of `z = _concat(x, x_lo, y)`: the
  derivatives of sum(grad_z * z), for x only where x is nonzero (elsewhere an outside value
  multiplies a zero inside value, so no posterior depends on it)."""
  wy = y.shape[1]
  i, a = np.nonzero(x)
  j = i + x_lo + a  # where y starts
  window = grad_z[i[:, None], a[:, None] + np.arange(wy)]  # [pairs, wy]: grad_z[i, a + b]
  grad_x = np.zeros_like(x)
  grad_x[i, a] = (window * y[j]).sum(1)
  grad_y = _scatter_add(j[:, None] * wy + np.arange(wy), window * x[i, a, None], y.size)
  return grad_x, grad_y.reshape(y.shape)


def _scatter_add(index: np.ndarray, values: np.ndarray, size: int) -> np.ndarray:
  """A float array of `size` zeros with each of `values` added at its flat `index`."""
  # bincount is the fast scatter-add, but returns ints when there is nothing to add.
  return np.bincount(index.ravel(), values.ravel(), minlength=size).astype(float, copy=False)


def _add_band(dst: np.ndarray, dst_lo: int, src: np.ndarray, src_lo: int, scale: float = 1.0):
  """Adds `scale * src` into `dst` where their width ranges overlap; column a of an array whose
  band starts at `lo` holds width lo + a. Rows must match."""
  lo = max(dst_lo, src_lo)
  hi = min(dst_lo + dst.shape[-1], src_lo + src.shape[-1])
  if lo < hi:
    dst[..., lo - dst_lo:hi - dst_lo] += scale * src[..., lo - src_lo:hi - src_lo]


# cfg3b (configs/cfg3b.json, see the module docstring): the rules in the file's order, each listing
# next-level symbols by index, beside the paper's names (22 the root; levels 19-21, 16-18, 13-15,
# 10-12, 7-9; terminals 1-3).
CFG3B = Grammar(terminals=('1', '2', '3'), rules=(
    (((2, 1), (1, 0)),),  # 22 -> 21 20 | 20 19
    (((0, 1, 2), (1, 2, 0)),  # 19 -> 16 17 18 | 17 18 16
     ((1, 0, 2), (0, 1)),  # 20 -> 17 16 18 | 16 17
     ((2, 0), (0, 2, 1))),  # 21 -> 18 16 | 16 18 17
    (((2, 0), (0, 2, 1)),  # 16 -> 15 13 | 13 15 14
     ((1, 0, 2), (2, 0, 1)),  # 17 -> 14 13 15 | 15 13 14
     ((2, 1, 0), (1, 0))),  # 18 -> 15 14 13 | 14 13
    (((1, 2), (2, 1)),  # 13 -> 11 12 | 12 11
     ((1, 0, 2), (0, 1, 2)),  # 14 -> 11 10 12 | 10 11 12
     ((2, 1, 0), (1, 2, 0))),  # 15 -> 12 11 10 | 11 12 10
    (((0, 2, 1), (2, 1, 0)),  # 10 -> 7 9 8 | 9 8 7
     ((1, 0, 2), (0, 1, 2)),  # 11 -> 8 7 9 | 7 8 9
     ((1, 2, 0), (2, 0, 1))),  # 12 -> 8 9 7 | 9 7 8
    (((2, 0), (0, 1, 2)),  # 7 -> 3 1 | 1 2 3
     ((2, 1), (2, 0, 1)),  # 8 -> 3 2 | 3 1 2
     ((2, 1, 0), (1, 0))),  # 9 -> 3 2 1 | 2 1
))
