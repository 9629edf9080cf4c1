"""Parity: the running parity of a binary string (the main job's task).

Three layouts, one class:
- `prefix` (default): tokens are n random bits; at every position the target is the parity of the
  bits so far. Size = n.
- `ponder`: the PonderNet layout (Banino et al. 2021): a vector of `ponder_length` entries of
  which `size` are set to +1 or -1 at random places, the rest 0; one target, at the last position,
  is the parity of the count of +1 entries. Train sizes 1..48 of 96 and test 49..96 reproduce
  PonderNet's extrapolation split.
- `vector`: the same vectors as `ponder`, in PonderNet's own input format: one position (a `<s>`
  token) that reads the whole vector as `Example.vectors`, so its embedding is a learned linear
  map of all `ponder_length` entries, as PonderNet's GRU step reads the whole vector at every
  step (`ParityPonderGRU`, `nn.GRUCell(n_elems, n_hidden)`, in labml's public implementation,
  `labml_nn/adaptive_computation/ponder_net`). Every decider then decides the depth of that one
  token. In `ponder` each entry is a token and the one target must gather the count through
  causal attention; `vector` is the setting PonderNet's claim is about.

A position's complexity is the number of informative entries so far — every bit in `prefix`,
the non-zero entries in `ponder` and `vector` — i.e. how many inputs the answer there must
combine. Features: `ones_so_far` (the count whose parity is the answer) and `position`.

`bos=True` starts every sequence with `<s>` (no target). Without it, a model with relative
positions (RoPE) or none cannot answer a leading run of ones: by induction over iterations every
token of the run sees only tokens with its own state, so causal attention returns the same
mixture at each of them and `1`, `11`, `111` get one answer — a ceiling near 0.96 of tokens on
lengths 1-16. The marker at a distance that differs per position breaks that symmetry."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from tasks import base

_ZERO, _ONE, _MINUS_ONE, _BOS = 1, 2, 3, 4
LAYOUTS = ('prefix', 'ponder', 'vector')


class ParityTask(base.Task):
  """Running parity of uniform random bits (prefix) or PonderNet's sparse ±1 parity (ponder: one
  entry per token; vector: the whole vector at one position)."""

  name = 'parity'
  feature_names = ('ones_so_far', 'position')

  def __init__(self, layout: str = 'prefix', ponder_length: int = 96, bos: bool = False):
    if layout not in LAYOUTS:
      raise ValueError(f'parity layout must be one of {LAYOUTS}, got {layout!r}')
    if bos and layout == 'vector':
      raise ValueError("bos=True has no meaning for layout='vector': its one position is already "
                       "a '<s>' token; drop bos")
    self.layout = layout
    self.ponder_length = ponder_length
    self.bos = bos

  @property
  def vocab(self) -> tuple[str, ...]:
    with_start = self.bos or self.layout == 'vector'
    return ('<pad>', '0', '1', '-1') + (('<s>',) if with_start else ())

  @property
  def vector_size(self) -> int:
    return self.ponder_length if self.layout == 'vector' else 0

  def valid_sizes(self) -> tuple[int, int]:
    return (1, 10**6) if self.layout == 'prefix' else (1, self.ponder_length)

  def seq_len(self, max_size: int) -> int:
    length = {'prefix': max_size, 'ponder': self.ponder_length, 'vector': 1}[self.layout]
    return length + self.bos

  def sample(self, rng: np.random.Generator, size: int) -> base.Example:
    if self.layout == 'prefix':
      fields = self._prefix_fields(rng.integers(0, 2, size=(1, size)))
    else:
      fields = self._sparse_fields(self._sparse_signs(rng, size)[None])
    row = {name: value[0] for name, value in fields.items()}
    return base.Example(
        tokens=row['tokens'], targets=row['targets'], loss_mask=row['loss_mask'],
        complexity=row['complexity'], features={name: row[name] for name in self.feature_names},
        vectors=row.get('vectors'))

  def sample_batch(self, rng: np.random.Generator, sizes: np.ndarray, seq_len: int,
                   annotate_sizes: Sequence[int] | None = None) -> dict[str, np.ndarray]:
    """The PonderNet layouts draw the whole batch at once (`Task.sample_batch`); `prefix`, whose
    examples differ in length, one example at a time. Parity has no analysis-only annotations
    (`Task.annotate` is the identity), so `annotate_sizes` changes nothing."""
    if self.layout == 'prefix':
      return super().sample_batch(rng, sizes, seq_len, annotate_sizes)
    fields = self._sparse_fields(self._sparse_signs_batch(rng, np.asarray(sizes)))
    length = fields['tokens'].shape[1]
    if length > seq_len:
      raise ValueError(f'example of length {length} does not fit seq_len={seq_len}')
    pad = lambda x: np.pad(x, [(0, 0), (0, seq_len - length)] + [(0, 0)] * (x.ndim - 2))
    batch = {name: pad(fields[name]) for name in ('tokens', 'targets', 'loss_mask', 'complexity')}
    batch.update(annotated=batch['loss_mask'].copy(), size=np.asarray(sizes, np.int32),
                 features={name: pad(fields[name]) for name in self.feature_names})
    if 'vectors' in fields:
      batch['vectors'] = pad(fields['vectors'])
    return batch

  def _sparse_signs(self, rng: np.random.Generator, size: int) -> np.ndarray:
    """PonderNet's input: `ponder_length` entries, `size` of them ±1 at random places, else 0."""
    values = np.zeros(self.ponder_length, np.int64)
    places = rng.choice(self.ponder_length, size=size, replace=False)
    values[places] = rng.choice([-1, 1], size=size)
    return values

  def _sparse_signs_batch(self, rng: np.random.Generator, sizes: np.ndarray) -> np.ndarray:
    """`_sparse_signs` for every size in `sizes` [B] at once: [B, ponder_length]. The entries
    ranked below `size` by i.i.d. uniform keys are a uniform random set of `size` places, as
    `rng.choice(..., replace=False)` draws one; their signs are fair coins."""
    keys = rng.random((len(sizes), self.ponder_length))
    rank = np.argsort(np.argsort(keys, axis=1), axis=1)
    signs = 2 * rng.integers(0, 2, size=keys.shape) - 1
    return np.where(rank < sizes[:, None], signs, 0)

  def _prefix_fields(self, bits: np.ndarray) -> dict[str, np.ndarray]:
    """The prefix layout's arrays, each [B, n] (behind `<s>` with `bos`), from `bits` [B, n]."""
    ones = np.cumsum(bits, axis=1)
    position = np.tile(np.arange(1, bits.shape[1] + 1, dtype=np.float32), (len(bits), 1))
    fields = dict(
        tokens=np.where(bits == 1, _ONE, _ZERO).astype(np.int32),
        targets=np.where(ones % 2 == 1, _ONE, _ZERO).astype(np.int32),
        loss_mask=np.ones(bits.shape, bool), complexity=position.copy(),
        ones_so_far=ones.astype(np.float32), position=position)
    return _after_bos(fields) if self.bos else fields

  def _sparse_fields(self, values: np.ndarray) -> dict[str, np.ndarray]:
    """The PonderNet layouts' arrays, each [B, T, ...] (behind `<s>` with `bos`), from vectors
    `values` [B, ponder_length]: tokens, targets, loss_mask, complexity, the features, and in the
    vector layout `vectors`."""
    batch_size = len(values)
    if self.layout == 'vector':
      ones = np.sum(values == 1, axis=1, keepdims=True)  # [B, 1]
      return dict(
          tokens=np.full((batch_size, 1), _BOS, np.int32),
          targets=np.where(ones % 2 == 1, _ONE, _ZERO).astype(np.int32),
          loss_mask=np.ones((batch_size, 1), bool),
          complexity=np.sum(values != 0, axis=1, keepdims=True).astype(np.float32),
          ones_so_far=ones.astype(np.float32), position=np.ones((batch_size, 1), np.float32),
          vectors=values[:, None, :].astype(np.float32))
    ones = np.cumsum(values == 1, axis=1)  # [B, L]
    loss_mask = np.zeros(values.shape, bool)
    loss_mask[:, -1] = True
    fields = dict(
        tokens=np.select([values == 1, values == -1], [_ONE, _MINUS_ONE], _ZERO).astype(np.int32),
        targets=np.where(ones % 2 == 1, _ONE, _ZERO).astype(np.int32), loss_mask=loss_mask,
        complexity=np.cumsum(values != 0, axis=1).astype(np.float32),
        ones_so_far=ones.astype(np.float32),
        position=np.tile(np.arange(1, values.shape[1] + 1, dtype=np.float32), (batch_size, 1)))
    return _after_bos(fields) if self.bos else fields


def _after_bos(fields: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
  """`fields` (each [B, T]) behind a `<s>` token that has no target, complexity 0, features 0."""
  ahead = lambda x, value: np.concatenate([np.full((len(x), 1), value, x.dtype), x], axis=1)
  return {name: ahead(x, _BOS if name == 'tokens' else 0) for name, x in fields.items()}
