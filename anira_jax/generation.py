"""Evaluation by generation, for tasks whose answer is graded by validity (`tasks.Generative`).

BREVO's answer is a topological order of a query's ancestors, and many orders are right, so its
original evaluation generates the answer greedily after the prompt and grades it (the node set,
then the order) instead of matching the one order of the example token by token. Here each row
of a batch decodes with the KV-cache decoder (`decoding.generate`), feeding its own prompt and
then its own argmax, every token at its own depth, and the task grades the result from tokens
alone. Teacher-forced token accuracy stays the training metric.

A generation's `Trace` holds the prompt and the generated tokens. Its answer positions are those
whose prediction is a generated token (the last prompt token predicts the first), up to the
answer's end; each carries the decision it ran (depth, q) and the annotations of the prediction
it made, computed for the order actually generated. A generated token counts as correct while the
answer so far is a valid partial answer (`annotated`), its end when the whole answer is right:
so a sequence is correct exactly when the task grades it right.
"""

from __future__ import annotations

import jax
import numpy as np

import tasks
from anira_jax import decoding
from anira_jax import trace as trace_lib
from anira_jax.anira import Anira
from anira_jax.deciders import base as deciders_base


def generate_trace(anira: Anira, params: dict, task: tasks.Generative, batch: dict,
                   max_depth: int | None = None) -> tuple[trace_lib.Trace, dict[str, np.ndarray]]:
  """The generation of every row of a host batch, as a Trace, and the task's verdicts
  ({name: [B] bool}). Generation runs within the batch's own length, which bounds every
  example's prompt plus the longest right answer."""
  tokens_BxL, loss_mask_BxL = batch['tokens'], batch['loss_mask']
  batch_size, length = tokens_BxL.shape
  prompt_B = np.array([task.prompt_length(t, m) for t, m in zip(tokens_BxL, loss_mask_BxL)])
  prompts_BxL = np.where(np.arange(length) < prompt_B[:, None], tokens_BxL, tasks.PAD)
  out = jax.device_get(decoding.generate(anira, params, prompts_BxL, 0,
                                         prompt_lengths_B=prompt_B, max_depth=max_depth))
  answer_len = task.max_answer_length(int(max(batch['size'])))
  fields = {name: np.zeros((batch_size, length), np.float32) for name in task.feature_names}
  complexity_BxL = np.zeros((batch_size, length), np.float32)
  answer_BxL = np.zeros((batch_size, length), bool)
  annotated_BxL = np.zeros((batch_size, length), bool)
  correct_BxL = np.zeros((batch_size, length), bool)
  verdicts: dict[str, list[bool]] = {}
  for b in range(batch_size):
    start = prompt_B[b]
    generated = out.tokens_BxL[b, start:start + answer_len]
    grade = task.grade(tokens_BxL[b, :start], generated)
    for name, verdict in grade.items():
      verdicts.setdefault(name, []).append(verdict)
    annotations = task.generation_features(tokens_BxL[b, :start], generated)
    stop = task.answer_length(generated)
    positions = slice(start - 1, start - 1 + stop)  # position p predicts the token at p + 1
    answer_BxL[b, positions] = True
    annotated_BxL[b, positions] = annotations['annotated'][:stop]
    # Answer tokens are right while the answer stays valid; its last one (the end) when the
    # whole answer is: the sequence is right exactly when the task's last verdict says so.
    correct_BxL[b, positions] = annotations['annotated'][:stop]
    correct_BxL[b, start - 1 + stop - 1] = list(grade.values())[-1]
    complexity_BxL[b, positions] = annotations['complexity'][:stop]
    for name in task.feature_names:
      fields[name][b, positions] = annotations[name][:stop]
  trace = trace_lib.Trace(
      tokens=np.asarray(out.tokens_BxL), depth=np.asarray(out.depth_BxL),
      expected_depth=np.asarray(deciders_base.expected_depth(out.q_BxLxT)),
      max_depth=max_depth or anira.model_cfg.max_depth, head_calls=np.asarray(out.head_calls_BxL),
      q=np.asarray(out.q_BxLxT), rule=anira.decider.rule_label, loss_mask=answer_BxL,
      annotated=annotated_BxL, correct=correct_BxL, complexity=complexity_BxL,
      size=np.asarray(batch['size']), features=fields)
  return trace, {name: np.asarray(v) for name, v in verdicts.items()}


def results(trace: trace_lib.Trace, verdicts: dict[str, np.ndarray]) -> dict:
  """A split's generation figures: `accuracy` (the share of right answers: the task's last
  verdict), each verdict's rate, the mean depth of the generated answer tokens' decisions, and
  the same per size."""
  right = list(verdicts)[-1]

  def figures(rows_B):
    summary = trace_lib.summary(trace, rows_B)
    return {'samples': int(rows_B.sum()), 'accuracy': float(verdicts[right][rows_B].mean()),
            **{f'{name}_rate': float(v[rows_B].mean()) for name, v in verdicts.items()},
            'mean_depth': summary['mean_depth'],
            'mean_expected_depth': summary['mean_expected_depth']}

  every = np.ones(trace.batch_size, bool)
  return {**figures(every),
          'per_size': {int(s): figures(trace.size == s) for s in np.unique(trace.size)}}
