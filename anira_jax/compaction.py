"""Compacted inference: each iteration computes only the tokens that need it (DESIGN §4).

The masked inference loop (`recurrence.loop`) runs the core on every token at every iteration
and keeps the new state only where the decider says "run". Here each iteration instead gathers
the tokens that must be computed into a buffer of static size S (a *bucket*), runs the core's
layers on that buffer with their queries attending over a per-token key/value cache of the
whole sequence (causal by original position), and scatters the new states back. Work per
iteration is ∝ S, so a batch whose tokens mostly exit early costs ∝ Σ d_i, not n · max d.
Logits, depths and q equal the masked path's (tested for every decider).

What must be computed at iteration t. The masked path defines a frozen token's keys/values as
those of its frozen state *at iteration t*; this module reproduces that exactly:
- `active`: real (non-padding) tokens the decider runs at t. Their states change.
- layer-1 keys/values are a function of the token's own state alone. In the compacted phase the
  cache holds them for every token's current state: a compacted step projects only queries for
  layer 1 and, once it has the new states of its active tokens, writes their keys/values (the
  next iteration's, and a token that just froze keeps those). One dense keys/values-only pass
  makes the cache current when the dense phase hands over.
- with `core_layers` > 1 the keys/values of layer 2.. of a frozen token j depend on what its
  layer-1 query read, i.e. on every token k <= j. They are stale whenever some k <= j changed
  state, so those frozen tokens are recomputed too (their state is not updated): the compute
  set is `active | (valid & cumulative-or of dirty along the sequence)`. Exact, but a
  multi-layer core saves work only where the still-running tokens are late in the sequence.
- with an iteration embedding (or the `standard` unshared core), every frozen token's layer-1
  keys/values change each iteration (x = h + h0 + e_t); they are re-projected for the whole
  sequence at the start of each compacted iteration (keys/values only, ~1/6 of a block) and,
  with more than one layer, the whole sequence is recomputed, i.e. the dense path.

Buckets and the dense fall-back. The compute set's size is known only on device (for online
deciders it shrinks as tokens halt), so the recurrence stays on device, with no host round trip
per iteration and one compilation per (batch, length) shape, as `lax.while_loop`s in turn:
- a dense phase, while the batch's compute set exceeds `dense_fraction` of its B · L tokens:
  the ordinary full-sequence block, no conditionals — a batch in which no token halts costs the
  masked loop plus writing the key/value cache;
- then (active sets only shrink) one compacted loop per bucket size S, largest first, each
  running while the compute set fits S but not the next smaller size. The sizes are a geometric
  ladder (growth 1.25, multiples of 8, up to the dense threshold; see `bucket_sizes`), so above
  ~64 tokens a buffer wastes at most ~1/5 of its slots. (A single loop whose body picked the
  step with `lax.switch` copied the caches into and out of the chosen branch every iteration:
  ~0.5 ms an iteration at L = 512.)
Nothing recompiles across batches of one shape whatever the active counts (tested).

A buffer holds the compute sets of all rows, row after row in position order, so S covers the
batch's total: a [B, S] buffer would pad every row to the one with the most tokens left, which
at L = 512 and mean depth 2 cost ~1/5 more slots. The non-attention work runs on the flat
buffer; attention (`layers.attend_ragged`) reads each row's queries from it and attends over
that row's cached keys up to each query's own position (the CPU kernel skips the later keys).

Padding (token id 0) never runs (its state stays h0, its depth 0) and is not gathered; it must
trail the real tokens (every task here right-pads), and padding positions' logits and depths
are meaningless, as in the masked loop.
"""

from __future__ import annotations

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


class _Carry(NamedTuple):
  t: jax.Array  # iterations done
  h_BxLxD: jax.Array
  state: dict
  depth_BxL: jax.Array
  # The plan of iteration t + 1, made when iteration t ends (`plan`), so that the loops'
  # conditions are scalar compares:
  active_BxL: jax.Array  # real tokens that run it: their states change
  compute_BxL: jax.Array  # tokens it computes: the active ones and stale frozen ones
  count: jax.Array  # Σ compute_BxL, or 0 if no real token runs it (the recurrence is over)
  k_cache: tuple  # per core layer [B, L, H, K]: keys as compacted steps read them (layer 1's
  #                 are kept only in the compacted phase, where they follow every state)
  v_cache: tuple
  work: Work


