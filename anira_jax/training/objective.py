"""The training objective and the per-batch metrics shared by training and evaluation.

loss = cross-entropy on answer tokens (`loss_mask`) + the decider's regularizer, which for
ANIRA-E/O is γ · mean over real (non-padding) tokens of KL(q ‖ p_b) [paper]. PonderNet replaces
the cross-entropy of the exit state by Σ_t q(t) · CE after iteration t.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from anira_jax.anira import Anira, Output
from anira_jax.deciders import base


def cross_entropy_BxL(logits_BxLxV: jax.Array, targets_BxL: jax.Array) -> jax.Array:
  return optax.softmax_cross_entropy_with_integer_labels(logits_BxLxV.astype(jnp.float32),
                                                         targets_BxL)


def batch_metrics(out: Output, batch: dict, max_depth: int) -> dict[str, jax.Array]:
  """Accuracy and compute over answer tokens; sums and counts so they aggregate over batches."""
  answer_BxL = batch['loss_mask'].astype(jnp.float32)
  real_BxL = (batch['tokens'] != 0).astype(jnp.float32)
  correct_BxL = (jnp.argmax(out.logits_BxLxV, -1) == batch['targets']).astype(jnp.float32)
  depth_BxL = out.trajectory.depth_BxL.astype(jnp.float32)
  q_BxLxT = out.trajectory.decision.q_BxLxT
  expected_BxL = base.expected_depth(q_BxLxT)
  wrong_answers_B = jnp.sum(answer_BxL * (1 - correct_BxL), -1)
  has_answer_B = jnp.sum(answer_BxL, -1) > 0
  return {
      'answer_tokens': jnp.sum(answer_BxL),
      'correct_tokens': jnp.sum(answer_BxL * correct_BxL),
      'sequences': jnp.sum(has_answer_B),
      'correct_sequences': jnp.sum(has_answer_B & (wrong_answers_B == 0)),
      'depth_sum': jnp.sum(answer_BxL * depth_BxL),
      'expected_depth_sum': jnp.sum(answer_BxL * expected_BxL),
      'depth_1': jnp.sum(answer_BxL * (depth_BxL == 1)),
      'depth_max': jnp.sum(answer_BxL * (depth_BxL == max_depth)),
      'real_tokens': jnp.sum(real_BxL),
      'execution_cost': jnp.sum(real_BxL * depth_BxL),
      'decision_cost': jnp.sum(real_BxL * out.trajectory.decision.head_calls_BxL),
  }


def summarize(sums: dict[str, jax.Array]) -> dict[str, float | jax.Array]:
  """Ratios from the sums of `batch_metrics` (one batch, or many added together)."""
  answers = jnp.maximum(sums['answer_tokens'], 1)
  return {
      'token_accuracy': sums['correct_tokens'] / answers,
      'sequence_accuracy': sums['correct_sequences'] / jnp.maximum(sums['sequences'], 1),
      'mean_depth': sums['depth_sum'] / answers,
      'mean_expected_depth': sums['expected_depth_sum'] / answers,
      'share_depth_1': sums['depth_1'] / answers,
      'share_depth_max': sums['depth_max'] / answers,
  }


def loss_terms(anira: Anira, params: dict, batch: dict, key: jax.Array):
  """(cross-entropy, regularizer, regularizer metrics, `batch_metrics` sums) of one batch on the
  training unroll; the cross-entropy averages over answer tokens, the regularizer over real ones."""
  decider = anira.decider
  out = anira.apply(params, batch['tokens'], train=True, key=key,
                    complexity_BxL=batch['complexity'], collect_states=decider.step_loss)
  answer_BxL = batch['loss_mask'].astype(jnp.float32)
  real_BxL = (batch['tokens'] != 0).astype(jnp.float32)
  if decider.step_loss:
    step_logits_TxBxLxV = anira.readout_every_iteration(params, out.trajectory.states_TxBxLxD)
    ce_TxBxL = jax.vmap(cross_entropy_BxL, (0, None))(step_logits_TxBxLxV, batch['targets'])
    q_TxBxL = jnp.moveaxis(out.trajectory.decision.q_BxLxT, -1, 0)
    ce_BxL = jnp.sum(q_TxBxL * ce_TxBxL, 0)
  else:
    ce_BxL = cross_entropy_BxL(out.logits_BxLxV, batch['targets'])
  ce = base.weighted_mean(ce_BxL, answer_BxL)
  reg, reg_metrics = decider.regularizer(out.trajectory.decision, out.trajectory.depth_BxL,
                                         real_BxL)
  return ce, reg, reg_metrics, batch_metrics(out, batch, anira.model_cfg.max_depth)


def report(ce: jax.Array, reg: jax.Array, reg_metrics: dict, sums: dict) -> dict:
  """The training metrics: the loss and its terms, then `summarize`'s ratios of the sums."""
  return {'loss': ce + reg, 'cross_entropy': ce, 'regularizer': reg, **reg_metrics,
          **summarize(sums), 'tokens': sums['real_tokens']}


def loss_and_metrics(anira: Anira, params: dict, batch: dict, key: jax.Array):
  """(loss, metrics) of one training batch on the training unroll."""
  ce, reg, reg_metrics, sums = loss_terms(anira, params, batch, key)
  return ce + reg, report(ce, reg, reg_metrics, sums)
