"""CLRS: the CLRS-Text benchmark's algorithm problems, input -> output, with the traces removed.

Each example is one CLRS-Text question and answer, as google-deepmind/clrs writes them
(`clrs/_src/clrs_text/clrs_utils.py`: `format_clrs_example(algo, sample, use_hints=False)`), for
an algorithm drawn uniformly from the task's set, on an input of `size` drawn as CLRS's sampler
for it draws one (tasks/clrs_samplers.py, tasks/clrs_algorithms.py):

    insertion_sort:
    key: [0.548 0.715 0.602 0.544 0.423]
    pred:
    [0.423 0.544 0.548 0.602 0.715]
    (a blank line)

Tokens: the text cut into its numbers and the pieces between them, each number one token:

    'insertion_sort:\\n' 'key: ' '[' '0.548' '0.715' '0.602' '0.544' '0.423' ']' '\\npred:\\n'
    '[' '0.423' '0.544' '0.548' '0.602' '0.715' ']' '<eos>'

The space between two numbers is implied and `<eos>` stands for the answer's closing blank line,
so the tokens spell exactly the text again (`ClrsTask.text`; `tokenize` checks it). The pieces:
'[', ']', '[[', '], [', ']]', ', ', each algorithm's first line, each output header and each
input field's name (67 in all). The numbers: every float CLRS-Text prints (`DECIMALS` decimals,
|x| < 2: 4000) and the integers -1..max_size; 4071 + max_size tokens with <pad> and <eos>. One
token per number keeps sequences short: a list of n keys costs n + 2 tokens, a graph's
adjacency matrix n^2 + n + 1 (about 6 n^2 as characters).

Scored positions (`loss_mask`): those whose target is an answer token, `<eos>` included. The size
(CLRS's `length`: list length, node count, both strings' total) is every position's complexity;
features: the algorithm's index in `NAMES` and the size. Sizes run from 2, 3 with a string
matcher, 4 with strongly_connected_components (the smallest CLRS samples them at), to max_size.

The default set is the 23 algorithms whose answer grows linearly with the size: it leaves out
the six whose answer is a size x size matrix (`QUADRATIC_ANSWERS`) and segments_intersect, whose
input is four points whatever the size.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np

from tasks import base
from tasks.clrs_algorithms import ALGORITHMS
from tasks.clrs_samplers import DECIMALS

NAMES = tuple(sorted(ALGORITHMS))  # `algorithm_id` indexes this
QUADRATIC_ANSWERS = ('bridges', 'floyd_warshall', 'lcs_length', 'matrix_chain_order',
                     'mst_kruskal', 'optimal_bst')
DEFAULT_ALGORITHMS = tuple(n for n in NAMES if n not in (*QUADRATIC_ANSWERS, 'segments_intersect'))
MAX_FLOAT = 2  # printed floats have |x| < 2: the convex hulls' points lie on a disk of radius 2

_EOS = '<eos>'  # the answer's closing blank line
_PUNCTUATION = ('[', ']', '[[', '], [', ']]', ', ')
_NUMBER = re.compile(r'-?\d+(?:\.\d+)?')
_FLOATS = ('-0.0', *(str(k / 10**DECIMALS)
                     for k in range(1 - MAX_FLOAT * 10**DECIMALS, MAX_FLOAT * 10**DECIMALS)))


def _field(value) -> str:
  """A field as `clrs_utils._feature_to_str` prints it: `x`, `[x y]` or `[[x y], [z w]]`."""
  value = np.asarray(value)
  if value.ndim == 2:
    return '[' + ', '.join(map(_field, value)) + ']'
  if value.ndim == 1:
    return '[' + ' '.join(map(str, value.tolist())) + ']'
  return str(value.item())


def clrs_text(name: str, rng, size: int) -> tuple[str, str]:
  """CLRS-Text's question and answer for one input of `size` to algorithm `name`, drawn from
  `rng` (see `clrs_algorithms.Algorithm.sample`)."""
  inputs, outputs = ALGORITHMS[name].sample(rng, size)
  fields = ', '.join(f'{field}: {_field(value)}' for field, value in inputs.items())
  return (f'{name}:\n{fields}\n{", ".join(outputs)}:\n',
          ', '.join(map(_field, outputs.values())) + '\n\n')


def _pieces() -> tuple[str, ...]:
  """The text between numbers, for every registered algorithm."""
  algorithms = [ALGORITHMS[name] for name in NAMES]
  return (*_PUNCTUATION, *(f'{a.name}:\n' for a in algorithms),
          *dict.fromkeys(f'\n{", ".join(a.outputs)}:\n' for a in algorithms),
          *dict.fromkeys(f'{field}: ' for a in algorithms for field in a.inputs))


class ClrsTask(base.Task):
  """One algorithm of the set drawn uniformly per example, on a CLRS input of `size`."""

  name = 'clrs'
  # algorithm_id: the algorithm's index in NAMES; input_size: the size, at every position.
  feature_names = ('algorithm_id', 'input_size')
  alignment_features = ('input_size',)  # algorithm_id is a category, not a difficulty

  def __init__(self, algorithms: Sequence[str] | None = None, max_size: int = 32):
    names = DEFAULT_ALGORITHMS if algorithms is None else tuple(dict.fromkeys(algorithms))
    unknown = [n for n in names if n not in ALGORITHMS]
    if unknown or not names:
      raise ValueError(f'unknown clrs algorithms {unknown or "(none given)"}; '
                       f'known: {", ".join(NAMES)}')
    self.algorithms = names
    self.max_size = max_size
    self._min_size = max(ALGORITHMS[n].min_size for n in names)
    if max_size < self._min_size:
      raise ValueError(f'clrs max_size must be >= {self._min_size} for these algorithms, '
                       f'got {max_size}')
    # Every registered algorithm's pieces whatever the subset, so that token ids agree between
    # tasks built with different subsets (and the same max_size).
    pieces = _pieces()
    self._vocab = ('<pad>', _EOS, *pieces, *_FLOATS, *map(str, range(-1, max_size + 1)))
    self._ids = {word: i for i, word in enumerate(self._vocab)}
    self._is_number = [bool(_NUMBER.fullmatch(word)) for word in self._vocab]
    spelling = ['\n\n' if word == _EOS else word for word in self._vocab]
    # How each token is spelled [after anything else, after a number]: one space between numbers.
    self._spelling = (spelling, [' ' * number + word
                                 for number, word in zip(self._is_number, spelling)])
    self._words = re.compile('|'.join([*map(re.escape, sorted(pieces, key=len, reverse=True)),
                                       _NUMBER.pattern]))
    self._lengths: dict[tuple[str, int], int] = {}

  @property
  def vocab(self) -> tuple[str, ...]:
    return self._vocab

  def valid_sizes(self) -> tuple[int, int]:
    return self._min_size, self.max_size

  def tokenize(self, text: str) -> list[int]:
    """Token ids of a CLRS-Text question or answer (whose closing blank line becomes <eos>)."""
    body, end = (text[:-2], [_EOS]) if text.endswith('\n\n') else (text, [])
    try:
      tokens = [self._ids[word] for word in self._words.findall(body) + end]
    except KeyError as error:
      raise ValueError(f'{error.args[0]!r} is not in the clrs vocabulary '
                       f'(max_size={self.max_size})') from None
    if self.text(tokens) != text:
      raise ValueError(f'the clrs vocabulary cannot spell {text!r}')
    return tokens

  def text(self, tokens: Sequence[int]) -> str:
    """The CLRS-Text that token ids spell, padding dropped: `tokenize`'s inverse."""
    tokens = [token for token in map(int, tokens) if token != base.PAD]
    return ''.join([self._spelling[self._is_number[before]][token]
                    for before, token in zip([base.PAD, *tokens], tokens)])

  def seq_len(self, max_size: int) -> int:
    # Exact: an example's length depends on its algorithm and size only (every value is one
    # token, every field's shape is the size's), and grows with the size.
    size = max(max_size, self._min_size)
    return max(self._length(name, size) for name in self.algorithms)

  def _length(self, name: str, size: int) -> int:
    if (name, size) not in self._lengths:
      question, answer = clrs_text(name, np.random.default_rng(0), size)
      self._lengths[name, size] = len(self.tokenize(question)) + len(self.tokenize(answer))
    return self._lengths[name, size]

  def sample(self, rng: np.random.Generator, size: int) -> base.Example:
    if not self._min_size <= size <= self.max_size:
      raise ValueError(f'clrs size {size} not in [{self._min_size}, {self.max_size}]')
    name = self.algorithms[rng.integers(len(self.algorithms))]
    question, answer = clrs_text(name, rng, size)
    prompt = self.tokenize(question)
    tokens = np.array(prompt + self.tokenize(answer), np.int32)
    targets = np.append(tokens[1:], base.PAD).astype(np.int32)
    loss_mask = np.zeros(len(tokens), bool)
    loss_mask[len(prompt) - 1:-1] = True  # targets: the answer's tokens, then <eos>
    full = lambda value: np.full(len(tokens), value, np.float32)
    return base.Example(
        tokens=tokens, targets=targets, loss_mask=loss_mask, complexity=full(size),
        features=dict(algorithm_id=full(NAMES.index(name)), input_size=full(size)))