def compacted_loop(anira: Anira, params: dict, h0_BxLxD: jax.Array, ctx: deciders.Context,
                   valid_BxL: jax.Array, *, buckets: Sequence[int],
                   ) -> tuple[recurrence.Trajectory, Work]:
  """The inference recurrence of `recurrence.loop`, compacted. Same decider protocol:
  start, then per iteration runs → core (on the compute set) → observe(full h), then finish."""
  net, decider, cfg = anira.network, anira.decider, anira.model_cfg
  batch, length, _ = h0_BxLxD.shape
  positions_L = jnp.arange(length)
  rotary_L = layers.rotary(positions_L, cfg.head_dim)  # looked up for gathered tokens
  cache_dtype = jnp.dtype(cfg.dtype)
  kv_shape = (batch, length, cfg.num_heads, cfg.head_dim)
  stale_every_iteration = cfg.iteration_embedding or cfg.kind == 'standard'
  dense_limit = buckets[-1] if buckets else 0  # compute sets larger than this run dense

  def dense_step(t, active_BxL, h_BxLxD, k_cache, v_cache):
    """The full-sequence core (Block.__call__ in pieces), caching the keys/values of layers 2..
    (layer 1's are rewritten by the `refresh` that runs before compacted steps)."""
    x_BxLxD = x0_BxLxD = net.core_input(params['model'], h_BxLxD, h0_BxLxD, t)
    k_cache, v_cache = list(k_cache), list(v_cache)
    for i, block in enumerate(net.core_blocks(params['model'], t)):
      q, k, v = layers.project(cfg, block, x_BxLxD, positions_L)
      if i > 0:
        k_cache[i], v_cache[i] = k.astype(cache_dtype), v.astype(cache_dtype)
      attn = layers.causal_attention(q, k, v)
      x_BxLxD = layers.update(cfg, block, x_BxLxD, attn)
    h_new_BxLxD = h_BxLxD + (x_BxLxD - x0_BxLxD)
    h_BxLxD = jnp.where(active_BxL[..., None], h_new_BxLxD, h_BxLxD)
    return h_BxLxD, tuple(k_cache), tuple(v_cache)

  def refresh(t, h_BxLxD, k_cache, v_cache):
    """Layer-1 keys/values of every token's current state at iteration t (one dense pass)."""
    block = net.core_blocks(params['model'], t)[0]
    x_BxLxD = net.core_input(params['model'], h_BxLxD, h0_BxLxD, t)
    k, v = layers.keys_values(cfg, block, x_BxLxD, positions_L)
    return ((k.astype(cache_dtype),) + tuple(k_cache[1:]),
            (v.astype(cache_dtype),) + tuple(v_cache[1:]))

  tokens = batch * length
  flat = lambda x_BxLx: x_BxLx.reshape((tokens,) + x_BxLx.shape[2:])  # [B·L, ...]

  def compact_step(size, t, compute_BxL, active_BxL, h_BxLxD, k_cache, v_cache):
    """The core on the compute set of every row gathered into one buffer of `size` tokens (row
    by row, in order); only active tokens keep results. Layer 1 reads every token's
    keys/values from the cache, current on entry."""
    idx_T = _indices(flat(compute_BxL), size)  # b·L + position; padding from B·L on
    real_T = idx_T < tokens
    # Padding slots read key 0 only, so the attention kernel's tiles of them stop at once.
    pos_T = jnp.where(real_T, idx_T % length, 0)
    row_starts_B1 = jnp.concatenate([jnp.zeros(1, jnp.int32),
                                     jnp.cumsum(jnp.sum(compute_BxL, axis=1, dtype=jnp.int32))])
    rot_1xT = layers.rotary_at(rotary_L, pos_T[None])
    # The layers take [batch, tokens, ...]: the buffer is one batch row of T tokens.
    h_1xTxD, h0_1xTxD = _gather(flat(h_BxLxD), idx_T)[None], _gather(flat(h0_BxLxD), idx_T)[None]
    x_1xTxD = x0_1xTxD = net.core_input(params['model'], h_1xTxD, h0_1xTxD, t)
    blocks = net.core_blocks(params['model'], t)
    scatter = lambda x_BxLx, idx_T, values_1xTx: _scatter(
        flat(x_BxLx), idx_T, values_1xTx[0]).reshape(x_BxLx.shape)
    k_cache, v_cache = list(k_cache), list(v_cache)
    for i, block in enumerate(blocks):
      if i == 0:
        q_1xTxHxK = layers.queries(cfg, block, x_1xTxD, rot_1xT)
      else:
        q_1xTxHxK, k, v = layers.project(cfg, block, x_1xTxD, rot_1xT)
        k_cache[i], v_cache[i] = scatter(k_cache[i], idx_T, k), scatter(v_cache[i], idx_T, v)
      attn_TxHxK = layers.attend_ragged(q_1xTxHxK[0], k_cache[i], v_cache[i], pos_T,
                                        row_starts_B1)
      x_1xTxD = layers.update(cfg, block, x_1xTxD, attn_TxHxK[None])
    keep_T = jnp.where(_gather(flat(active_BxL), idx_T) & real_T, idx_T,
                       idx_T + tokens)  # distinct and out of range: dropped
    h_new_1xTxD = h_1xTxD + (x_1xTxD - x0_1xTxD)
    h_BxLxD = scatter(h_BxLxD, keep_T, h_new_1xTxD)
    if not stale_every_iteration:  # the input h + h0 does not depend on t: write it now
      x_new_1xTxD = net.core_input(params['model'], h_new_1xTxD, h0_1xTxD, t + 1)
      k, v = layers.keys_values(cfg, blocks[0], x_new_1xTxD, rot_1xT)
      k_cache[0], v_cache[0] = scatter(k_cache[0], keep_T, k), scatter(v_cache[0], keep_T, v)
    return h_BxLxD, tuple(k_cache), tuple(v_cache)

  def plan(t, state, dirty_BxL):
    """(active, compute, count) of iteration t + 1, as `_Carry` holds them; `dirty`: the tokens
    whose states changed in iteration t."""
    active_BxL = (decider.runs(state, jnp.minimum(t + 1, ctx.max_depth)) > 0.5) & valid_BxL
    if cfg.core_layers > 1:
      stale_prefix_BxL = jnp.cumsum(dirty_BxL, axis=1, dtype=jnp.int32) > 0
      compute_BxL = active_BxL | (stale_prefix_BxL & valid_BxL)
    else:
      compute_BxL = active_BxL
    more = (t < ctx.max_depth) & jnp.any(active_BxL)
    return active_BxL, compute_BxL, jnp.where(more, jnp.sum(compute_BxL, dtype=jnp.int32), 0)

  def advance(carry: _Carry, h_BxLxD, k_cache, v_cache, work: Work) -> _Carry:
    """After the core ran iteration t = carry.t + 1: the decider observes every token's state
    and the next iteration is planned."""
    t = carry.t + 1
    state = decider.observe(params['decider'], carry.state, h_BxLxD, t)
    dirty_BxL = valid_BxL if stale_every_iteration else carry.active_BxL
    return _Carry(t, h_BxLxD, state, carry.depth_BxL + carry.active_BxL.astype(jnp.int32),
                  *plan(t, state, dirty_BxL), k_cache, v_cache, work)

  def dense_body(carry: _Carry) -> _Carry:
    h_BxLxD, k_cache, v_cache = dense_step(carry.t + 1, carry.active_BxL, carry.h_BxLxD,
                                           carry.k_cache, carry.v_cache)
    w = carry.work
    work = w._replace(dense_iterations=w.dense_iterations + 1,
                      token_slots=w.token_slots + batch * length)
    return advance(carry, h_BxLxD, k_cache, v_cache, work)

  def compacted_body(size: int):
    def body(carry: _Carry) -> _Carry:
      t, k_cache, v_cache = carry.t + 1, carry.k_cache, carry.v_cache
      if stale_every_iteration:
        k_cache, v_cache = refresh(t, carry.h_BxLxD, k_cache, v_cache)
      h_BxLxD, k_cache, v_cache = compact_step(size, t, carry.compute_BxL, carry.active_BxL,
                                               carry.h_BxLxD, k_cache, v_cache)
      w = carry.work
      work = w._replace(compacted_iterations=w.compacted_iterations + 1,
                        token_slots=w.token_slots + size,
                        refresh_slots=w.refresh_slots + batch * length * stale_every_iteration)
      return advance(carry, h_BxLxD, k_cache, v_cache, work)
    return body

  def refresh_carry(carry: _Carry) -> _Carry:
    k_cache, v_cache = refresh(carry.t + 1, carry.h_BxLxD, carry.k_cache, carry.v_cache)
    work = carry.work._replace(refresh_slots=carry.work.refresh_slots + batch * length)
    return carry._replace(k_cache=k_cache, v_cache=v_cache, work=work)

  zeros = lambda: tuple(jnp.zeros(kv_shape, cache_dtype) for _ in range(cfg.core_layers))
  zero = jnp.int32(0)
  state = decider.start(params['decider'], h0_BxLxD, ctx)
  init = _Carry(zero, h0_BxLxD, state, jnp.zeros((batch, length), jnp.int32),
                *plan(zero, state, valid_BxL), zeros(), zeros(), Work(zero, zero, zero, zero))

  def phases(carry: _Carry) -> _Carry:
    """Dense iterations while the compute set is above the largest bucket, then each bucket's
    compacted iterations, largest first."""
    carry = jax.lax.while_loop(lambda c: c.count > dense_limit, dense_body, carry)
    if not buckets:
      return carry
    if not stale_every_iteration:  # the cache holds the last dense iteration's inputs
      carry = jax.lax.cond(carry.count > 0, refresh_carry, lambda c: c, carry)
    for smaller, size in reversed(list(zip((0, *buckets[:-1]), buckets))):
      fits = lambda c, lo=smaller, hi=size: (lo < c.count) & (c.count <= hi)
      carry = jax.lax.while_loop(fits, compacted_body(size), carry)
    return carry

  # Active sets only shrink, so one pass of `phases` runs every iteration; a run set that grows
  # past its bucket again (no decider's does) ends the pass early and the next one picks it up.
  carry = jax.lax.while_loop(lambda c: c.count > 0, phases, init)
  decision = decider.finish(params['decider'], carry.state, carry.h_BxLxD, carry.t,
                            carry.depth_BxL)
  readout = carry.h_BxLxD if decision.readout_BxLxD is None else decision.readout_BxLxD
  trajectory = recurrence.Trajectory(readout, carry.depth_BxL, decision, carry.t, None)
  return trajectory, carry.work


