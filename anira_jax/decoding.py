"""Autoregressive decoding with a per-iteration key/value cache (DESIGN §2.6).

Tokens are processed one position at a time; each new token runs its own depth, decided by its
own decider state, and reads what earlier tokens left in the cache:

    cache.core_k[t-1, layer, b, j]  = the key token j shows to a query at iteration t

For t <= d_j that is the key token j computed while it ran iteration t (from its state after
t-1 iterations); for t > d_j it is the key of j's *frozen* state at iteration t. So the new
token at iteration t reads token j's state at level min(t-1, d_j) — exactly what the masked
inference loop computes (`recurrence.loop`); decoding a sequence gives its logits, depths and q
(tested for every decider). Prelude and coda layers keep a one-level cache the same way.

Cost per token. When the frozen keys/values do not depend on the iteration — a one-layer core
without iteration embedding — the levels above a token's depth get its final state's keys and
values by one keys/values-only projection, and a token costs ∝ its own depth. Otherwise the
masked semantics make a frozen token's keys depend on the iteration (e_t, or what its layer-1
query reads at iteration t), so a halted token is still pushed through the core (states
unchanged) up to T to fill its cache levels: exact, but with no saving from halting.

With a batch, rows advance in lock step: position i of every row at once, each row running its
own depth (rows that halted are carried along without changing state).

Deciders that read the readout after every iteration (`reads_readout`, the zero-shot exits) see,
at iteration t of the new token, the coda reading every earlier token at level min(t, d_j), as
the masked loop's readout of its current states does: the cache then also keeps the coda's
keys/values per level (`readout_k`, `readout_v`), filled above a token's depth from its frozen
state (recomputed per level with more than one coda layer, whose deeper keys depend on the
earlier tokens at that level).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from anira_jax import deciders, recurrence
from anira_jax.anira import Anira, Output
from anira_jax.model import layers


class Cache(NamedTuple):
  """Keys and values of every position decoded so far ([..., B, N, H, K], N = max length)."""

  prelude_k: jax.Array  # [prelude_layers, B, N, H, K]
  prelude_v: jax.Array
  core_k: jax.Array  # [T, core_layers, B, N, H, K]: level t-1 is read at iteration t
  core_v: jax.Array
  coda_k: jax.Array  # [coda_layers, B, N, H, K]
  coda_v: jax.Array
  # For deciders that read the readout after every iteration (`reads_readout`; else T = 0):
  # level t-1 holds the coda keys/values of each token's state after min(t, d_j) iterations.
  readout_k: jax.Array  # [T, coda_layers, B, N, H, K]
  readout_v: jax.Array


class StepOutput(NamedTuple):
  """One position of every row."""

  logits_BxV: jax.Array
  depth_B: jax.Array  # int32 iterations this token ran
  q_BxT: jax.Array
  head_calls_B: jax.Array
  readout_BxD: jax.Array  # the state the coda read (exit state, or ACT's mixture)


def static_frozen_kv(anira: Anira) -> bool:
  """Whether a frozen token's core keys/values are the same at every later iteration."""
  cfg = anira.model_cfg
  return cfg.core_layers == 1 and not cfg.iteration_embedding and cfg.kind == 'recurrent'


def init_cache(anira: Anira, batch: int, max_len: int, max_depth: int | None = None) -> Cache:
  cfg = anira.model_cfg
  depth = max_depth or cfg.max_depth
  dtype = jnp.dtype(cfg.dtype)
  kv = (batch, max_len, cfg.kv_heads, cfg.head_dim)
  zeros = lambda *lead: jnp.zeros((*lead, *kv), dtype)
  levels = depth if anira.decider.reads_readout else 0
  return Cache(zeros(cfg.prelude_layers), zeros(cfg.prelude_layers),
               zeros(depth, cfg.core_layers), zeros(depth, cfg.core_layers),
               zeros(cfg.coda_layers), zeros(cfg.coda_layers),
               zeros(levels, cfg.coda_layers), zeros(levels, cfg.coda_layers))


def _write(cache_k, cache_v, index: tuple, position, k_Bx1xHxK, v_Bx1xHxK):
  """cache[*index, :, position] = k (index: leading level/layer indices, possibly traced)."""
  def put(cache, x):
    x = x.astype(cache.dtype).reshape((1,) * len(index) + x.shape)
    start = (*index, 0, position, 0, 0)
    return jax.lax.dynamic_update_slice(cache, x, start)
  return put(cache_k, k_Bx1xHxK), put(cache_v, v_Bx1xHxK)


def _fill_levels_above(cache_k, cache_v, t_end, position, k_Bx1xHxK, v_Bx1xHxK):
  """cache[t, :, :, position] = k for every level t >= t_end: a frozen token's keys/values at
  the levels it did not run (caches [T, 1, B, N, H, K]: one layer, where they are static)."""
  def fill(cache, x):
    column = jax.lax.dynamic_slice_in_dim(cache, position, 1, axis=3)  # [T, layers, B, 1, H, K]
    above_Tx1x1x1x1x1 = (jnp.arange(cache.shape[0]) >= t_end)[:, None, None, None, None, None]
    column = jnp.where(above_Tx1x1x1x1x1, x.astype(cache.dtype)[None, None], column)
    return jax.lax.dynamic_update_slice_in_dim(cache, column, position, axis=3)
  return fill(cache_k, k_Bx1xHxK), fill(cache_v, v_Bx1xHxK)


