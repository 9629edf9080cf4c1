"""The task interface: seeded samplers of examples whose per-token difficulty is known.

A task turns (numpy Generator, size) into one unpadded `Example`. Everything else — sampling
sizes, padding, deterministic streams per (seed, step, host) — is shared and lives here, so a new
task is one small subclass plus its registration in `tasks/__init__.py`.

Conventions every task follows:
- token id 0 is padding (`PAD`); `vocab[0] == '<pad>'`;
- `targets[i]` is what the model must predict at position i (next token for language-style tasks,
  a per-position label for parity); it is only scored where `loss_mask[i]` is true;
- **annotations sit at the position whose prediction they describe.** The depth a token runs at
  position i decides the prediction of `targets[i]` (for language-style tasks, token i + 1), so
  `complexity[i]` and `features[name][i]` describe that prediction: the token being predicted,
  not the token being read. (An analysis that wants the token read at i takes the annotation at
  i - 1: `analysis.alignment` reads a feature at any offset.)
- `complexity[i]` is the ground-truth difficulty of position i (the value analyses correlate depth
  with, and the only annotation the `oracle` decider may read);
- `features[name][i]` are further per-token annotations, for analysis only;
- `annotated[i]` marks the positions where the annotations are defined and that count as real
  predictions in the analyses (by default the scored positions, `loss_mask`);
- `vectors[i]` (tasks with `vector_size` > 0 only) is a real-valued input that position i reads
  besides its token: the model adds a learned linear map of it to the token's embedding. It is
  how a whole input vector reaches one position (PonderNet's parity, `tasks/parity.py`).

A task also owns its analysis metadata (class attributes below): which features the study
correlates depth with, how they group for the decision-timing regression and its categorical
control, and, where the answer is ambiguous, which feature holds the Bayes-optimal accuracy
(the ceiling every accuracy is read against). Analyses read these; they never branch on a name.
"""

from __future__ import annotations

import abc
import dataclasses
import math
from collections.abc import Iterator, Sequence
from typing import ClassVar

import numpy as np

PAD = 0


@dataclasses.dataclass(frozen=True)
class Example:
  """One unpadded example; every array has shape [T]."""

  tokens: np.ndarray  # int32
  targets: np.ndarray  # int32, ids in the same vocabulary as tokens
  loss_mask: np.ndarray  # bool: positions whose target is scored (answer tokens)
  complexity: np.ndarray  # float32
  features: dict[str, np.ndarray]  # name -> float32 [T]
  annotated: np.ndarray | None = None  # bool: where annotations count; None = loss_mask
  vectors: np.ndarray | None = None  # float32 [T, F]: inputs besides the tokens (vector tasks)

  def __post_init__(self):
    length = len(self.tokens)
    if self.annotated is None:
      object.__setattr__(self, 'annotated', np.asarray(self.loss_mask, bool))
    for name, array in [('targets', self.targets), ('loss_mask', self.loss_mask),
                        ('complexity', self.complexity), ('annotated', self.annotated),
                        *self.features.items()]:
      if array.shape != (length,):
        raise ValueError(f'{name} has shape {array.shape}, expected ({length},)')
    if self.vectors is not None and (self.vectors.ndim != 2 or len(self.vectors) != length):
      raise ValueError(f'vectors has shape {self.vectors.shape}, expected ({length}, F)')


