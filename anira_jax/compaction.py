"""Compacted inference: each iteration computes only the tokens that need it (DESIGN §4).

The masked inference loop (`recurrence.loop`) runs the core on every token at every iteration
and keeps the new state only where the decider says "run". Here each iteration gathers the
tokens that must be computed into a buffer of static size S (a *bucket*), runs the core's layers
on it with queries attending over a per-token key/value cache of the whole sequence (causal by
original position), and scatters the new states back: work ∝ Σ d_i, not n · max d. Logits,
depths and q equal the masked path's (tested for every decider).

What iteration t must compute, so that a frozen token's keys/values are those of its frozen
state at iteration t, as in the masked path:
- the `active` tokens (real tokens the decider runs at t); their states change;
- layer-1 keys/values depend on the token's own state alone: the cache holds them for every
  token's current state, written when a token's state changes (one dense keys/values-only pass
  makes it current when the dense phase hands over);
- with `core_layers` > 1, a frozen token j's deeper keys/values depend on what its layer-1 query
  read, i.e. on every token k <= j, so frozen tokens after a changed one are recomputed too
  (states unchanged): exact, but a multi-layer core saves work only late in the sequence;
- with an iteration embedding (or the `standard` unshared core) every frozen token's layer-1
  keys/values change with t: they are re-projected for the whole sequence each iteration.

The compute set's size is known only on device, so the recurrence stays there (one compilation
per (batch, length) shape, no host round trip per iteration) as `lax.while_loop`s in turn: a
dense phase (the ordinary full-sequence block) while the compute set exceeds `dense_fraction`
of the B · L tokens, then one compacted loop per bucket size, largest first, each running while
the compute set fits its size but not the next smaller one (sizes: `bucket_sizes`). A buffer
holds the compute sets of all rows, row after row, so S covers the batch's total rather than B
times the busiest row; attention (`layers.attend_ragged`) reads each row's queries from it.
Nothing recompiles across batches of one shape (tested). How these choices were measured:
docs/performance.md.

Padding (token id 0) never runs (its state stays h0, its depth 0) and is not gathered; it must
trail the real tokens (every task here right-pads), and padding positions' logits and depths
are meaningless, as in the masked loop.
"""

from __future__ import annotations

import functools
from typing import NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from anira_jax import deciders, recurrence
from anira_jax.anira import Anira
from anira_jax.model import layers


class Work(NamedTuple):
  """What the compacted recurrence executed (int32 scalars), for benchmarks and checks."""

  dense_iterations: jax.Array  # iterations run by the dense step
  compacted_iterations: jax.Array  # iterations run on a gathered bucket
  token_slots: jax.Array  # Σ over iterations of the buffer size (B · L for a dense iteration)
  refresh_slots: jax.Array  # Σ of B · L over the dense keys/values-only passes


class CompactedOutput(NamedTuple):
  """`anira.Output` plus what was executed."""

  logits_BxLxV: jax.Array
  trajectory: recurrence.Trajectory
  work: Work


