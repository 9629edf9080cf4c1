"""Running the core per token: the training unroll and the inference loop (DESIGN §2.4, §4).

Both paths execute the same `_iteration`: ask the decider which tokens run iteration t, run the
core on every token's current state (so a frozen token's keys and values are its frozen state),
keep the new state only for running tokens, then let the decider observe. They differ only in
control flow:
- `unroll`: `lax.scan` over all T iterations — reverse-differentiable, used for training;
- `loop`: `lax.while_loop` that stops as soon as no real token runs the next iteration — the
  inference path; a batch whose tokens all halt at depth 1 runs one iteration, not T.
Fed the same decisions, the two give the same states, depths and q (tested for every decider).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from anira_jax.deciders import base as deciders_base
from anira_jax.model import Network, layers


class Trajectory(NamedTuple):
  """Per-token outcome of the recurrence."""

  state_BxLxD: jax.Array  # what the coda reads: the exit state (or ACT's mixture)
  depth_BxL: jax.Array  # int32 iterations each token executed
  decision: deciders_base.Decision
  iterations: jax.Array  # int32 scalar: iterations the control flow ran
  states_TxBxLxD: jax.Array | None  # state after every iteration (when collected)


def _iteration(net: Network, decider: deciders_base.Decider, params: dict, h0_BxLxD, carry, t,
               skip_idle: bool = False):
  h_BxLxD, state, depth_BxL = carry
  run_BxL = decider.runs(state, t)
  hard_BxL = run_BxL > 0.5
  if skip_idle:
    # Stays differentiable (unlike a while_loop): an iteration no token runs costs nothing.
    h_new_BxLxD = jax.lax.cond(jnp.any(hard_BxL), net.core, lambda p, h, *_: h,
                               params['model'], h_BxLxD, h0_BxLxD, t)
  else:
    h_new_BxLxD = net.core(params['model'], h_BxLxD, h0_BxLxD, t)
  # Forward: exactly where(run, new, old). Backward: h + m·(new − old), the straight-through
  # path by which a decider learns what running (or skipping) iteration t would change.
  surrogate_BxL = run_BxL - jax.lax.stop_gradient(run_BxL)
  h_BxLxD = (jnp.where(hard_BxL[..., None], h_new_BxLxD, h_BxLxD)
             + surrogate_BxL[..., None] * (h_new_BxLxD - h_BxLxD))
  depth_BxL = depth_BxL + hard_BxL.astype(jnp.int32)
  state = decider.observe(params['decider'], state, h_BxLxD, t)
  return h_BxLxD, state, depth_BxL


def _finish(decider, params, h_BxLxD, state, depth_BxL, t_end, states_TxBxLxD):
  decision = decider.finish(params['decider'], state, h_BxLxD, t_end, depth_BxL)
  readout = h_BxLxD if decision.readout_BxLxD is None else decision.readout_BxLxD
  return Trajectory(readout, depth_BxL, decision, t_end, states_TxBxLxD)


# What the training unroll keeps from each iteration's forward pass for the backward pass: the
# outputs of the weight matmuls (q/k/v, output projection, MLP in and out, decision heads) and
# attention's output and row log-sum-exp (small: [B, L, H, K] and [B, L, H], in either
# layout; `layers.causal_attention`'s own backward passes recompute the probabilities from
# them), not the elementwise intermediates around them (norm statistics, RoPE, GELU's tanh
# terms, the freezing mask). Without a policy `lax.scan` stacks every intermediate of every
# iteration into [T, ...] buffers; on XLA:CPU that stacking (zero-filled, freshly page-faulted
# memory, written then read back each step) was much of why the backward pass cost ~5x the
# forward; this policy cut the whole train step by ~25% (benchmarks/train_step.py). On
# accelerators it is the usual memory-for-recompute trade. The function is the same: only
# what is stored changes.
RESIDUALS_POLICY = jax.checkpoint_policies.save_from_both_policies(
    jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
    jax.checkpoint_policies.save_only_these_names(layers.ATTENTION_OUT,
                                                  layers.ATTENTION_LOGSUMEXP))


def unroll(net: Network, decider: deciders_base.Decider, params: dict, h0_BxLxD: jax.Array,
           ctx: deciders_base.Context, *, collect_states: bool = False, remat: bool = False,
           skip_idle: bool = False) -> Trajectory:
  """All T iterations with `lax.scan` and per-token freezing (the training path)."""
  state = decider.start(params['decider'], h0_BxLxD, ctx)
  depth_BxL = jnp.zeros(h0_BxLxD.shape[:2], jnp.int32)

  def step(carry, t):
    carry = _iteration(net, decider, params, h0_BxLxD, carry, t, skip_idle)
    return carry, (carry[0] if collect_states else None)

  # Always a checkpoint: `remat` recomputes the whole iteration in the backward pass; otherwise
  # only the outputs of the weight matmuls are kept (RESIDUALS_POLICY).
  step = jax.checkpoint(step, policy=None if remat else RESIDUALS_POLICY)
  steps_T = jnp.arange(1, ctx.max_depth + 1, dtype=jnp.int32)
  (h_BxLxD, state, depth_BxL), states = jax.lax.scan(
      step, (h0_BxLxD, state, depth_BxL), steps_T)
  return _finish(decider, params, h_BxLxD, state, depth_BxL, jnp.int32(ctx.max_depth), states)


def loop(net: Network, decider: deciders_base.Decider, params: dict, h0_BxLxD: jax.Array,
         ctx: deciders_base.Context, valid_BxL: jax.Array, *,
         collect_states: bool = False) -> Trajectory:
  """Iterations in a `lax.while_loop` that ends once no real (`valid`) token runs the next one.

  Padding tokens never keep the loop alive; their depths are not meaningful.
  """
  state = decider.start(params['decider'], h0_BxLxD, ctx)
  depth_BxL = jnp.zeros(h0_BxLxD.shape[:2], jnp.int32)
  shape_TxBxLxD = (ctx.max_depth, *h0_BxLxD.shape) if collect_states else (0,)
  states_TxBxLxD = jnp.zeros(shape_TxBxLxD, h0_BxLxD.dtype)

  def more(carry):
    t, _, state, _, _ = carry
    next_runs = decider.runs(state, jnp.minimum(t + 1, ctx.max_depth)) > 0.5
    return (t < ctx.max_depth) & jnp.any(next_runs & valid_BxL)

  def body(carry):
    t, h_BxLxD, state, depth_BxL, states = carry
    h_BxLxD, state, depth_BxL = _iteration(
        net, decider, params, h0_BxLxD, (h_BxLxD, state, depth_BxL), t + 1)
    if collect_states:
      states = jax.lax.dynamic_update_index_in_dim(states, h_BxLxD, t, axis=0)
    return t + 1, h_BxLxD, state, depth_BxL, states

  t_end, h_BxLxD, state, depth_BxL, states_TxBxLxD = jax.lax.while_loop(
      more, body, (jnp.int32(0), h0_BxLxD, state, depth_BxL, states_TxBxLxD))
  if collect_states:
    # Iterations after t_end would have left every state frozen.
    steps_T = jnp.arange(1, ctx.max_depth + 1)
    states_TxBxLxD = jnp.where((steps_T > t_end)[:, None, None, None], h_BxLxD[None],
                               states_TxBxLxD)
  else:
    states_TxBxLxD = None
  return _finish(decider, params, h_BxLxD, state, depth_BxL, t_end, states_TxBxLxD)