def _layer(net, block, x_Bx1xD, position, cache_k_BxNxHxK, cache_v_BxNxHxK):
  """One block for the new token; returns (output, its k, its v). The cache passed in must
  already hold every earlier position; the new token's own key is attended to here."""
  positions_1 = position[None]
  q, k, v = net.project(block, x_Bx1xD, positions_1)
  cache_k = jax.lax.dynamic_update_slice_in_dim(cache_k_BxNxHxK, k.astype(cache_k_BxNxHxK.dtype),
                                                position, axis=1)
  cache_v = jax.lax.dynamic_update_slice_in_dim(cache_v_BxNxHxK, v.astype(cache_v_BxNxHxK.dtype),
                                                position, axis=1)
  q_positions_Bx1 = jnp.full((cache_k.shape[0], 1), position)
  attn = layers.attend(q, cache_k, cache_v, q_positions_Bx1, net.cfg.attention_window)
  return net.update(block, x_Bx1xD, attn), k, v


def _stack(net, blocks, x_Bx1xD, position, cache_k, cache_v):
  """A prelude or coda stack for the new token with its one-level cache."""
  for i, block in enumerate(blocks):
    x_Bx1xD, k, v = _layer(net, block, x_Bx1xD, position, cache_k[i], cache_v[i])
    cache_k, cache_v = _write(cache_k, cache_v, (i,), position, k, v)
  return x_Bx1xD, cache_k, cache_v


def decode_step(anira: Anira, params: dict, cache: Cache, tokens_B: jax.Array,
                position: jax.Array, complexity_B: jax.Array | None = None,
                max_depth: int | None = None,
                vectors_BxF: jax.Array | None = None) -> tuple[StepOutput, Cache]:
  """Position `position` of every row: the new token's logits, depth and q, and the cache with
  its keys/values at every level. Positions must be decoded in order from 0. `vectors` are the
  position's real-valued inputs, for a model with `vector_size` > 0."""
  net, decider, cfg = anira.network, anira.decider, anira.model_cfg
  complexity_Bx1 = None if complexity_B is None else complexity_B[:, None]
  ctx = recurrence.context(decider, cfg, train=False, complexity_BxL=complexity_Bx1,
                           max_depth=max_depth)
  max_depth = ctx.max_depth
  position = jnp.asarray(position, jnp.int32)
  model = params['model']

  x_Bx1xD = net.embed_inputs(model, tokens_B[:, None], position[None],
                             None if vectors_BxF is None else vectors_BxF[:, None])
  h0_Bx1xD, prelude_k, prelude_v = _stack(net, net.prelude_blocks(model), x_Bx1xD, position,
                                          cache.prelude_k, cache.prelude_v)

  def iteration(t, h_Bx1xD, core_k, core_v):
    """The core at iteration t on the new token, writing its keys/values at level t-1."""
    x_Bx1xD = x0_Bx1xD = net.core_input(model, h_Bx1xD, h0_Bx1xD, t)
    for i, block in enumerate(net.core_blocks(model, t)):
      level_k = jax.lax.dynamic_index_in_dim(core_k, t - 1, 0, keepdims=False)[i]
      level_v = jax.lax.dynamic_index_in_dim(core_v, t - 1, 0, keepdims=False)[i]
      x_Bx1xD, k, v = _layer(net, block, x_Bx1xD, position, level_k, level_v)
      core_k, core_v = _write(core_k, core_v, (t - 1, i), position, k, v)
    return net.core_output(h_Bx1xD, x0_Bx1xD, x_Bx1xD), core_k, core_v

  def level_readout(t, h_Bx1xD, readout_k, readout_v):
    """The readout of the new token after iteration t (the coda reading every earlier token at
    level t), writing its coda keys/values at level t-1."""
    x_Bx1xD = h_Bx1xD
    for i, block in enumerate(net.coda_blocks(model)):
      level_k = jax.lax.dynamic_index_in_dim(readout_k, t - 1, 0, keepdims=False)[i]
      level_v = jax.lax.dynamic_index_in_dim(readout_v, t - 1, 0, keepdims=False)[i]
      x_Bx1xD, k, v = _layer(net, block, x_Bx1xD, position, level_k, level_v)
      readout_k, readout_v = _write(readout_k, readout_v, (t - 1, i), position, k, v)
    return net.readout_head(model, x_Bx1xD), readout_k, readout_v

  state = decider.start(params['decider'], h0_Bx1xD, ctx)
  every_row_Bx1 = jnp.ones(tokens_B.shape[:1] + (1,), bool)

  def more(carry):
    t, _, state, *_ = carry
    return recurrence.active_next(decider, state, t, ctx, every_row_Bx1)[1]

  def body(carry):
    t, h_Bx1xD, state, depth_Bx1, core_k, core_v, readout_k, readout_v = carry
    t = t + 1
    run_Bx1 = decider.runs(state, t) > 0.5
    h_new_Bx1xD, core_k, core_v = iteration(t, h_Bx1xD, core_k, core_v)
    h_Bx1xD = jnp.where(run_Bx1[..., None], h_new_Bx1xD, h_Bx1xD)
    logits_Bx1xV = None
    if decider.reads_readout:
      logits_Bx1xV, readout_k, readout_v = level_readout(t, h_Bx1xD, readout_k, readout_v)
    state = decider.observe(params['decider'], state, h_Bx1xD, t, logits_Bx1xV)
    return (t, h_Bx1xD, state, depth_Bx1 + run_Bx1.astype(jnp.int32), core_k, core_v,
            readout_k, readout_v)

  depth_Bx1 = jnp.zeros(tokens_B.shape[:1] + (1,), jnp.int32)
  t_end, h_Bx1xD, state, depth_Bx1, core_k, core_v, readout_k, readout_v = jax.lax.while_loop(
      more, body, (jnp.int32(0), net.initial_state(h0_Bx1xD), state, depth_Bx1, cache.core_k,
                   cache.core_v, cache.readout_k, cache.readout_v))

  # Levels above t_end: what the frozen token shows to later tokens at those iterations.
  if static_frozen_kv(anira):
    block = net.core_blocks(model, t_end + 1)[0]
    x_Bx1xD = net.core_input(model, h_Bx1xD, h0_Bx1xD, t_end + 1)
    k, v = net.keys_values(block, x_Bx1xD, position[None])
    core_k, core_v = _fill_levels_above(core_k, core_v, t_end, position, k, v)
  else:
    def refresh(t, kv):
      return iteration(t, h_Bx1xD, *kv)[1:]
    core_k, core_v = jax.lax.fori_loop(t_end + 1, max_depth + 1, refresh, (core_k, core_v))

  if decider.reads_readout:  # the frozen token's readout levels above t_end
    if cfg.coda_layers == 1:  # its coda keys/values depend on its own state alone
      k, v = net.keys_values(net.coda_blocks(model)[0], h_Bx1xD, position[None])
      readout_k, readout_v = _fill_levels_above(readout_k, readout_v, t_end, position, k, v)
    elif cfg.coda_layers > 1:  # deeper coda keys depend on what earlier tokens show per level
      readout_k, readout_v = jax.lax.fori_loop(
          t_end + 1, max_depth + 1,
          lambda t, kv: level_readout(t, h_Bx1xD, *kv)[1:], (readout_k, readout_v))

  trajectory = recurrence.finish(decider, params, state, h_Bx1xD, depth_Bx1, t_end)
  decision, readout_Bx1xD = trajectory.decision, trajectory.state_BxLxD
  y_Bx1xD, coda_k, coda_v = _stack(net, net.coda_blocks(model), readout_Bx1xD, position,
                                   cache.coda_k, cache.coda_v)
  logits_Bx1xV = net.readout_head(model, y_Bx1xD)
  out = StepOutput(logits_Bx1xV[:, 0], depth_Bx1[:, 0], decision.q_BxLxT[:, 0],
                   decision.head_calls_BxL[:, 0], readout_Bx1xD[:, 0])
  return out, Cache(prelude_k, prelude_v, core_k, core_v, coda_k, coda_v, readout_k, readout_v)