def run_compacted(anira: Anira, params: dict, tokens_BxL: jax.Array, *,
                  complexity_BxL: jax.Array | None = None, max_depth: int | None = None,
                  buckets: Sequence[int] | None = None,
                  dense_fraction: float = 0.75) -> CompactedOutput:
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

  Returns:
    CompactedOutput(logits_BxLxV, trajectory, work). Depths of padding positions are 0.
  """
  cfg = anira.model_cfg
  max_depth = max_depth or cfg.max_depth
  if cfg.kind == 'standard' and max_depth != cfg.max_depth:
    raise ValueError('a standard (unshared) model has exactly max_depth layers; '
                     f'it cannot run {max_depth}')
  tokens = tokens_BxL.size
  if buckets is None:
    buckets = bucket_sizes(tokens, dense_fraction=dense_fraction)
  buckets = tuple(sorted({int(s) for s in buckets if 1 <= s < tokens}))
  ctx = deciders.Context(train=False, key=None, max_depth=max_depth,
                         complexity_BxL=complexity_BxL if anira.decider.reads_complexity else None)
  h0_BxLxD = anira.network.embed(params['model'], tokens_BxL)
  trajectory, work = compacted_loop(anira, params, h0_BxLxD, ctx, tokens_BxL != 0,
                                    buckets=buckets)
  logits_BxLxV = anira.network.readout(params['model'], trajectory.state_BxLxD)
  return CompactedOutput(logits_BxLxV, trajectory, work)
