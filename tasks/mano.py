"""MANO: knowledge manipulation — the value of a modular arithmetic expression, in one step.

Physics of Language Models part 4.1's generator: `data-synthetic-pretrain/Mano/mano.py`, function
`encode_pure_arithmetic`, in github.com/facebookresearch/PhysicsLM4. One example is a random
expression tree of exactly L = `size` binary operations over Z_p in prefix notation, then its
value as a single token. As in the source:

- operations `ops`: +, - and * (its `ttype = 'asm'`); '/' (its 'd', multiplication by the modular
  inverse) is an option, and a tree that divides by 0 anywhere is redrawn whole, as there;
- `modulus` p = 23 (its `value_mod`), leaves uniform over 0..p-1;
- tree shapes: an operation with n operations below it sends l of them, uniform in 0..n-1, to its
  left subtree (`l1 = rng.randint(0, ll-1)`), recursively: the shape of a random binary search
  tree, neither always balanced nor always a chain (expected height O(log L), with a tail of deep
  trees);
- layout (`length_marker=True`, the default):

      <bos> L3 * + 3 5 - 7 2 L3= 17      (L = 3, p = 23: (3 + 5) * (7 - 2) = 40 = 17 mod 23)

  The source writes `qid * 10` after its BOS and `qid * 10 + 4` just before the answer, with the
  question id drawn together with the length (`qids = lens = 1..L`, one index uniform over them,
  as `Stream` draws sizes): both markers name L. The one
  before the answer sits at the position that predicts it, a static cue to the answer's difficulty
  that ANIRA-E can read from the shallow representation and ANIRA-O need not use;
- `knowledge_augment=True` (the source's default; its comment: "doesn't quite matter"): the BOS,
  each marker and each operator occurrence is one of two synonymous tokens, uniformly (source
  ids 9999/9998, qid*10 + 0/1, qid*10 + 4/5, '+' as 1/5, '-' 2/6, '*' 3/7, '/' 4/8). Here the
  second of each pair carries a prime: "<bos>'", "L3'", "L3='", "+'".

Token ids are dense (the source's 5000 + value and the like are a tokenizer's detail). The source
returns the bare tokens (its training code is not public); as the paper does (DESIGN §3), only
the answer is scored: the position before it, the marker (or '='), whose target is the value.

`length_marker=False` is this project's earlier layout, with no BOS and no marker naming L:
`* + 3 5 - 7 2 = 17` — with `knowledge_augment=False`, exactly the earlier tokens and streams. The
E/O contrast with and without the marker is itself a finding.

Held-out and longer sizes: a marker names its L, so with markers a size the training stream never
draws (held out inside the range, or beyond it) brings marker tokens whose embeddings were never
trained. The source evaluates only at a trained L (its comment: "we evaluate at exact len=L").

Annotations (tasks.base's convention: the value at position i describes the prediction of
targets[i] = tokens[i + 1]). Every position's complexity is L. Per position: `num_ops` = L and
`tree_height` (the largest node depth, root = 1) describe the example; `node_depth` and
`subtree_ops` describe the predicted token: its depth in the tree and the number of operations in
the subtree it roots (0 where the predicted token is no tree node, as the answer). Only the scored
position is annotated.
"""

from __future__ import annotations

import functools
import itertools

import numpy as np

from tasks import base

_OPS = '+-*/'


@functools.cache
def tree_shapes(n_ops: int) -> tuple[tuple[tuple[bool, ...], float], ...]:
  """Every tree of `n_ops` operations as its prefix pattern (True for an operator, False for a
  leaf) with its probability under `ManoTask.sample`'s rule: an operation with n operations
  below it sends l of them, uniform in 0..n-1, to its left."""
  if n_ops == 0:
    return (((False,), 1.0),)
  return tuple(((True, *left, *right), p_left * p_right / n_ops)
               for n_left in range(n_ops)
               for left, p_left in tree_shapes(n_left)
               for right, p_right in tree_shapes(n_ops - 1 - n_left))


