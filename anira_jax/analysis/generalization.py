"""Generalization: accuracy and depth per size, by where the size lies relative to training.

Sizes are sorted into categories against the training sizes: `train` (trained on), `held_out`
(inside the training range but never trained on), `beyond` (above it) and `below`. The same
table at a raised depth T shows whether more iterations help sizes the model never saw.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from anira_jax import trace as trace_lib
from anira_jax.trace import Trace

CATEGORIES = ('train', 'held_out', 'beyond', 'below')


def size_category(size: int, train_sizes: Sequence[int]) -> str:
  if size in train_sizes:
    return 'train'
  if size < min(train_sizes):
    return 'below'
  return 'held_out' if size <= max(train_sizes) else 'beyond'


def per_size(trace: Trace, train_sizes: Sequence[int]) -> dict:
  """Accuracy and depth over the answer tokens of every size and every category.

  Returns {'per_size': {size: {'category', and `trace.PER_SIZE_FIELDS`}}, 'per_category':
  {category: the same without 'category'}}. Sequences without an answer token are not counted.
  """
  if trace.size is None or trace.correct is None:
    raise ValueError('per_size needs a trace of a batch (sizes and targets)')
  sizes = {s: {'category': size_category(s, train_sizes), **entry}
           for s, entry in trace_lib.per_size(trace).items()}
  has_answer_B = trace.answer_mask.any(-1)
  category_B = np.array([size_category(int(s), train_sizes) for s in trace.size])
  categories = {}
  for c in CATEGORIES:
    if (category_B[has_answer_B] == c).any():
      entry = trace_lib.summary(trace, category_B == c)
      categories[c] = {k: entry[k] for k in trace_lib.PER_SIZE_FIELDS}
  return {'per_size': sizes, 'per_category': categories}


def generalization(traces_by_depth: Mapping[int, Trace], train_sizes: Sequence[int],
                   trained_depth: int) -> dict:
  """`per_size` at every max depth traced (the trained D and any raised ones).

  Returns {'train_sizes', 'trained_max_depth', 'by_max_depth': {T: per_size(...)}}.
  """
  return {'train_sizes': [int(s) for s in train_sizes], 'trained_max_depth': int(trained_depth),
          'by_max_depth': {int(d): per_size(t, train_sizes)
                           for d, t in sorted(traces_by_depth.items())}}
