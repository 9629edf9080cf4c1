"""Generalization: accuracy and depth per size, by where the size lies relative to training.

Sizes are sorted into categories against the training sizes: `train` (trained on), `held_out`
(inside the training range but never trained on), `beyond` (above it) and `below`. The same
table at a raised depth T shows whether more iterations help sizes the model never saw.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from anira_jax.inspect import Trace

CATEGORIES = ('train', 'held_out', 'beyond', 'below')


def size_category(size: int, train_sizes: Sequence[int]) -> str:
  if size in train_sizes:
    return 'train'
  if size < min(train_sizes):
    return 'below'
  return 'held_out' if size <= max(train_sizes) else 'beyond'


def _summary(correct: np.ndarray, depth: np.ndarray, expected: np.ndarray,
             seq_ok: np.ndarray) -> dict:
  n = len(correct)
  return {'examples': int(len(seq_ok)), 'answer_tokens': int(n),
          'token_accuracy': float(correct.mean()) if n else None,
          'sequence_accuracy': float(seq_ok.mean()) if len(seq_ok) else None,
          'mean_depth': float(depth.mean()) if n else None,
          'mean_expected_depth': float(expected.mean()) if n else None}


def per_size(trace: Trace, train_sizes: Sequence[int], mask: np.ndarray | None = None) -> dict:
  """Accuracy and depth over the answer tokens of every size and every category.

  Returns {'per_size': {size: {'category', 'examples', 'answer_tokens', 'token_accuracy',
  'sequence_accuracy', 'mean_depth', 'mean_expected_depth'}}, 'per_category': {category: the
  same without 'category'}}. Sequences without an answer token in `mask` are not counted.
  """
  if trace.size is None or trace.correct is None:
    raise ValueError('per_size needs a trace of a batch (sizes and targets)')
  mask = trace.answer_mask if mask is None else mask
  has_answer_B = mask.any(-1)
  seq_ok_B = has_answer_B & ~(mask & ~trace.correct).any(-1)
  size_BxL = np.broadcast_to(trace.size[:, None], mask.shape)
  category_B = np.array([size_category(int(s), train_sizes) for s in trace.size])
  category_BxL = np.broadcast_to(category_B[:, None], mask.shape)

  def summarize(tokens_BxL, seqs_B):
    m = mask & tokens_BxL
    return _summary(trace.correct[m], trace.depth[m], trace.expected_depth[m],
                    seq_ok_B[seqs_B & has_answer_B])

  sizes = {}
  for s in sorted(set(int(x) for x in trace.size[has_answer_B])):
    sizes[s] = {'category': size_category(s, train_sizes),
                **summarize(size_BxL == s, trace.size == s)}
  categories = {c: summarize(category_BxL == c, category_B == c)
                for c in CATEGORIES if (category_B[has_answer_B] == c).any()}
  return {'per_size': sizes, 'per_category': categories}


def generalization(traces_by_depth: Mapping[int, Trace], train_sizes: Sequence[int],
                   trained_depth: int) -> dict:
  """`per_size` at every max depth traced (the trained D and any raised ones).

  Returns {'train_sizes', 'trained_max_depth', 'by_max_depth': {T: per_size(...)}}.
  """
  return {'train_sizes': [int(s) for s in train_sizes], 'trained_max_depth': int(trained_depth),
          'by_max_depth': {int(d): per_size(t, train_sizes)
                           for d, t in sorted(traces_by_depth.items())}}
