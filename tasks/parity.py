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
      bits = rng.integers(0, 2, size=size)
      ones = np.cumsum(bits)
      tokens = np.where(bits == 1, _ONE, _ZERO)
      targets = np.where(ones % 2 == 1, _ONE, _ZERO)
      loss_mask = np.ones(size, bool)
      informative = np.arange(1, size + 1)
    elif self.layout == 'vector':
      values = self._sparse_signs(rng, size)
      ones = np.sum(values == 1, keepdims=True)
      return base.Example(
          tokens=np.asarray([_BOS], np.int32),
          targets=np.where(ones % 2 == 1, _ONE, _ZERO).astype(np.int32),
          loss_mask=np.ones(1, bool), complexity=np.asarray([size], np.float32),
          features=dict(ones_so_far=ones.astype(np.float32), position=np.ones(1, np.float32)),
          vectors=values[None].astype(np.float32))
    else:
      values = self._sparse_signs(rng, size)
      ones = np.cumsum(values == 1)
      tokens = np.select([values == 1, values == -1], [_ONE, _MINUS_ONE], _ZERO)
      targets = np.where(ones % 2 == 1, _ONE, _ZERO)
      loss_mask = np.zeros(self.ponder_length, bool)
      loss_mask[-1] = True
      informative = np.cumsum(values != 0)
    position = np.arange(1, len(tokens) + 1)
    example = base.Example(
        tokens=tokens.astype(np.int32), targets=targets.astype(np.int32), loss_mask=loss_mask,
        complexity=informative.astype(np.float32),
        features=dict(ones_so_far=ones.astype(np.float32), position=position.astype(np.float32)))
    return _after_bos(example) if self.bos else example

  def _sparse_signs(self, rng: np.random.Generator, size: int) -> np.ndarray:
    """PonderNet's input: `ponder_length` entries, `size` of them ±1 at random places, else 0."""
    values = np.zeros(self.ponder_length, np.int64)
    places = rng.choice(self.ponder_length, size=size, replace=False)
    values[places] = rng.choice([-1, 1], size=size)
    return values


def _after_bos(ex: base.Example) -> base.Example:
  """`ex` behind a `<s>` token that has no target, complexity 0 and features 0."""
  ahead = lambda x, value: np.concatenate([np.asarray([value], x.dtype), x])
  return base.Example(
      tokens=ahead(ex.tokens, _BOS), targets=ahead(ex.targets, 0),
      loss_mask=ahead(ex.loss_mask, False), complexity=ahead(ex.complexity, 0),
      features={name: ahead(v, 0) for name, v in ex.features.items()})
