"""The per-token record of a pass, and the one set of metrics computed over it.

A `Trace` holds, per token, what a pass decided and what the batch says about it. Training
summaries (inside jit, on device arrays), evaluation (results.json), the inspection API and the
analyses all compute accuracy, depth and cost through `sums` and `ratios` over a trace, so the
rules — which tokens count, when a sequence is correct — are written once:
- answer tokens: the scored positions (`loss_mask`) of real (non-padding) tokens; accuracy and
  depth are over these;
- a sequence is correct when it has an answer token and every one is correct;
- execution cost (Σ executed depths) and decision cost (decision-head calls) are over every real
  token.
"""

from __future__ import annotations

import collections
import dataclasses
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from anira_jax import stats

PAD = 0  # token id of padding, as every task has it


@dataclasses.dataclass
class Trace:
  """Per-token record of one pass over B sequences of L positions (T = the pass's max depth).

  Only tokens, depth and expected depth are always there; what the pass or the batch did not
  give is None (e.g. targets when only tokens were traced, the readouts in evaluation).
  """

  tokens: np.ndarray  # [B, L] int32, 0 = padding
  depth: np.ndarray  # [B, L] int32: iterations executed
  expected_depth: np.ndarray  # [B, L] float32: E_q[d]
  max_depth: int  # T the pass ran with
  head_calls: np.ndarray | None = None  # [B, L] int32: decision-head calls
  q: np.ndarray | None = None  # [B, L, T] float32: the decider's distribution over depths 1..T
  halting: np.ndarray | None = None  # [B, L, T] float32: λ_t after iteration t, else NaN
  readout_prediction: np.ndarray | None = None  # [T, B, L] int32: coda argmax after iteration t
  readout_confidence: np.ndarray | None = None  # [T, B, L] float32: its softmax probability
  logits: np.ndarray | None = None  # [B, L, V] float32: the model's output
  prediction: np.ndarray | None = None  # [B, L] int32: argmax of logits
  rule: str | None = None  # the decider's inference rule ('median', 'threshold=0.3', ...)
  targets: np.ndarray | None = None  # [B, L] int32
  correct: np.ndarray | None = None  # [B, L] bool: prediction == targets
  loss_mask: np.ndarray | None = None  # [B, L] bool: answer (scored) tokens
  annotated: np.ndarray | None = None  # [B, L] bool: positions whose annotations count
  complexity: np.ndarray | None = None  # [B, L] float32
  size: np.ndarray | None = None  # [B] int32: each sequence's size (difficulty knob)
  features: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)  # name -> [B, L]
  states: np.ndarray | None = None  # [T, B, L, D] state after every iteration (on request)

  @property
  def real(self) -> np.ndarray:
    """[B, L] bool: non-padding tokens."""
    return self.tokens != PAD

  @property
  def answer_mask(self) -> np.ndarray:
    """[B, L] bool: scored (answer) tokens; every real token when no loss_mask is known."""
    return self.real if self.loss_mask is None else self.loss_mask & self.real

  @property
  def analysis_mask(self) -> np.ndarray:
    """[B, L] bool: real tokens whose annotations count (answer tokens without `annotated`)."""
    return self.answer_mask if self.annotated is None else self.annotated & self.real

  @property
  def sequence_correct(self) -> np.ndarray:
    """[B] bool: every answer token of the sequence is correct (and it has one)."""
    if self.correct is None:
      raise ValueError('this trace has no targets; trace a batch to know what is correct')
    return sequence_correct(self.answer_mask, self.correct)

  @property
  def batch_size(self) -> int:
    return self.tokens.shape[0]


def sequence_correct(answer_BxL, correct_BxL):
  """[B] bool: the sequence has an answer token and every one is correct (numpy or jax)."""
  return answer_BxL.any(-1) & ~(answer_BxL & ~correct_BxL).any(-1)


def sums(trace: Trace, rows_B=None) -> dict:
  """Sums and counts over a trace (its rows `rows_B`, default all), so they add up over
  batches: answer and correct tokens, sequences, depth sums, tokens at depth 1 and at T, real
  tokens and both costs. Works on numpy arrays and, inside jit, on jax arrays."""
  # float32 on device; float64 on the host, where the sums may run over many batches.
  on_device = any(isinstance(x, jax.Array) for x in (trace.tokens, trace.depth))
  xp, dtype = (jnp, jnp.float32) if on_device else (np, np.float64)
  answer_BxL = trace.answer_mask
  real_BxL = trace.real
  if rows_B is not None:
    answer_BxL = answer_BxL & rows_B[:, None]
    real_BxL = real_BxL & rows_B[:, None]
  answer = answer_BxL.astype(dtype)
  real = real_BxL.astype(dtype)
  depth = trace.depth.astype(dtype)
  return {
      'answer_tokens': xp.sum(answer),
      'correct_tokens': xp.sum(answer * trace.correct),
      'sequences': xp.sum(answer_BxL.any(-1)),
      'correct_sequences': xp.sum(sequence_correct(answer_BxL, trace.correct)),
      'depth_sum': xp.sum(answer * depth),
      'expected_depth_sum': xp.sum(answer * trace.expected_depth),
      'depth_1': xp.sum(answer * (depth == 1)),
      'depth_max': xp.sum(answer * (depth == trace.max_depth)),
      'real_tokens': xp.sum(real),
      'execution_cost': xp.sum(real * depth),
      'decision_cost': xp.sum(real * trace.head_calls),
  }