def bucket_sizes(tokens: int, *, dense_fraction: float = 0.75, min_size: int = 16,
                 growth: float = 1.25) -> tuple[int, ...]:
  """Static buffer sizes for a batch of `tokens` (B · L): a geometric ladder up to the dense
  threshold, each a multiple of 8 (of 1 below 64 tokens). Counts above the last use the dense
  step; with growth g a buffer wastes at most 1 − 1/g of its slots (more for the smallest
  sizes, rounded up to the multiple of 8)."""
  granule = 8 if tokens >= 64 else 1
  limit = int(dense_fraction * tokens)
  if limit < 1:
    return ()
  sizes, s = {limit}, float(min(min_size, limit))
  while s < limit:
    sizes.add(min(limit, int(-(-np.ceil(s) // granule) * granule)))
    s *= growth
  return tuple(sorted(sizes))


def _indices(mask_N: jax.Array, size: int) -> jax.Array:
  """[size]: the indices of mask's True entries, in order, then distinct out-of-range indices
  N, N+1, ... (dropped by scatters, clipped by gathers)."""
  slot_N = jnp.where(mask_N, jnp.cumsum(mask_N, dtype=jnp.int32) - 1, size)
  fill_S = mask_N.shape[0] + jnp.arange(size, dtype=jnp.int32)
  return fill_S.at[slot_N].set(jnp.arange(mask_N.shape[0], dtype=jnp.int32), mode='drop')


def _gather(x_Nx: jax.Array, idx_S: jax.Array) -> jax.Array:
  """x[idx] with out-of-range indices clipped (their results are never kept)."""
  return x_Nx[jnp.minimum(idx_S, x_Nx.shape[0] - 1)]


def _scatter(x_Nx: jax.Array, idx_S: jax.Array, values_Sx: jax.Array) -> jax.Array:
  """x with x[idx[s]] = values[s]; out-of-range indices are dropped."""
  return x_Nx.at[idx_S].set(values_Sx.astype(x_Nx.dtype), mode='drop', unique_indices=True)


class _Env(NamedTuple):
  """What every step of one compacted pass reads and never changes."""

  anira: Anira
  params: dict
  h0_BxLxD: jax.Array
  ctx: deciders.Context
  valid_BxL: jax.Array
  rotary_L: layers.Rotary  # RoPE at every position, looked up for gathered tokens
  stale_every_iteration: bool  # frozen tokens' layer-1 keys/values change with t

  @property
  def shape(self) -> tuple[int, int]:
    return self.h0_BxLxD.shape[:2]

  @property
  def tokens(self) -> int:
    return self.h0_BxLxD.shape[0] * self.h0_BxLxD.shape[1]


class _Carry(NamedTuple):
  t: jax.Array  # iterations done
  h_BxLxD: jax.Array
  state: dict
  depth_BxL: jax.Array
  # The plan of iteration t + 1, made when iteration t ends (`_plan`), so that the loops'
  # conditions are scalar compares:
  active_BxL: jax.Array  # real tokens that run it: their states change
  compute_BxL: jax.Array  # tokens it computes: the active ones and stale frozen ones
  count: jax.Array  # Σ compute_BxL, or 0 if no real token runs it (the recurrence is over)
  k_cache: tuple  # per core layer [B, L, H, K]: keys as compacted steps read them (layer 1's
  #                 are kept only in the compacted phase, where they follow every state)
  v_cache: tuple
  work: Work


def _flat(x_BxLx: jax.Array) -> jax.Array:
  """[B, L, ...] -> [B·L, ...]."""
  return x_BxLx.reshape((-1,) + x_BxLx.shape[2:])


def _scatter_rows(x_BxLx: jax.Array, idx_T: jax.Array, values_1xTx: jax.Array) -> jax.Array:
  """x with flat positions idx[s] set to values[0, s]; out-of-range indices are dropped."""
  return _scatter(_flat(x_BxLx), idx_T, values_1xTx[0]).reshape(x_BxLx.shape)


def _dense_step(env: _Env, t, active_BxL, h_BxLxD, k_cache, v_cache):
  """The full-sequence core (Block.__call__ in pieces), caching the keys/values of layers 2..
  (layer 1's are rewritten by the `_refresh` that runs before compacted steps)."""
  net, cfg = env.anira.network, env.anira.model_cfg
  positions_L = jnp.arange(env.shape[1])
  cache_dtype = jnp.dtype(cfg.dtype)
  x_BxLxD = x0_BxLxD = net.core_input(env.params['model'], h_BxLxD, env.h0_BxLxD, t)
  k_cache, v_cache = list(k_cache), list(v_cache)
  for i, block in enumerate(net.core_blocks(env.params['model'], t)):
    q, k, v = net.project(block, x_BxLxD, positions_L)
    if i > 0:
      k_cache[i], v_cache[i] = k.astype(cache_dtype), v.astype(cache_dtype)
    attn = layers.causal_attention(q, k, v, cfg.attention_window)
    x_BxLxD = net.update(block, x_BxLxD, attn)
  h_new_BxLxD = net.core_output(h_BxLxD, x0_BxLxD, x_BxLxD)
  h_BxLxD = jnp.where(active_BxL[..., None], h_new_BxLxD, h_BxLxD)
  return h_BxLxD, tuple(k_cache), tuple(v_cache)


def _refresh(env: _Env, t, h_BxLxD, k_cache, v_cache):
  """Layer-1 keys/values of every token's current state at iteration t (one dense pass)."""
  net, cfg = env.anira.network, env.anira.model_cfg
  block = net.core_blocks(env.params['model'], t)[0]
  x_BxLxD = net.core_input(env.params['model'], h_BxLxD, env.h0_BxLxD, t)
  k, v = net.keys_values(block, x_BxLxD, env.rotary_L)
  cache_dtype = jnp.dtype(cfg.dtype)
  return ((k.astype(cache_dtype),) + tuple(k_cache[1:]),
          (v.astype(cache_dtype),) + tuple(v_cache[1:]))


def _compact_step(env: _Env, size: int, t, compute_BxL, active_BxL, h_BxLxD, k_cache, v_cache):
  """The core on the compute set of every row gathered into one buffer of `size` tokens (row
  by row, in order); only active tokens keep results. Layer 1 reads every token's
  keys/values from the cache, current on entry."""
  net, model = env.anira.network, env.params['model']
  length, tokens = env.shape[1], env.tokens
  idx_T = _indices(_flat(compute_BxL), size)  # b·L + position; padding from B·L on
  real_T = idx_T < tokens
  # Padding slots read key 0 only, so the attention kernel's tiles of them stop at once.
  pos_T = jnp.where(real_T, idx_T % length, 0)
  row_starts_B1 = jnp.concatenate([jnp.zeros(1, jnp.int32),
                                   jnp.cumsum(jnp.sum(compute_BxL, axis=1, dtype=jnp.int32))])
  rot_1xT = layers.rotary_at(env.rotary_L, pos_T[None])
  # The layers take [batch, tokens, ...]: the buffer is one batch row of T tokens.
  h_1xTxD = _gather(_flat(h_BxLxD), idx_T)[None]
  h0_1xTxD = _gather(_flat(env.h0_BxLxD), idx_T)[None]
  x_1xTxD = x0_1xTxD = net.core_input(model, h_1xTxD, h0_1xTxD, t)
  blocks = net.core_blocks(model, t)
  k_cache, v_cache = list(k_cache), list(v_cache)
  for i, block in enumerate(blocks):
    if i == 0:
      q_1xTxHxK = net.queries(block, x_1xTxD, rot_1xT)
    else:
      q_1xTxHxK, k, v = net.project(block, x_1xTxD, rot_1xT)
      k_cache[i] = _scatter_rows(k_cache[i], idx_T, k)
      v_cache[i] = _scatter_rows(v_cache[i], idx_T, v)
    attn_TxHxK = layers.attend_ragged(q_1xTxHxK[0], k_cache[i], v_cache[i], pos_T,
                                      row_starts_B1, env.anira.model_cfg.attention_window)
    x_1xTxD = net.update(block, x_1xTxD, attn_TxHxK[None])
  keep_T = jnp.where(_gather(_flat(active_BxL), idx_T) & real_T, idx_T,
                     idx_T + tokens)  # distinct and out of range: dropped
  h_new_1xTxD = net.core_output(h_1xTxD, x0_1xTxD, x_1xTxD)
  h_BxLxD = _scatter_rows(h_BxLxD, keep_T, h_new_1xTxD)
  if not env.stale_every_iteration:  # the input h + h0 does not depend on t: write it now
    x_new_1xTxD = net.core_input(model, h_new_1xTxD, h0_1xTxD, t + 1)
    k, v = net.keys_values(blocks[0], x_new_1xTxD, rot_1xT)
    k_cache[0] = _scatter_rows(k_cache[0], keep_T, k)
    v_cache[0] = _scatter_rows(v_cache[0], keep_T, v)
  return h_BxLxD, tuple(k_cache), tuple(v_cache)


def _plan(env: _Env, t, state, dirty_BxL):
  """(active, compute, count) of iteration t + 1, as `_Carry` holds them; `dirty`: the tokens
  whose states changed in iteration t."""
  active_BxL, more = recurrence.active_next(env.anira.decider, state, t, env.ctx, env.valid_BxL)
  if env.anira.model_cfg.core_layers > 1:
    stale_prefix_BxL = jnp.cumsum(dirty_BxL, axis=1, dtype=jnp.int32) > 0
    compute_BxL = active_BxL | (stale_prefix_BxL & env.valid_BxL)
  else:
    compute_BxL = active_BxL
  return active_BxL, compute_BxL, jnp.where(more, jnp.sum(compute_BxL, dtype=jnp.int32), 0)


def _advance(env: _Env, carry: _Carry, h_BxLxD, k_cache, v_cache, work: Work) -> _Carry:
  """After the core ran iteration t = carry.t + 1: the decider observes every token's state
  and the next iteration is planned."""
  t = carry.t + 1
  state = recurrence.observe(env.anira.network, env.anira.decider, env.params, carry.state,
                             h_BxLxD, t)
  dirty_BxL = env.valid_BxL if env.stale_every_iteration else carry.active_BxL
  return _Carry(t, h_BxLxD, state, carry.depth_BxL + carry.active_BxL.astype(jnp.int32),
                *_plan(env, t, state, dirty_BxL), k_cache, v_cache, work)


def _dense_body(env: _Env, carry: _Carry) -> _Carry:
  h_BxLxD, k_cache, v_cache = _dense_step(env, carry.t + 1, carry.active_BxL, carry.h_BxLxD,
                                          carry.k_cache, carry.v_cache)
  w = carry.work
  work = w._replace(dense_iterations=w.dense_iterations + 1,
                    token_slots=w.token_slots + env.tokens)
  return _advance(env, carry, h_BxLxD, k_cache, v_cache, work)


def _compacted_body(env: _Env, size: int, carry: _Carry) -> _Carry:
  t, k_cache, v_cache = carry.t + 1, carry.k_cache, carry.v_cache
  if env.stale_every_iteration:
    k_cache, v_cache = _refresh(env, t, carry.h_BxLxD, k_cache, v_cache)
  h_BxLxD, k_cache, v_cache = _compact_step(env, size, t, carry.compute_BxL, carry.active_BxL,
                                            carry.h_BxLxD, k_cache, v_cache)
  w = carry.work
  work = w._replace(compacted_iterations=w.compacted_iterations + 1,
                    token_slots=w.token_slots + size,
                    refresh_slots=w.refresh_slots + env.tokens * env.stale_every_iteration)
  return _advance(env, carry, h_BxLxD, k_cache, v_cache, work)


def _refresh_carry(env: _Env, carry: _Carry) -> _Carry:
  k_cache, v_cache = _refresh(env, carry.t + 1, carry.h_BxLxD, carry.k_cache, carry.v_cache)
  work = carry.work._replace(refresh_slots=carry.work.refresh_slots + env.tokens)
  return carry._replace(k_cache=k_cache, v_cache=v_cache, work=work)


def _phases(env: _Env, buckets: tuple[int, ...], carry: _Carry) -> _Carry:
  """Dense iterations while the compute set is above the largest bucket, then each bucket's
  compacted iterations, largest first."""
  dense_limit = buckets[-1] if buckets else 0  # compute sets larger than this run dense
  carry = jax.lax.while_loop(lambda c: c.count > dense_limit,
                             functools.partial(_dense_body, env), carry)
  if not buckets:
    return carry
  if not env.stale_every_iteration:  # the cache holds the last dense iteration's inputs
    carry = jax.lax.cond(carry.count > 0, functools.partial(_refresh_carry, env),
                         lambda c: c, carry)
  for smaller, size in reversed(list(zip((0, *buckets[:-1]), buckets))):
    fits = lambda c, lo=smaller, hi=size: (lo < c.count) & (c.count <= hi)
    carry = jax.lax.while_loop(fits, functools.partial(_compacted_body, env, size), carry)
  return carry


def compacted_loop(anira: Anira, params: dict, h0_BxLxD: jax.Array, ctx: deciders.Context,
                   valid_BxL: jax.Array, *, buckets: Sequence[int],
                   ) -> tuple[recurrence.Trajectory, Work]:
  """The inference recurrence of `recurrence.loop`, compacted. Same decider protocol:
  start, then per iteration runs → core (on the compute set) → observe(full h), then finish."""
  cfg = anira.model_cfg
  batch, length, _ = h0_BxLxD.shape
  env = _Env(anira, params, h0_BxLxD, ctx, valid_BxL,
             rotary_L=anira.network.rotary(jnp.arange(length)),
             stale_every_iteration=cfg.iteration_embedding or cfg.kind == 'standard')
  kv_shape = (batch, length, cfg.kv_heads, cfg.head_dim)
  zeros = lambda: tuple(jnp.zeros(kv_shape, jnp.dtype(cfg.dtype))
                        for _ in range(cfg.core_layers))
  zero = jnp.int32(0)
  state = anira.decider.start(params['decider'], h0_BxLxD, ctx)
  init = _Carry(zero, anira.network.initial_state(h0_BxLxD), state,
                jnp.zeros((batch, length), jnp.int32),
                *_plan(env, zero, state, valid_BxL), zeros(), zeros(), Work(zero, zero, zero, zero))
  # Active sets only shrink, so one pass of `_phases` runs every iteration; a run set that grows
  # past its bucket again (no decider's does) ends the pass early and the next one picks it up.
  carry = jax.lax.while_loop(lambda c: c.count > 0,
                             functools.partial(_phases, env, tuple(buckets)), init)
  trajectory = recurrence.finish(anira.decider, params, carry.state, carry.h_BxLxD,
                                 carry.depth_BxL, carry.t)
  return trajectory, carry.work


def run_compacted(anira: Anira, params: dict, tokens_BxL: jax.Array, *,
                  complexity_BxL: jax.Array | None = None, max_depth: int | None = None,
                  buckets: Sequence[int] | None = None, dense_fraction: float = 0.75,
                  vectors_BxLxF: jax.Array | None = None) -> CompactedOutput:
  """Inference (train=False) logits and trajectory of `anira.apply(..., path='loop')`, computed
  with compaction. Jittable; one compilation per (batch, length) shape.

  Args:
    anira: the model.
    params: {'model', 'decider'} as for `Anira.apply`.
    tokens_BxL: int token ids, right-padded with 0.
    complexity_BxL: the task annotation, for the oracle decider.
    max_depth: T at evaluation (the trained D by default).
    buckets: static buffer sizes, in tokens of the whole batch; a compute set larger than the
      largest runs the dense step. Default: `bucket_sizes(B * L, dense_fraction=...)`.
    dense_fraction: where the default ladder ends and the dense step takes over.
    vectors_BxLxF: the task's real-valued inputs, for a model with `vector_size` > 0.

  Returns:
    CompactedOutput(logits_BxLxV, trajectory, work). Depths of padding positions are 0.
  """
  ctx = recurrence.context(anira.decider, anira.model_cfg, train=False,
                           complexity_BxL=complexity_BxL, max_depth=max_depth)
  tokens = tokens_BxL.size
  if buckets is None:
    buckets = bucket_sizes(tokens, dense_fraction=dense_fraction)
  buckets = tuple(sorted({int(s) for s in buckets if 1 <= s < tokens}))
  h0_BxLxD = anira.network.embed(params['model'], tokens_BxL, vectors_BxLxF)
  trajectory, work = compacted_loop(anira, params, h0_BxLxD, ctx, tokens_BxL != 0,
                                    buckets=buckets)
  logits_BxLxV = anira.network.readout(params['model'], trajectory.state_BxLxD)
  return CompactedOutput(logits_BxLxV, trajectory, work)