class Task(abc.ABC):
  """A procedural task. Subclasses set `name`, `vocab`, `feature_names` and sample examples."""

  name: ClassVar[str]
  feature_names: ClassVar[tuple[str, ...]] = ()
  # The features alignment reports first (the paper's headline feature leads), besides complexity.
  alignment_features: ClassVar[tuple[str, ...]] = ()
  # Decision timing: feature groups regressed together (e.g. static structure vs execution
  # state) and the categorical control; no groups = the task has no timing analysis.
  feature_groups: ClassVar[dict[str, tuple[str, ...]]] = {}
  timing_control: ClassVar[str | None] = None
  # A feature in [0, 1] holding the Bayes-optimal predictor's expected accuracy at each position,
  # for tasks whose answer is ambiguous; None = the ceiling is 1.
  ceiling_feature: ClassVar[str | None] = None

  @property
  @abc.abstractmethod
  def vocab(self) -> tuple[str, ...]:
    """Token strings by id; `vocab[PAD] == '<pad>'`."""

  @abc.abstractmethod
  def sample(self, rng: np.random.Generator, size: int) -> Example:
    """One example at difficulty `size`, drawn only from `rng`."""

  def annotate(self, example: Example, sizes: Sequence[int]) -> Example:
    """`example` with the annotations too costly for training streams (e.g. a parser's), which
    only evaluation and analysis need. `sizes` are the sizes the example's stream draws from
    uniformly: the distribution a Bayes-optimal reader of the example would know. Default: none."""
    del sizes
    return example

  @abc.abstractmethod
  def seq_len(self, max_size: int) -> int:
    """An upper bound on the length of any example of size <= max_size."""

  @property
  def vocab_size(self) -> int:
    return len(self.vocab)

  @property
  def vector_size(self) -> int:
    """F, the size of the real-valued input every position reads besides its token
    (`Example.vectors`); 0 = tokens only, as for most tasks."""
    return 0

  def valid_sizes(self) -> tuple[int, int]:
    """The smallest and largest size this task can generate (inclusive)."""
    return 1, 10**9

  def sample_batch(self, rng: np.random.Generator, sizes: np.ndarray, seq_len: int,
                   annotate_sizes: Sequence[int] | None = None) -> dict[str, np.ndarray]:
    """One example per entry of `sizes` [B], drawn only from `rng`, padded to `seq_len` as
    `make_batch` pads them; with `annotate_sizes`, annotated (`annotate`) as by a stream over
    those sizes.

    By default one `sample` per example. A task overrides it to draw the whole batch with array
    operations where a Python loop over examples would keep an accelerator waiting for the host
    (parity's PonderNet vectors: 74 ms a batch of 1,024 one at a time). An override must draw
    from the same distribution as `sample`, not the same values.
    """
    examples = [self.sample(rng, int(s)) for s in sizes]
    if annotate_sizes is not None:
      examples = [self.annotate(ex, annotate_sizes) for ex in examples]
    return make_batch(examples, sizes, seq_len, self.feature_names)

  def decode(self, tokens: Sequence[int]) -> list[str]:
    return [self.vocab[int(t)] for t in tokens]


class Generative(abc.ABC):
  """A task whose answer is generated after a prompt and graded by validity, not matched token by
  token (more than one answer may be right): what an evaluator needs to generate greedily from the
  prompt and grade the result, from tokens alone (host side, per example)."""

  @staticmethod
  @abc.abstractmethod
  def prompt_length(tokens: np.ndarray, loss_mask: np.ndarray) -> int:
    """The prompt's length: generation continues after it."""

  @abc.abstractmethod
  def max_answer_length(self, max_size: int) -> int:
    """The most tokens a right answer of any size up to `max_size` takes, its end included."""

  @abc.abstractmethod
  def answer_end(self, generated: Sequence[int]) -> int | None:
    """How many of the generated tokens the answer takes, its end token included; None while it
    has not ended (a generator's stop condition)."""

  @abc.abstractmethod
  def grade(self, prompt: Sequence[int], generated: Sequence[int]) -> dict[str, bool]:
    """Named verdicts on the generated answer; the last one is whether it is right."""

  @abc.abstractmethod
  def generation_features(self, prompt: Sequence[int],
                          generated: Sequence[int]) -> dict[str, np.ndarray]:
    """Per generated token, the annotations of the prediction that produced it: the task's
    features and `complexity` (float32), and `annotated` (bool): the generated tokens so far
    are a valid partial answer."""


def make_batch(examples: Sequence[Example], sizes: Sequence[int], seq_len: int,
               feature_names: Sequence[str]) -> dict[str, np.ndarray]:
  """Pads examples to `seq_len` on the right and stacks them into a batch of numpy arrays.

  Returns a dict with `tokens`, `targets` [B, seq_len] int32, `loss_mask` and `annotated`
  [B, seq_len] bool, `complexity` [B, seq_len] float32, `size` [B] int32, `features`
  {name: [B, seq_len]}, and, when the examples carry vectors, `vectors` [B, seq_len, F] float32.
  Right padding keeps causal attention from ever reading a pad token from a real one.
  """
  batch_size = len(examples)
  tokens = np.full((batch_size, seq_len), PAD, np.int32)
  targets = np.zeros((batch_size, seq_len), np.int32)
  loss_mask = np.zeros((batch_size, seq_len), bool)
  annotated = np.zeros((batch_size, seq_len), bool)
  complexity = np.zeros((batch_size, seq_len), np.float32)
  features = {name: np.zeros((batch_size, seq_len), np.float32) for name in feature_names}
  if len({ex.vectors is None for ex in examples}) > 1:
    raise ValueError('some examples carry vectors and some do not')
  with_vectors = bool(examples) and examples[0].vectors is not None
  if with_vectors:
    vectors = np.zeros((batch_size, seq_len, examples[0].vectors.shape[1]), np.float32)
  for b, ex in enumerate(examples):
    n = len(ex.tokens)
    if n > seq_len:
      raise ValueError(f'example of length {n} does not fit seq_len={seq_len}')
    tokens[b, :n] = ex.tokens
    targets[b, :n] = ex.targets
    loss_mask[b, :n] = ex.loss_mask
    annotated[b, :n] = ex.annotated
    complexity[b, :n] = ex.complexity
    if with_vectors:
      vectors[b, :n] = ex.vectors
    for name in feature_names:
      if name in ex.features:  # absent: an annotation the stream skipped (Task.annotate)
        features[name][b, :n] = ex.features[name]
  batch = dict(tokens=tokens, targets=targets, loss_mask=loss_mask, annotated=annotated,
               complexity=complexity, size=np.asarray(sizes, np.int32), features=features)
  if with_vectors:
    batch['vectors'] = vectors
  return batch