def _is_prime(n: int) -> bool:
  return n >= 2 and all(n % d for d in range(2, int(n**0.5) + 1))


class ManoTask(base.Task):
  """Prefix expression trees of exactly `size` operations over Z_p, answered with one token."""

  name = 'mano'
  feature_names = ('num_ops', 'tree_height', 'node_depth', 'subtree_ops')
  alignment_features = ('tree_height', 'num_ops')

  def __init__(self, modulus: int = 23, max_ops: int = 64, ops: str = '+-*',
               length_marker: bool = True, knowledge_augment: bool = True):
    # A prime keeps * free of zero divisors (answers spread over all residues) and gives '/'.
    if not _is_prime(modulus):
      raise ValueError(f'mano modulus must be a prime, got {modulus}')
    if max_ops < 1:
      raise ValueError(f'mano max_ops must be >= 1, got {max_ops}')
    if not ops or len(set(ops)) != len(ops) or not set(ops) <= set(_OPS):
      raise ValueError(f'mano ops must be distinct characters of {_OPS!r}, got {ops!r}')
    self.modulus = modulus
    self.max_ops = max_ops
    self.ops = ops
    self.length_marker = length_marker
    self.knowledge_augment = knowledge_augment
    # Token ids: <pad>, then BOS or '=', operators, markers (L = 1..max_ops), values; every
    # BOS, operator and marker id is the first of `variants` synonyms.
    self._variants = 2 if knowledge_augment else 1
    self._first_op = 1 + (self._variants if length_marker else 1)
    self._first_marker = self._first_op + len(ops) * self._variants
    markers = 2 * self._variants * max_ops if length_marker else 0
    self._first_value = self._first_marker + markers

  @property
  def vocab(self) -> tuple[str, ...]:
    synonyms = self._synonyms
    if self.length_marker:
      head = synonyms('<bos>')
      markers = tuple(w for size in range(1, self.max_ops + 1)
                      for w in synonyms(f'L{size}') + synonyms(f'L{size}='))
    else:
      head, markers = ('=',), ()
    ops = tuple(w for op in self.ops for w in synonyms(op))
    return ('<pad>', *head, *ops, *markers, *(str(v) for v in range(self.modulus)))

  def _synonyms(self, word: str) -> tuple[str, ...]:
    return (word, f"{word}'")[:self._variants]

  def valid_sizes(self) -> tuple[int, int]:
    return 1, self.max_ops

  def seq_len(self, max_size: int) -> int:
    # 2L + 1 prefix tokens (L operators, L + 1 leaves), the answer and '=' or <bos> and two
    # markers: every example of size L has exactly this length.
    return 2 * max_size + (5 if self.length_marker else 3)

  def sample(self, rng: np.random.Generator, size: int) -> base.Example:
    n_ops = size
    prefix_len = 2 * n_ops + 1
    while True:  # redraw a tree that divides by 0 (only with '/')
      ops_L = rng.integers(0, len(self.ops), size=n_ops).tolist()  # by operator, prefix order
      splits_L = rng.random(n_ops).tolist()  # fraction of an operator's sub-operations sent left
      leaves = rng.integers(0, self.modulus, size=n_ops + 1).tolist()  # by leaf, prefix order
      # Without synonyms nothing is drawn, so the earlier layout's streams stay as they were.
      synonym = (rng.integers(0, 2, size=prefix_len + 3).tolist() if self.knowledge_augment
                 else [0] * (prefix_len + 3))

      # Emit the tree in prefix order: pop a pending subtree (its operation count and depth); an
      # operator pushes its right subtree, then its left, so the left one is written next.
      symbols, depth, subtree_ops = [], [], []  # symbol: operator index, or ~value for a leaf
      pending = [(n_ops, 1)]
      op_i = leaf_i = 0
      for _ in range(prefix_len):
        n, d = pending.pop()
        depth.append(d)
        subtree_ops.append(n)
        if n == 0:
          symbols.append(~leaves[leaf_i])
          leaf_i += 1
        else:
          symbols.append(ops_L[op_i])
          left = int(splits_L[op_i] * n)  # uniform over 0..n-1
          op_i += 1
          pending += [(n - 1 - left, d + 1), (left, d + 1)]
      value = self._evaluate(symbols)
      if value is not None:
        break

    prefix = [self._first_op + s * self._variants + synonym[i] if s >= 0
              else self._first_value + ~s for i, s in enumerate(symbols)]
    answer = self._first_value + value
    if self.length_marker:
      marker = self._first_marker + 2 * self._variants * (n_ops - 1)
      head = [1 + synonym[-3], marker + synonym[-2]]
      tokens = head + prefix + [marker + self._variants + synonym[-1], answer]
    else:
      head = []
      tokens = prefix + [1, answer]  # 1 is '='
    tokens = np.asarray(tokens, np.int32)
    length = len(tokens)
    targets = np.append(tokens[1:], base.PAD).astype(np.int32)
    loss_mask = np.zeros(length, bool)
    loss_mask[-2] = True  # the target of the marker (or '=') is the answer

    def predicted(per_prefix_token):
      """Values of the prefix tokens at the positions that predict them (0 elsewhere)."""
      per_token = np.zeros(length + 1, np.float32)
      per_token[len(head):len(head) + prefix_len] = per_prefix_token
      return per_token[1:]

    def full(value):
      return np.full(length, value, np.float32)

    return base.Example(
        tokens=tokens, targets=targets, loss_mask=loss_mask, complexity=full(n_ops),
        features=dict(num_ops=full(n_ops), tree_height=full(max(depth)),
                      node_depth=predicted(depth), subtree_ops=predicted(subtree_ops)))

  def order_blind_accuracy(self, size: int) -> float:
    """The best answer accuracy at L = `size` of a guess that knows which operators and which
    leaf values the expression holds, but not their order: what a model gets without parsing
    the tree. A trained model near this floor at some L has not learned that L's structure.

    Exact, by enumerating every tree shape (with the generator's probability), operator and leaf
    assignment (uniform), conditioned as the generator is on not dividing by 0: about
    p^(L+1) · |ops|^L · Catalan(L) evaluations (3.5 M at L = 4, p = 5, three operators).
    """
    joint: dict[tuple, np.ndarray] = {}  # (sorted ops, sorted leaves) -> P(key, answer)
    for pattern, shape_prob in tree_shapes(size):
      for ops_L in itertools.product(range(len(self.ops)), repeat=size):
        ops_key = tuple(sorted(ops_L))
        for leaves in itertools.product(range(self.modulus), repeat=size + 1):
          op_i, leaf_i = iter(ops_L), iter(leaves)
          value = self._evaluate([next(op_i) if is_op else ~next(leaf_i) for is_op in pattern])
          if value is not None:
            key = (ops_key, tuple(sorted(leaves)))
            if key not in joint:
              joint[key] = np.zeros(self.modulus)
            joint[key][value] += shape_prob
    return float(sum(p.max() for p in joint.values()) / sum(p.sum() for p in joint.values()))

  def _evaluate(self, symbols: list[int]) -> int | None:
    """The value of a prefix expression (operator indices, ~value for leaves), read right to
    left with a stack; None if it divides by 0."""
    p = self.modulus
    stack = []
    for s in reversed(symbols):
      if s < 0:
        stack.append(~s)
        continue
      left, right = stack.pop(), stack.pop()
      op = self.ops[s]
      if op == '+':
        value = left + right
      elif op == '-':
        value = left - right
      elif op == '*':
        value = left * right
      elif right == 0:
        return None
      else:
        value = left * pow(right, -1, p)
      stack.append(value % p)
    (value,) = stack
    return value
