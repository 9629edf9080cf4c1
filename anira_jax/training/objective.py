"""The training objective, and the metrics of a training batch.

loss = cross-entropy on answer tokens (`loss_mask`) + the decider's regularizer, which for
ANIRA-E/O is γ · mean over real (non-padding) tokens of KL(q ‖ p_b) [paper]. PonderNet replaces
the cross-entropy of the exit state by Σ_t q(t) · CE after iteration t.

The extrapolation ingredients of `anira_jax.ingredients` (random depth, per-iteration
supervision; off by default, and then the step is exactly the one above) enter here.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from anira_jax import trace as trace_lib
from anira_jax.anira import Anira, Output
from anira_jax.deciders import base
from anira_jax.ingredients import Ingredients, depth_cap, iteration_mask


def cross_entropy_BxL(logits_BxLxV: jax.Array, targets_BxL: jax.Array) -> jax.Array:
  return optax.softmax_cross_entropy_with_integer_labels(logits_BxLxV.astype(jnp.float32),
                                                         targets_BxL)


def batch_sums(out: Output, batch: dict, max_depth: int) -> dict[str, jax.Array]:
  """`trace.sums` of a training batch's pass: they add up over microbatches."""
  trajectory = out.trajectory
  return trace_lib.sums(trace_lib.Trace(
      tokens=batch['tokens'], depth=trajectory.depth_BxL,
      expected_depth=base.expected_depth(trajectory.decision.q_BxLxT), max_depth=max_depth,
      head_calls=trajectory.decision.head_calls_BxL, loss_mask=batch['loss_mask'],
      correct=jnp.argmax(out.logits_BxLxV, -1) == batch['targets']))


def loss_terms(anira: Anira, params: dict, batch: dict, key: jax.Array,
               opts: Ingredients = Ingredients()):
  """(cross-entropy, regularizer, regularizer metrics, `batch_sums`) of one batch on the training
  unroll; the cross-entropy averages over answer tokens, the regularizer (the decider's term
  and the per-iteration loss) over real ones."""
  decider = anira.decider
  max_depth = anira.model_cfg.max_depth
  every_iteration = decider.step_loss or opts.iteration_loss > 0
  # A key of its own, so the decider's draws are the same with and without random depth.
  cap_BxL = depth_cap(opts, jax.random.fold_in(key, 0x0de9), batch['tokens'].shape, max_depth)
  out = anira.apply(params, batch['tokens'], train=True, key=key,
                    complexity_BxL=batch['complexity'], collect_states=every_iteration,
                    depth_cap_BxL=cap_BxL, vectors_BxLxF=batch.get('vectors'))
  answer_BxL = batch['loss_mask'].astype(jnp.float32)
  real_BxL = (batch['tokens'] != 0).astype(jnp.float32)
  if every_iteration:
    step_logits_TxBxLxV = anira.readout_every_iteration(params, out.trajectory.states_TxBxLxD)
    ce_TxBxL = jax.vmap(cross_entropy_BxL, (0, None))(step_logits_TxBxLxV, batch['targets'])
  if decider.step_loss:
    q_TxBxL = jnp.moveaxis(out.trajectory.decision.q_BxLxT, -1, 0)
    ce_BxL = jnp.sum(q_TxBxL * ce_TxBxL, 0)
  else:
    ce_BxL = cross_entropy_BxL(out.logits_BxLxV, batch['targets'])
  ce = base.weighted_mean(ce_BxL, answer_BxL)
  reg, reg_metrics = decider.regularizer(out.trajectory.decision, out.trajectory.depth_BxL,
                                         real_BxL)
  if opts.iteration_loss > 0:
    iteration_ce = base.weighted_mean(ce_TxBxL, iteration_mask(opts, answer_BxL,
                                                               batch['complexity'], max_depth))
    reg = reg + opts.iteration_loss * iteration_ce
    reg_metrics = {**reg_metrics, 'iteration_ce': iteration_ce}
  return ce, reg, reg_metrics, batch_sums(out, batch, max_depth)


def report(ce: jax.Array, reg: jax.Array, reg_metrics: dict, sums: dict) -> dict:
  """The training metrics: the loss and its terms, then `trace.ratios` of the sums."""
  return {'loss': ce + reg, 'cross_entropy': ce, 'regularizer': reg, **reg_metrics,
          **trace_lib.ratios(sums), 'tokens': sums['real_tokens']}