def decode_logits(anira: Anira, params: dict, tokens_BxL: jax.Array, *,
                  complexity_BxL: jax.Array | None = None, max_depth: int | None = None,
                  vectors_BxLxF: jax.Array | None = None) -> Output:
  """`anira.apply(..., train=False, path='loop')` computed token by token with the cache.

  Returns an `anira.Output`; `trajectory.iterations` is the deepest token's depth and the
  per-token readout states are in `trajectory.state_BxLxD`. Jittable.
  """
  batch, length = tokens_BxL.shape
  max_depth = max_depth or anira.model_cfg.max_depth
  cache = init_cache(anira, batch, length, max_depth)
  complexity_LxB = None if complexity_BxL is None else complexity_BxL.T
  vectors_LxBxF = None if vectors_BxLxF is None else jnp.swapaxes(vectors_BxLxF, 0, 1)

  def step(cache, inputs):
    position, tokens_B, complexity_B, vectors_BxF = inputs
    out, cache = decode_step(anira, params, cache, tokens_B, position, complexity_B, max_depth,
                             vectors_BxF)
    return cache, out

  _, outs = jax.lax.scan(step, cache, (jnp.arange(length, dtype=jnp.int32), tokens_BxL.T,
                                       complexity_LxB, vectors_LxBxF))
  swap = lambda x: jnp.swapaxes(x, 0, 1)
  depth_BxL = swap(outs.depth_B)
  decision = deciders.Decision(q_BxLxT=swap(outs.q_BxT), head_calls_BxL=swap(outs.head_calls_B),
                               readout_BxLxD=None)
  trajectory = recurrence.Trajectory(swap(outs.readout_BxD), depth_BxL, decision,
                                     jnp.max(depth_BxL), None)
  return Output(swap(outs.logits_BxV), trajectory)
