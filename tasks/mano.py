"""MANO: knowledge manipulation — the value of a modular arithmetic expression, in one step.

After Physics of Language Models part 4.1: a random expression tree with exactly L = size binary
operations (+, -, * modulo a prime, 23 by default) over leaves 0..p-1, written in prefix notation,
then '=' and the value as a single token:

    tokens   * + 3 5 - 7 2 = 17        (L = 3, p = 23: (3 + 5) * (7 - 2) = 40 = 17 mod 23)

No intermediate results are written, so the whole tree must be evaluated inside the forward pass
before the answer token: the complexity of every position is L. Only the position of '=' is scored.

Tree shapes: the operations below a node are split between its two subtrees uniformly at random,
recursively — the shape of a random binary search tree, so neither always balanced nor always a
chain (expected height O(log L), with a tail of deep trees).
"""

from __future__ import annotations

import numpy as np

from tasks import base

_EQUALS = 1
_OPS = ('+', '-', '*')
_FIRST_OP = 2
_FIRST_VALUE = _FIRST_OP + len(_OPS)


def _is_prime(n: int) -> bool:
  return n >= 2 and all(n % d for d in range(2, int(n**0.5) + 1))


class ManoTask(base.Task):
  """Prefix expression trees of exactly `size` operations over Z_p, answered with one token."""

  name = 'mano'
  # Per token: num_ops is L everywhere; node_depth is the token's depth in the tree (root = 1, so
  # 0 marks '=' and the answer); subtree_ops counts the operations in the subtree the token roots
  # (0 for leaves and for '=' and the answer); tree_height is the example's largest node_depth.
  feature_names = ('num_ops', 'node_depth', 'subtree_ops', 'tree_height')

  def __init__(self, modulus: int = 23, max_ops: int = 64):
    # A prime keeps * free of zero divisors, so answers stay spread over all residues.
    if not _is_prime(modulus):
      raise ValueError(f'mano modulus must be a prime, got {modulus}')
    if max_ops < 1:
      raise ValueError(f'mano max_ops must be >= 1, got {max_ops}')
    self.modulus = modulus
    self.max_ops = max_ops

  @property
  def vocab(self) -> tuple[str, ...]:
    return ('<pad>', '=', *_OPS, *(str(v) for v in range(self.modulus)))

  def valid_sizes(self) -> tuple[int, int]:
    return 1, self.max_ops

  def seq_len(self, max_size: int) -> int:
    # 2L + 1 prefix tokens (L operators, L + 1 leaves), '=', the answer: every example is exact.
    return 2 * max_size + 3

  def sample(self, rng: np.random.Generator, size: int) -> base.Example:
    n_ops = size
    prompt_len = 2 * n_ops + 1
    ops_L = rng.integers(0, len(_OPS), size=n_ops)  # by operator, in prefix order
    splits_L = rng.random(n_ops)  # fraction of an operator's sub-operations sent left
    leaves = rng.integers(0, self.modulus, size=n_ops + 1)  # by leaf, in prefix order

    tokens = np.empty(prompt_len + 2, np.int32)
    depth = np.zeros(prompt_len + 2, np.float32)
    subtree_ops = np.zeros(prompt_len + 2, np.float32)
    # Emit the tree in prefix order: pop a pending subtree (its operation count and depth); an
    # operator pushes its right subtree, then its left, so the left one is written next.
    pending = [(n_ops, 1)]
    op_i = leaf_i = 0
    for t in range(prompt_len):
      n, d = pending.pop()
      depth[t], subtree_ops[t] = d, n
      if n == 0:
        tokens[t] = _FIRST_VALUE + leaves[leaf_i]
        leaf_i += 1
      else:
        tokens[t] = _FIRST_OP + ops_L[op_i]
        left = int(splits_L[op_i] * n)  # uniform over 0..n-1
        op_i += 1
        pending += [(n - 1 - left, d + 1), (left, d + 1)]

    tokens[prompt_len] = _EQUALS
    tokens[prompt_len + 1] = _FIRST_VALUE + self._evaluate(tokens[:prompt_len])
    targets = np.append(tokens[1:], base.PAD).astype(np.int32)
    loss_mask = np.zeros(len(tokens), bool)
    loss_mask[prompt_len] = True  # the target of '=' is the answer
    full = lambda value: np.full(len(tokens), value, np.float32)
    return base.Example(
        tokens=tokens, targets=targets, loss_mask=loss_mask, complexity=full(n_ops),
        features=dict(num_ops=full(n_ops), node_depth=depth, subtree_ops=subtree_ops,
                      tree_height=full(depth.max())))

  def _evaluate(self, prefix: np.ndarray) -> int:
    """The value of a prefix expression (token ids), read right to left with a stack."""
    stack = []
    for token in prefix[::-1].tolist():
      if token >= _FIRST_VALUE:
        stack.append(token - _FIRST_VALUE)
        continue
      left, right = stack.pop(), stack.pop()
      op = _OPS[token - _FIRST_OP]
      value = left + right if op == '+' else left - right if op == '-' else left * right
      stack.append(value % self.modulus)
    (value,) = stack
    return value
