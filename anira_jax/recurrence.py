"""Running the core per token: the execution protocol, the training unroll and the inference
loop (DESIGN §2.4, §4).

Every executor — `unroll` and `loop` here, `compaction` and `decoding` beside — follows one
protocol, whose shared start and end live here:
- `context`: the decider's context, with T resolved (the trained D unless raised, and exactly D
  for a `standard` model) and the complexity annotation passed only to deciders that read it;
- per iteration t: which tokens run (`runs`: the decider's choice, and a training depth cap),
  the core on them, `observe` (with the readout for deciders that read it);
- `active_next`: the real tokens that run iteration t + 1 — the loops go on while there is one;
- `finish`: the decider's decision and the state the coda reads (the exit state, or the
  decider's own readout such as ACT's mixture).

`unroll` and `loop` execute the same `_iteration`: run the core on every token's current state
(so a frozen token's keys and values are its frozen state), keep the new state only for running
tokens, then let the decider observe. They differ only in control flow:
- `unroll`: `lax.scan` over all T iterations — reverse-differentiable, used for training;
- `loop`: `lax.while_loop` that stops as soon as no real token runs the next iteration — the
  inference path; a batch whose tokens all halt at depth 1 runs one iteration, not T.
Fed the same decisions, every executor gives the same states, depths and q (tested for every
decider).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from anira_jax.deciders import base as deciders_base
from anira_jax.model import Network, layers
from anira_jax.model.config import ModelConfig


class Trajectory(NamedTuple):
  """Per-token outcome of the recurrence."""

  state_BxLxD: jax.Array  # what the coda reads: the exit state (or ACT's mixture)
  depth_BxL: jax.Array  # int32 iterations each token executed
  decision: deciders_base.Decision
  iterations: jax.Array  # int32 scalar: iterations the control flow ran
  states_TxBxLxD: jax.Array | None  # state after every iteration (when collected)


def context(decider: deciders_base.Decider, model: ModelConfig, *, train: bool,
            key: jax.Array | None = None, complexity_BxL: jax.Array | None = None,
            max_depth: int | None = None,
            depth_cap_BxL: jax.Array | None = None) -> deciders_base.Context:
  """The decider's context for one pass; `max_depth` raises (or lowers) T, the trained D by
  default. The complexity annotation reaches only deciders that read it (a supervised one only
  in training); `depth_cap` (random depth in training) only the unroll and loop here."""
  max_depth = max_depth or model.max_depth
  if model.kind == 'standard' and max_depth != model.max_depth:
    raise ValueError('a standard (unshared) model has exactly max_depth layers; '
                     f'it cannot run {max_depth}')
  reads = decider.reads_complexity or (train and decider.learns_from_complexity)
  return deciders_base.Context(
      train=train, key=key, max_depth=max_depth,
      complexity_BxL=complexity_BxL if reads else None, depth_cap_BxL=depth_cap_BxL)


def runs(decider: deciders_base.Decider, state, t: jax.Array,
         ctx: deciders_base.Context) -> jax.Array:
  """`decider.runs`, with tokens past their depth cap (if any) stopped."""
  run_BxL = decider.runs(state, t)
  if ctx.depth_cap_BxL is None:
    return run_BxL
  return run_BxL * (t <= ctx.depth_cap_BxL).astype(run_BxL.dtype)


def observe(net: Network, decider: deciders_base.Decider, params: dict, state,
            h_BxLxD: jax.Array, t: jax.Array):
  """`decider.observe` after iteration t, given the readout of every token's current state when
  the decider reads it."""
  logits_BxLxV = net.readout(params['model'], h_BxLxD) if decider.reads_readout else None
  return decider.observe(params['decider'], state, h_BxLxD, t, logits_BxLxV)


def active_next(decider: deciders_base.Decider, state, t: jax.Array, ctx: deciders_base.Context,
                valid_BxL: jax.Array) -> tuple[jax.Array, jax.Array]:
  """(the real tokens that run iteration t + 1 [B, L], whether any does and t < T) once t
  iterations have run; padding (`valid` false) never keeps a loop going."""
  active_BxL = (runs(decider, state, jnp.minimum(t + 1, ctx.max_depth), ctx) > 0.5) & valid_BxL
  return active_BxL, (t < ctx.max_depth) & jnp.any(active_BxL)


def finish(decider: deciders_base.Decider, params: dict, state, h_BxLxD: jax.Array,
           depth_BxL: jax.Array, t_end: jax.Array,
           states_TxBxLxD: jax.Array | None = None) -> Trajectory:
  """The decider's decision, and the state the coda reads: the exit state unless the decider
  reads out its own (ACT's mixture)."""
  decision = decider.finish(params['decider'], state, h_BxLxD, t_end, depth_BxL)
  readout = h_BxLxD if decision.readout_BxLxD is None else decision.readout_BxLxD
  return Trajectory(readout, depth_BxL, decision, t_end, states_TxBxLxD)


def _iteration(net: Network, decider: deciders_base.Decider, params: dict, h0_BxLxD,
               ctx: deciders_base.Context, carry, t):
  h_BxLxD, state, depth_BxL = carry
  run_BxL = runs(decider, state, t, ctx)
  hard_BxL = run_BxL > 0.5
  h_new_BxLxD = net.core(params['model'], h_BxLxD, h0_BxLxD, t)
  # Forward: exactly where(run, new, old). Backward: h + m·(new − old), the straight-through
  # path by which a decider learns what running (or skipping) iteration t would change.
  surrogate_BxL = run_BxL - jax.lax.stop_gradient(run_BxL)
  h_BxLxD = (jnp.where(hard_BxL[..., None], h_new_BxLxD, h_BxLxD)
             + surrogate_BxL[..., None] * (h_new_BxLxD - h_BxLxD))
  depth_BxL = depth_BxL + hard_BxL.astype(jnp.int32)
  state = observe(net, decider, params, state, h_BxLxD, t)
  return h_BxLxD, state, depth_BxL


# What the training unroll keeps from each iteration's forward pass for its backward pass: the
# outputs of the weight matmuls (q/k/v, output projection, MLP in and out, decision heads) and
# attention's output and row log-sum-exp (`layers.causal_attention`'s backward pass recomputes
# the probabilities from them), not the elementwise intermediates around them (norm statistics,
# RoPE, GELU, the freezing mask), which are recomputed. The function is the same either way;
# why this is the default on CPU is in docs/performance.md.
RESIDUALS_POLICY = jax.checkpoint_policies.save_from_both_policies(
    jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
    jax.checkpoint_policies.save_only_these_names(layers.ATTENTION_OUT,
                                                  layers.ATTENTION_LOGSUMEXP))


def unroll(net: Network, decider: deciders_base.Decider, params: dict, h0_BxLxD: jax.Array,
           ctx: deciders_base.Context, *, collect_states: bool = False,
           remat: bool = False) -> Trajectory:
  """All T iterations with `lax.scan` and per-token freezing (the training path)."""
  state = decider.start(params['decider'], h0_BxLxD, ctx)
  depth_BxL = jnp.zeros(h0_BxLxD.shape[:2], jnp.int32)

  def step(carry, t):
    carry = _iteration(net, decider, params, h0_BxLxD, ctx, carry, t)
    return carry, (carry[0] if collect_states else None)

  # Always a checkpoint: `remat` recomputes the whole iteration in the backward pass; otherwise
  # only the outputs of the weight matmuls are kept (RESIDUALS_POLICY).
  step = jax.checkpoint(step, policy=None if remat else RESIDUALS_POLICY)
  steps_T = jnp.arange(1, ctx.max_depth + 1, dtype=jnp.int32)
  (h_BxLxD, state, depth_BxL), states = jax.lax.scan(
      step, (net.initial_state(h0_BxLxD), state, depth_BxL), steps_T)
  return finish(decider, params, state, h_BxLxD, depth_BxL, jnp.int32(ctx.max_depth), states)


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
    return active_next(decider, state, t, ctx, valid_BxL)[1]

  def body(carry):
    t, h_BxLxD, state, depth_BxL, states = carry
    h_BxLxD, state, depth_BxL = _iteration(
        net, decider, params, h0_BxLxD, ctx, (h_BxLxD, state, depth_BxL), t + 1)
    if collect_states:
      states = jax.lax.dynamic_update_index_in_dim(states, h_BxLxD, t, axis=0)
    return t + 1, h_BxLxD, state, depth_BxL, states

  t_end, h_BxLxD, state, depth_BxL, states_TxBxLxD = jax.lax.while_loop(
      more, body, (jnp.int32(0), net.initial_state(h0_BxLxD), state, depth_BxL, states_TxBxLxD))
  if collect_states:
    # Iterations after t_end would have left every state frozen.
    steps_T = jnp.arange(1, ctx.max_depth + 1)
    states_TxBxLxD = jnp.where((steps_T > t_end)[:, None, None, None], h_BxLxD[None],
                               states_TxBxLxD)
  else:
    states_TxBxLxD = None
  return finish(decider, params, state, h_BxLxD, depth_BxL, t_end, states_TxBxLxD)