def ratios(s: dict) -> dict:
  """Accuracy, depth and cost per token from `sums` (one batch's, or many added together)."""
  xp = jnp if isinstance(s['answer_tokens'], jax.Array) else np
  answers = xp.maximum(s['answer_tokens'], 1)
  real = xp.maximum(s['real_tokens'], 1)
  return {
      'token_accuracy': s['correct_tokens'] / answers,
      'sequence_accuracy': s['correct_sequences'] / xp.maximum(s['sequences'], 1),
      'mean_depth': s['depth_sum'] / answers,
      'mean_expected_depth': s['expected_depth_sum'] / answers,
      'share_depth_1': s['depth_1'] / answers,
      'share_depth_max': s['depth_max'] / answers,
      'execution_cost_per_token': s['execution_cost'] / real,
      'decision_cost_per_token': s['decision_cost'] / real,
  }


COST_RATIOS = ('execution_cost_per_token', 'decision_cost_per_token')  # over real tokens


def summary(trace: Trace, rows_B: np.ndarray | None = None) -> dict:
  """The figures of a set of sequences (host side): examples and answer tokens, `ratios`
  (those over answer tokens None when there is none), and both costs in total."""
  s = sums(trace, rows_B)
  has_answers = s['answer_tokens'] > 0
  result = {'examples': int(s['sequences']), 'answer_tokens': int(s['answer_tokens'])}
  for name, value in ratios(s).items():
    result[name] = float(value) if has_answers or name in COST_RATIOS else None
  result['execution_cost'] = int(s['execution_cost'])
  result['decision_cost'] = int(s['decision_cost'])
  return result


PER_SIZE_FIELDS = ('examples', 'answer_tokens', 'token_accuracy', 'sequence_accuracy',
                   'mean_depth', 'mean_expected_depth')


def per_size(trace: Trace) -> dict[int, dict]:
  """{size: `summary`'s accuracy and depth fields} for every size with an answer token."""
  if trace.size is None:
    raise ValueError('per_size needs a trace of a batch (its sizes)')
  has_answer_B = trace.answer_mask.any(-1)
  result = {}
  for size in sorted({int(s) for s in trace.size[has_answer_B]}):
    entry = summary(trace, trace.size == size)
    result[size] = {k: entry[k] for k in PER_SIZE_FIELDS}
  return result


def ceiling_accuracy(trace: Trace, feature: str, rows_B: np.ndarray | None = None) -> float:
  """The Bayes-optimal predictor's expected token accuracy over the answer tokens of `rows_B`:
  the mean of `feature`, which holds it per position (`Task.ceiling_feature`)."""
  answer = trace.answer_mask if rows_B is None else trace.answer_mask & rows_B[:, None]
  return float(trace.features[feature][answer].mean())


def split_results(trace: Trace, ceiling_feature: str | None = None) -> dict:
  """One evaluation split's entry of results.json: `summary`, the depth histogram over answer
  tokens, Spearman ρ of depth against complexity, and `per_size`. With a `ceiling_feature`
  (tasks whose answer is ambiguous), also the ceiling's token accuracy and the model's as a
  share of it, in total and per size."""
  answer = trace.answer_mask
  depth = trace.depth[answer]
  histogram = collections.Counter(depth.tolist())
  result = summary(trace)
  result['depth_histogram'] = {int(d): int(n) for d, n in sorted(histogram.items())}
  result['spearman_depth_complexity'] = (None if trace.complexity is None else
                                         stats.spearman(depth, trace.complexity[answer]))
  result['per_size'] = per_size(trace)
  if ceiling_feature is not None:
    for entry, rows_B in [(result, None), *((result['per_size'][s], trace.size == s)
                                            for s in result['per_size'])]:
      ceiling = ceiling_accuracy(trace, ceiling_feature, rows_B)
      entry['ceiling_token_accuracy'] = ceiling
      entry['share_of_ceiling'] = entry['token_accuracy'] / ceiling
  return result


# Where each array field keeps its batch and length axes (for concatenation).
_AXES = {'tokens': (0, 1), 'depth': (0, 1), 'expected_depth': (0, 1), 'head_calls': (0, 1),
         'q': (0, 1), 'halting': (0, 1), 'readout_prediction': (1, 2),
         'readout_confidence': (1, 2), 'logits': (0, 1), 'prediction': (0, 1),
         'targets': (0, 1), 'correct': (0, 1), 'loss_mask': (0, 1), 'annotated': (0, 1),
         'complexity': (0, 1), 'size': (0, None), 'states': (1, 2)}


def _pad_length(x: np.ndarray, axis: int | None, length: int) -> np.ndarray:
  if axis is None or x.shape[axis] == length:
    return x
  pad = [(0, 0)] * x.ndim
  pad[axis] = (0, length - x.shape[axis])
  return np.pad(x, pad)


def concatenate(traces: Sequence[Trace]) -> Trace:
  """One trace of all sequences; shorter sequences are right-padded (token 0, masks False)."""
  if not traces:
    raise ValueError('concatenate needs at least one trace')
  if len({(t.max_depth, t.rule) for t in traces}) > 1:
    raise ValueError('traces of different max_depth or rule cannot be concatenated')
  length = max(t.tokens.shape[1] for t in traces)
  fields = {}
  for name, (b_axis, l_axis) in _AXES.items():
    parts = [getattr(t, name) for t in traces]
    if any(p is None for p in parts):
      fields[name] = None
      continue
    fields[name] = np.concatenate([_pad_length(p, l_axis, length) for p in parts], b_axis)
  names = set.intersection(*(set(t.features) for t in traces))
  fields['features'] = {n: np.concatenate([_pad_length(t.features[n], 1, length)
                                           for t in traces]) for n in sorted(names)}
  return Trace(max_depth=traces[0].max_depth, rule=traces[0].rule, **fields)