@dataclasses.dataclass(frozen=True)
class Stream:
  """An infinite, deterministic stream of batches of one task at a set of sizes.

  Batch `step` on host `host_index` depends only on (seed, step, host_index): resuming at any step
  or adding hosts never changes what another (step, host) sees, and no global RNG is touched.
  Each example's size is drawn uniformly from `sizes`. Training streams skip the costly
  analysis-only annotations (`annotate=False`: those features are 0).

  A curriculum over sizes (`curriculum_steps` > 0) opens the sizes smallest first: batch `step`
  draws from the smallest ceil(k · (step + 1) / curriculum_steps) of the k sizes, all of them
  from step curriculum_steps - 1 on. Sequences keep the full length, so the jitted step never
  sees a new shape.

  `size_weights` (one per size, in the order of `sizes`) draws sizes in proportion to them
  instead of uniformly, e.g. to spend the batch on the one size still being learned while the
  small ones, learned early, stay in the mix; under a curriculum the open sizes' weights are
  renormalised. Without weights the stream is exactly the uniform one.
  """

  task: Task
  sizes: tuple[int, ...]
  batch_size: int  # examples per host
  seed: int | tuple[int, ...]  # e.g. (run seed, split key) for an evaluation split's stream
  host_index: int = 0
  host_count: int = 1
  seq_len: int | None = None  # defaults to task.seq_len(max(sizes))
  annotate: bool = True  # add `Task.annotate`'s features
  curriculum_steps: int = 0  # steps over which the sizes open, smallest first; 0 = all at once
  size_weights: tuple[float, ...] | None = None  # by size, aligned with `sizes`; None = uniform

  def __post_init__(self):
    if not self.sizes:
      raise ValueError('a stream needs at least one size')
    if self.size_weights is not None and (
        len(self.size_weights) != len(self.sizes)
        or not all(math.isfinite(w) and w > 0 for w in self.size_weights)):
      raise ValueError(f'size_weights={self.size_weights} must be one finite weight > 0 for each '
                       f'of the sizes {self.sizes}')
    if self.curriculum_steps < 0:
      raise ValueError(f'curriculum_steps={self.curriculum_steps} must be >= 0')
    if not 0 <= self.host_index < self.host_count:
      raise ValueError(f'host_index={self.host_index} not in [0, {self.host_count})')
    lo, hi = self.task.valid_sizes()
    bad = [s for s in self.sizes if not lo <= s <= hi]
    if bad:
      raise ValueError(f'task {self.task.name!r} cannot generate sizes {bad}; valid: {lo}..{hi}')

  @property
  def length(self) -> int:
    return self.seq_len or self.task.seq_len(max(self.sizes))

  def open_sizes(self, step: int) -> tuple[int, ...]:
    """The sizes batch `step` draws from: all of them, or the curriculum's smallest."""
    if step >= self.curriculum_steps:
      return self.sizes
    ordered = sorted(self.sizes)
    return tuple(ordered[:math.ceil(len(ordered) * (step + 1) / self.curriculum_steps)])

  def batch(self, step: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng([*np.atleast_1d(self.seed), step, self.host_index,
                                 self.host_count])
    open_sizes = self.open_sizes(step)
    if self.size_weights is None:
      sizes = rng.choice(np.asarray(open_sizes), size=self.batch_size)
    else:
      weight = dict(zip(self.sizes, self.size_weights))
      p = np.asarray([weight[s] for s in open_sizes])
      sizes = rng.choice(np.asarray(open_sizes), size=self.batch_size, p=p / p.sum())
    return self.task.sample_batch(rng, sizes, self.length,
                                  self.sizes if self.annotate else None)

  def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
    step = 0
    while True:
      yield self.batch(step)
      step += 1
