"""Flax layers of the recurrent Transformer: pre-norm causal self-attention blocks.

Layers hold no state between calls; the network (`network.py`) owns their parameters and calls
them as pure functions. Softmax and norms run in float32 whatever the matmul dtype.

A block is also usable in pieces, for execution schedules that do not run every token at every
step (compacted inference, KV-cache decoding):

    q, k, v = project(cfg, block_params, x, positions)      # pre-norm, q/k/v, RoPE
                                                             # (or queries / keys_values alone;
                                                             # positions may be a `Rotary`)
    attn = attend(q, k_cache, v_cache, q_positions)      # causal by original position
                                                             # (attend_ragged: rows of any size)
    x = update(cfg, block_params, x, attn)                   # output projection, MLP, residuals

`Block.__call__` is these three on one sequence, with `causal_attention` (the same function as
`attend` over the whole sequence; tested) in the middle, so the pieces and the block cannot
drift apart; `block_params` is one `layer_i` entry of a `Stack`'s parameter tree. Another model
family (`llama.py`) is another block class with the same methods; `Network` calls whichever
its config names.

Grouped-query attention: keys and values may have fewer heads than queries (KV dividing H);
the attention functions below give query head h the key/value head h // (H / KV), so caches
hold KV heads.

On one CPU device, float32 attention with head dims 16/32/64/128 runs in a fused kernel
(`cpu_attention`, compiled on first use); elsewhere, or without a C++ compiler, as the plain JAX
below. Both compute the same function (tests/test_cpu_attention.py).

A model with an attention window (`ModelConfig.attention_window` W > 0: a query sees itself and
the W - 1 positions before it) attends in plain JAX on every path: the kernel and the blocked
causal path implement only the full causal mask. Every function below takes the window, so
training, the inference loop, compaction and decoding apply the same mask.
"""

from __future__ import annotations

from typing import NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax.ad_checkpoint import checkpoint_name

from anira_jax.model.config import ModelConfig
from anira_jax.model import cpu_attention


class Rotary(NamedTuple):
  """RoPE's sin and cos at some positions: [B or 1, L, 1, K/2] each, float32 (K = head dim)."""

  sin: jax.Array
  cos: jax.Array


def rotary(positions: jax.Array, head_dim: int, base: float = 10_000.0,
           freq_K: np.ndarray | None = None) -> Rotary:
  """The rotary angles' sin and cos at `positions`, [L] (shared by the batch) or [B, L], for
  frequencies base^(-2k/head_dim) (or `freq_K`, [head_dim / 2], e.g. a scaled RoPE's)."""
  half = head_dim // 2
  if freq_K is None:
    freq_K = base ** (-jnp.arange(half, dtype=jnp.float32) / half)
  freq_K = jnp.asarray(freq_K, jnp.float32)
  positions_BxL = positions[None] if positions.ndim == 1 else positions
  angle_BxLxK = positions_BxL.astype(jnp.float32)[:, :, None] * freq_K[None, None, :]
  return Rotary(jnp.sin(angle_BxLxK)[:, :, None, :], jnp.cos(angle_BxLxK)[:, :, None, :])


def rotary_at(table: Rotary, positions_BxS: jax.Array) -> Rotary:
  """Rows `positions` of a table over positions 0..N-1 (`rotary(jnp.arange(N), ...)`).

  For gathered positions, a lookup rather than `rotary(positions_BxS)`: XLA:CPU fuses that
  one's sin and cos into each consumer and so evaluates them once per head and per half (a
  compacted step of ~300 tokens a row at L = 512 spent ~5 of its ~38 ms on them).
  """
  take = lambda x: jnp.take(x[0], positions_BxS, axis=0)
  return Rotary(take(table.sin), take(table.cos))


def rope(x_BxLxHxK: jax.Array, positions: jax.Array | Rotary) -> jax.Array:
  """Rotary position embedding (Su et al. 2021) on the last axis, in float32.

  `positions` is [L] (shared by the batch) or [B, L] (per row, e.g. gathered tokens), or their
  `Rotary` when the caller has it already.
  """
  rot = positions if isinstance(positions, Rotary) else rotary(positions, x_BxLxHxK.shape[-1])
  x1, x2 = jnp.split(x_BxLxHxK.astype(jnp.float32), 2, axis=-1)
  out = jnp.concatenate([x1 * rot.cos - x2 * rot.sin, x2 * rot.cos + x1 * rot.sin], axis=-1)
  return out.astype(x_BxLxHxK.dtype)


def sinusoidal(positions_L: jax.Array, width: int) -> jax.Array:
  """The fixed sinusoidal position table of Vaswani et al. 2017: [L, width] float32."""
  half = width // 2
  freq = 10_000.0 ** (-np.arange(half) / half)
  angle = positions_L.astype(jnp.float32)[:, None] * freq[None, :]
  return jnp.concatenate([jnp.sin(angle), jnp.cos(angle)], axis=-1)


class Block(nn.Module):
  """Pre-norm causal self-attention + MLP, with residuals.

  Parameter names: attn_norm, query, key, value, out, mlp_norm, mlp_in, mlp_out.
  """

  cfg: ModelConfig

  def setup(self):
    cfg = self.cfg
    dtype = jnp.dtype(cfg.dtype)
    self.attn_norm = nn.RMSNorm(epsilon=cfg.norm_eps, dtype=jnp.float32)
    self.query = nn.DenseGeneral((cfg.num_heads, cfg.head_dim), dtype=dtype)
    self.key = nn.DenseGeneral((cfg.kv_heads, cfg.head_dim), dtype=dtype)
    self.value = nn.DenseGeneral((cfg.kv_heads, cfg.head_dim), dtype=dtype)
    self.out = nn.DenseGeneral(cfg.width, axis=(-2, -1), dtype=dtype)
    self.mlp_norm = nn.RMSNorm(epsilon=cfg.norm_eps, dtype=jnp.float32)
    self.mlp_in = nn.DenseGeneral(cfg.hidden, dtype=dtype)
    self.mlp_out = nn.DenseGeneral(cfg.width, dtype=dtype)

  @staticmethod
  def rotary(cfg: ModelConfig, positions: jax.Array) -> Rotary:
    """RoPE's angles at `positions` for this block's heads."""
    return rotary(positions, cfg.head_dim, cfg.rope_theta)

  def _rope(self, x_BxLxHxK, positions):
    if self.cfg.position != 'rope':
      return x_BxLxHxK
    if not isinstance(positions, Rotary):
      positions = self.rotary(self.cfg, positions)
    return rope(x_BxLxHxK, positions)

  def project(self, x_BxLxD: jax.Array, positions: jax.Array | Rotary):
    """(q, k, v), each [B, L, H, K], of the block input x at `positions` ([L] or [B, L], or
    their `Rotary`)."""
    h_BxLxD = self.attn_norm(x_BxLxD)
    q_BxLxHxK = self._rope(self.query(h_BxLxD), positions)
    k_BxLxHxK = self._rope(self.key(h_BxLxD), positions)
    return q_BxLxHxK, k_BxLxHxK, self.value(h_BxLxD)

  def queries(self, x_BxLxD: jax.Array, positions: jax.Array | Rotary):
    """q only: for tokens whose keys/values are already in a cache."""
    return self._rope(self.query(self.attn_norm(x_BxLxD)), positions)

  def keys_values(self, x_BxLxD: jax.Array, positions: jax.Array | Rotary):
    """(k, v) only: what a token that is not queried this step shows to the others."""
    h_BxLxD = self.attn_norm(x_BxLxD)
    return self._rope(self.key(h_BxLxD), positions), self.value(h_BxLxD)

  def update(self, x_BxLxD: jax.Array, attn_BxLxHxK: jax.Array) -> jax.Array:
    """The block output from its input and the attention result: out-projection, MLP, residuals."""
    x_BxLxD = x_BxLxD + self.out(attn_BxLxHxK)
    h_BxLxD = self.mlp_norm(x_BxLxD)
    h_BxLxF = nn.gelu(self.mlp_in(h_BxLxD))
    return x_BxLxD + self.mlp_out(h_BxLxF).astype(x_BxLxD.dtype)

  def __call__(self, x_BxLxD: jax.Array, positions_L: jax.Array) -> jax.Array:
    """The block on one whole sequence; `positions_L` is 0..L-1 (the mask is by index)."""
    q_BxLxHxK, k_BxLxHxK, v_BxLxHxK = self.project(x_BxLxD, positions_L)
    attn_BxLxHxK = causal_attention(q_BxLxHxK, k_BxLxHxK, v_BxLxHxK, self.cfg.attention_window)
    return self.update(x_BxLxD, attn_BxLxHxK)


def project(cfg: ModelConfig, params: dict, x_BxLxD: jax.Array,
            positions: jax.Array | Rotary):
  """`Block.project` as a pure function of one block's params."""
  return Block(cfg).apply({'params': params}, x_BxLxD, positions, method=Block.project)


def queries(cfg: ModelConfig, params: dict, x_BxLxD: jax.Array,
            positions: jax.Array | Rotary):
  """`Block.queries` as a pure function of one block's params."""
  return Block(cfg).apply({'params': params}, x_BxLxD, positions, method=Block.queries)


def keys_values(cfg: ModelConfig, params: dict, x_BxLxD: jax.Array,
                positions: jax.Array | Rotary):
  """`Block.keys_values` as a pure function of one block's params."""
  return Block(cfg).apply({'params': params}, x_BxLxD, positions, method=Block.keys_values)


def update(cfg: ModelConfig, params: dict, x_BxLxD: jax.Array, attn_BxLxHxK: jax.Array):
  """`Block.update` as a pure function of one block's params."""
  return Block(cfg).apply({'params': params}, x_BxLxD, attn_BxLxHxK, method=Block.update)


def share_kv(q_BxSxHxK: jax.Array, k_BxNxGxK: jax.Array, v_BxNxGxK: jax.Array):
  """Keys and values with one head per query head: head h reads key/value head h // (H / G)
  (grouped-query attention; unchanged when G = H)."""
  groups = q_BxSxHxK.shape[-2] // k_BxNxGxK.shape[-2]
  if groups == 1:
    return k_BxNxGxK, v_BxNxGxK
  return jnp.repeat(k_BxNxGxK, groups, axis=-2), jnp.repeat(v_BxNxGxK, groups, axis=-2)


def causal_mask(positions_L: jax.Array, window: int = 0) -> jax.Array:
  """[1, L, L]: query i sees key j iff j <= i, and with a window W > 0 also i - j < W (one
  sequence, shared by the batch)."""
  return visible(positions_L[:, None], positions_L[None, :], window)[None]


def visible(q_positions: jax.Array, k_positions: jax.Array, window: int = 0) -> jax.Array:
  """Whether a query at `q_positions` sees a key at `k_positions` (broadcast together): the key
  is not later, and with a window W > 0 fewer than W positions earlier."""
  seen = k_positions <= q_positions
  return seen & (q_positions - k_positions < window) if window else seen


def attention(q_BxSxHxK: jax.Array, k_BxNxHxK: jax.Array, v_BxNxHxK: jax.Array,
              mask_BxSxN: jax.Array) -> jax.Array:
  """Softmax attention of S queries over N keys where `mask` (broadcast over heads) allows.
  Returns [B, S, H, K]. Differentiated by JAX (training attends with `causal_attention`, which
  has its own backward pass).

  Written out rather than `jax.nn.dot_product_attention`, which XLA:CPU compiles into two
  extra passes over the [B, H, S, N] probabilities (a normalisation and a transposed copy):
  here keys are laid out [B, H, K, N] for the score matmul, and the exponentials enter the value
  matmul unnormalised, the output divided by the row sums (docs/performance.md). The same
  function to float rounding (tests/test_layers.py). Scores and softmax are float32 whatever the
  matmul dtype; a row with no visible key (never formed here) would average all values.
  """
  q_BxHxSxK, k_BxHxKxN, v_BxHxNxK = _heads_major(q_BxSxHxK, k_BxNxHxK, v_BxNxHxK)
  out_BxHxSxK, _ = _attention_forward(q_BxHxSxK, k_BxHxKxN, v_BxHxNxK, mask_BxSxN)
  return _heads_last(out_BxHxSxK, q_BxSxHxK.dtype)


def _heads_major(q_BxSxHxK, k_BxNxHxK, v_BxNxHxK):
  """The layouts `_attention_forward` reads, with the 1/sqrt(K) scale folded into q."""
  scale = q_BxSxHxK.shape[-1] ** -0.5
  q_BxHxSxK = jnp.transpose(q_BxSxHxK * jnp.asarray(scale, q_BxSxHxK.dtype), (0, 2, 1, 3))
  return (q_BxHxSxK, jnp.transpose(k_BxNxHxK, (0, 2, 3, 1)),
          jnp.transpose(v_BxNxHxK, (0, 2, 1, 3)))


def _heads_last(x_BxHxSxK, dtype):
  """[B, H, S, K] -> [B, S, H, K] in `dtype`."""
  return jnp.transpose(x_BxHxSxK, (0, 2, 1, 3)).astype(dtype)


def _attention_forward(q_BxHxSxK, k_BxHxKxN, v_BxHxNxK, mask_BxSxN):
  """(out [B, H, S, K], logsumexp [B, H, S]) of softmax(q k + mask) v, both float32."""
  scores_BxHxSxN = jnp.einsum('bhsk,bhkn->bhsn', q_BxHxSxK, k_BxHxKxN,
                              preferred_element_type=jnp.float32)
  scores_BxHxSxN = jnp.where(mask_BxSxN[:, None], scores_BxHxSxN, -1e30)
  # The max only keeps exp in range; holding it constant leaves the gradient unchanged.
  max_BxHxSx1 = jax.lax.stop_gradient(jnp.max(scores_BxHxSxN, axis=-1, keepdims=True))
  weights_BxHxSxN = jnp.exp(scores_BxHxSxN - max_BxHxSx1)
  total_BxHxSx1 = jnp.sum(weights_BxHxSxN, axis=-1, keepdims=True)
  out_BxHxSxK = jnp.einsum('bhsn,bhnk->bhsk', weights_BxHxSxN.astype(v_BxHxNxK.dtype),
                           v_BxHxNxK, preferred_element_type=jnp.float32) / total_BxHxSx1
  return out_BxHxSxK, (max_BxHxSx1 + jnp.log(total_BxHxSx1))[..., 0]


# Query block of `causal_attention`'s plain JAX path (the fastest measured: docs/performance.md).
CAUSAL_BLOCK = 128

# Names of what `causal_attention` keeps for its backward pass, for checkpoint policies
# (`recurrence.RESIDUALS_POLICY` saves them rather than recomputing the forward attention).
ATTENTION_OUT = 'attention_out'
ATTENTION_LOGSUMEXP = 'attention_logsumexp'


def _causal_blocks(length: int) -> list[tuple[int, int]]:
  """[start, stop) of each query block; block [start, stop) sees keys [0, stop)."""
  return [(start, min(start + CAUSAL_BLOCK, length)) for start in range(0, length, CAUSAL_BLOCK)]


def causal_attention(q_BxLxHxK: jax.Array, k_BxLxHxK: jax.Array,
                     v_BxLxHxK: jax.Array, window: int = 0) -> jax.Array:
  """`attention` with the causal mask of one sequence (query i sees keys j <= i; with a window
  W > 0, only i - W < j <= i): [B, L, H, K].

  In the fused CPU kernel where it applies (`cpu_attention.supports`), else in plain JAX
  (`blocked_causal_attention`). Both have their own backward pass and save, for the checkpoint
  policy, their output and row log-sum-exp under ATTENTION_OUT and ATTENTION_LOGSUMEXP. With a
  window, `attention` under `causal_mask`, differentiated by JAX. Keys/values may have fewer
  heads (`share_kv`).
  """
  k_BxLxHxK, v_BxLxHxK = share_kv(q_BxLxHxK, k_BxLxHxK, v_BxLxHxK)
  if window:
    positions_L = jnp.arange(q_BxLxHxK.shape[1])
    return attention(q_BxLxHxK, k_BxLxHxK, v_BxLxHxK, causal_mask(positions_L, window))
  if cpu_attention.supports(q_BxLxHxK, k_BxLxHxK, v_BxLxHxK):
    batch, length = q_BxLxHxK.shape[:2]
    positions_BxL = jnp.broadcast_to(jnp.arange(length, dtype=jnp.int32), (batch, length))
    return _fused_attention(q_BxLxHxK, k_BxLxHxK, v_BxLxHxK, positions_BxL)
  return blocked_causal_attention(q_BxLxHxK, k_BxLxHxK, v_BxLxHxK)


@jax.custom_vjp
def blocked_causal_attention(q_BxLxHxK: jax.Array, k_BxLxHxK: jax.Array,
                             v_BxLxHxK: jax.Array) -> jax.Array:
  """`causal_attention` in plain JAX: query blocks of CAUSAL_BLOCK that each read only the keys
  up to their own last position, with its own backward pass (`_causal_attention_bwd`).

  Blocking skips the score blocks that the mask would discard (about half of them for long
  sequences) and keeps each block's [B, H, 128, <= L] scores small enough to stay in cache.
  Returns [B, L, H, K]; the same function as `attention(q, k, v, causal_mask(arange(L)))`,
  values and gradients (tests/test_layers.py).
  """
  out_BxHxLxK, _ = _causal_forward(q_BxLxHxK, k_BxLxHxK, v_BxLxHxK)
  return _heads_last(out_BxHxLxK, q_BxLxHxK.dtype)


def _causal_forward(q_BxLxHxK, k_BxLxHxK, v_BxLxHxK):
  """(out [B, H, L, K], logsumexp [B, H, L]) of the causal attention, float32, block by block."""
  q_BxHxLxK, k_BxHxKxL, v_BxHxLxK = _heads_major(q_BxLxHxK, k_BxLxHxK, v_BxLxHxK)
  positions_L = jnp.arange(q_BxLxHxK.shape[1])
  outs, logsumexps = [], []
  for start, stop in _causal_blocks(q_BxLxHxK.shape[1]):
    out, logsumexp = _attention_forward(
        q_BxHxLxK[:, :, start:stop], k_BxHxKxL[..., :stop], v_BxHxLxK[:, :, :stop],
        causal_mask(positions_L[:stop])[:, start:])
    outs.append(out)
    logsumexps.append(logsumexp)
  join = lambda xs: jnp.concatenate(xs, axis=2) if len(xs) > 1 else xs[0]
  return join(outs), join(logsumexps)


def _causal_attention_fwd(q_BxLxHxK, k_BxLxHxK, v_BxLxHxK):
  out_BxHxLxK, logsumexp_BxHxL = _causal_forward(q_BxLxHxK, k_BxLxHxK, v_BxLxHxK)
  out_BxHxLxK = checkpoint_name(out_BxHxLxK, ATTENTION_OUT)
  logsumexp_BxHxL = checkpoint_name(logsumexp_BxHxL, ATTENTION_LOGSUMEXP)
  return (_heads_last(out_BxHxLxK, q_BxLxHxK.dtype),
          (q_BxLxHxK, k_BxLxHxK, v_BxLxHxK, out_BxHxLxK, logsumexp_BxHxL))


def _causal_attention_bwd(residuals, dout_BxLxHxK):
  """Cotangents of (q, k, v): FlashAttention's backward pass (Dao et al. 2022), block by block.

  From the saved output and row log-sum-exp it recomputes each block's probabilities once, and
  forms every gradient in the transposed [.., keys, queries] orientation, so that each of the
  five matmuls per block contracts the minor axis of its left operand, which is what XLA:CPU
  runs in YNNPACK. The gradients leave in the caller's [B, L, H, K] layout: heads-major, XLA
  folded the final swaps into the dq and dk matmuls and ran them outside YNNPACK
  (docs/performance.md).
  """
  q_BxLxHxK, k_BxLxHxK, v_BxLxHxK, out_BxHxLxK, logsumexp_BxHxL = residuals
  length, head_dim = q_BxLxHxK.shape[1], q_BxLxHxK.shape[-1]
  dtype = v_BxLxHxK.dtype
  q_BxHxLxK, k_BxHxKxL, v_BxHxLxK = _heads_major(q_BxLxHxK, k_BxLxHxK, v_BxLxHxK)
  k_BxHxLxK = jnp.transpose(k_BxLxHxK, (0, 2, 1, 3))
  dout_BxHxLxK = jnp.transpose(dout_BxLxHxK, (0, 2, 1, 3)).astype(dtype)
  row_dot_BxHxL = jnp.sum(dout_BxHxLxK * out_BxHxLxK, axis=-1)  # Σ_n p dp, from the output
  positions_L = jnp.arange(length)
  dqs_BxHxKxS, dk_BxHxLxK, dv_BxHxLxK = [], 0.0, 0.0
  for start, stop in _causal_blocks(length):  # queries [start, stop) = S, keys [0, stop) = N
    q_BxHxSxK, dout_BxHxSxK = q_BxHxLxK[:, :, start:stop], dout_BxHxLxK[:, :, start:stop]
    mask_BxNxS = jnp.swapaxes(causal_mask(positions_L[:stop])[:, start:], -1, -2)
    scores_BxHxNxS = jnp.einsum('bhnk,bhsk->bhns', k_BxHxLxK[:, :, :stop], q_BxHxSxK,
                                preferred_element_type=jnp.float32)
    scores_BxHxNxS = jnp.where(mask_BxNxS[:, None], scores_BxHxNxS, -1e30)
    probs_BxHxNxS = jnp.exp(scores_BxHxNxS - logsumexp_BxHxL[:, :, None, start:stop])
    dv_BxHxNxK = jnp.einsum('bhns,bhsk->bhnk', probs_BxHxNxS.astype(dtype), dout_BxHxSxK,
                            preferred_element_type=jnp.float32)
    dprobs_BxHxNxS = jnp.einsum('bhnk,bhsk->bhns', v_BxHxLxK[:, :, :stop], dout_BxHxSxK,
                                preferred_element_type=jnp.float32)
    dscores_BxHxNxS = (probs_BxHxNxS * (dprobs_BxHxNxS - row_dot_BxHxL[:, :, None, start:stop])
                       ).astype(dtype)
    dk_BxHxNxK = jnp.einsum('bhns,bhsk->bhnk', dscores_BxHxNxS, q_BxHxSxK,
                            preferred_element_type=jnp.float32)
    dqs_BxHxKxS.append(jnp.einsum('bhkn,bhns->bhks', k_BxHxKxL[..., :stop], dscores_BxHxNxS,
                                  preferred_element_type=jnp.float32))
    later_keys = ((0, 0), (0, 0), (0, length - stop), (0, 0))
    dk_BxHxLxK = dk_BxHxLxK + jnp.pad(dk_BxHxNxK, later_keys)
    dv_BxHxLxK = dv_BxHxLxK + jnp.pad(dv_BxHxNxK, later_keys)
  dq_BxHxKxL = jnp.concatenate(dqs_BxHxKxS, axis=-1) if len(dqs_BxHxKxS) > 1 else dqs_BxHxKxS[0]
  dq_BxLxHxK = jnp.transpose(dq_BxHxKxL, (0, 3, 1, 2)) * head_dim ** -0.5  # q was scaled
  return (dq_BxLxHxK.astype(q_BxLxHxK.dtype), _heads_last(dk_BxHxLxK, k_BxLxHxK.dtype),
          _heads_last(dv_BxHxLxK, dtype))


blocked_causal_attention.defvjp(_causal_attention_fwd, _causal_attention_bwd)


def attend(q_BxSxHxK: jax.Array, k_BxNxHxK: jax.Array, v_BxNxHxK: jax.Array,
           q_positions_BxS: jax.Array, window: int = 0) -> jax.Array:
  """Attention of S queries over a cache of N keys at positions 0..N-1, causal by ORIGINAL
  sequence position: query s sees key n iff n <= q_positions[b, s] (which must be < N), and
  with a window W > 0 also n > q_positions[b, s] - W (`visible`).

  So a gathered subset of queries over the whole key cache gives what the full causal block
  gives those tokens. Returns [B, S, H, K]. In the fused CPU kernel where it applies, which also
  skips, per tile of queries, the keys past the tile's largest position. Keys/values may have
  fewer heads (`share_kv`).
  """
  k_BxNxHxK, v_BxNxHxK = share_kv(q_BxSxHxK, k_BxNxHxK, v_BxNxHxK)
  if not window and cpu_attention.supports(q_BxSxHxK, k_BxNxHxK, v_BxNxHxK):
    return _fused_attention(q_BxSxHxK, k_BxNxHxK, v_BxNxHxK, q_positions_BxS)
  return plain_attend(q_BxSxHxK, k_BxNxHxK, v_BxNxHxK, q_positions_BxS, window)


def plain_attend(q_BxSxHxK: jax.Array, k_BxNxHxK: jax.Array, v_BxNxHxK: jax.Array,
                 q_positions_BxS: jax.Array, window: int = 0) -> jax.Array:
  """`attend` in plain JAX: every query scored against all N keys, the invisible ones masked."""
  mask_BxSxN = visible(q_positions_BxS[:, :, None], jnp.arange(k_BxNxHxK.shape[1])[None, None],
                       window)
  return attention(q_BxSxHxK, k_BxNxHxK, v_BxNxHxK, mask_BxSxN)


def attend_ragged(q_TxHxK: jax.Array, k_BxNxHxK: jax.Array, v_BxNxHxK: jax.Array,
                  q_positions_T: jax.Array, row_starts_B1: jax.Array,
                  window: int = 0) -> jax.Array:
  """`attend` for rows with different numbers of queries, all in one [T, H, K] array: row b's
  are q[row_starts[b] : row_starts[b + 1]] (row_starts [B + 1], ascending from 0); queries past
  row_starts[B] are padding, their output zeros. Returns [T, H, K]. Inference only.

  Compaction's layout (a [B, S] one would pad every row to the busiest). Where the CPU kernel
  applies it reads this layout as it is; the plain JAX path places row b's queries in slots 0..
  of a [B, min(T, N)] layout, so its attention may cost up to a full causal pass. Keys/values
  may have fewer heads (`share_kv`); `window` as in `attend`.
  """
  k_BxNxHxK, v_BxNxHxK = share_kv(q_TxHxK, k_BxNxHxK, v_BxNxHxK)
  if not window and cpu_attention.supports(q_TxHxK, k_BxNxHxK, v_BxNxHxK):
    return cpu_attention.ragged_forward(q_TxHxK, k_BxNxHxK, v_BxNxHxK, q_positions_T,
                                        row_starts_B1)[0]
  total, (batch, length) = q_TxHxK.shape[0], k_BxNxHxK.shape[:2]
  t_T = jnp.arange(total)
  rows_T = jnp.sum(row_starts_B1[None, 1:] <= t_T[:, None], axis=1)  # B for padding
  slots_T = t_T - row_starts_B1[rows_T]
  slots = min(total, length)
  q_BxSxHxK = jnp.zeros((batch, slots) + q_TxHxK.shape[1:], q_TxHxK.dtype).at[
      rows_T, slots_T].set(q_TxHxK, mode='drop')
  positions_BxS = jnp.zeros((batch, slots), jnp.int32).at[rows_T, slots_T].set(
      q_positions_T.astype(jnp.int32), mode='drop')
  out_BxSxHxK = plain_attend(q_BxSxHxK, k_BxNxHxK, v_BxNxHxK, positions_BxS, window)
  out_TxHxK = out_BxSxHxK[jnp.minimum(rows_T, batch - 1), jnp.minimum(slots_T, slots - 1)]
  return jnp.where((rows_T < batch)[:, None, None], out_TxHxK, 0).astype(q_TxHxK.dtype)


@jax.custom_vjp
def _fused_attention(q_BxSxHxK, k_BxNxHxK, v_BxNxHxK, q_positions_BxS):
  """`attend` in the CPU kernel, with the kernel's backward pass."""
  return cpu_attention.forward(q_BxSxHxK, k_BxNxHxK, v_BxNxHxK, q_positions_BxS)[0]


def _fused_attention_fwd(q_BxSxHxK, k_BxNxHxK, v_BxNxHxK, q_positions_BxS):
  out_BxSxHxK, logsumexp_BxSxH = cpu_attention.forward(q_BxSxHxK, k_BxNxHxK, v_BxNxHxK,
                                                       q_positions_BxS)
  out_BxSxHxK = checkpoint_name(out_BxSxHxK, ATTENTION_OUT)
  logsumexp_BxSxH = checkpoint_name(logsumexp_BxSxH, ATTENTION_LOGSUMEXP)
  return out_BxSxHxK, (q_BxSxHxK, k_BxNxHxK, v_BxNxHxK, q_positions_BxS, out_BxSxHxK,
                       logsumexp_BxSxH)


def _fused_attention_bwd(residuals, dout_BxSxHxK):
  return (*cpu_attention.backward(*residuals, dout_BxSxHxK), None)  # positions: no cotangent


_fused_attention.defvjp(_fused_attention_fwd, _fused_attention_bwd)


class Stack(nn.Module):
  """`num_layers` blocks applied in order (the prelude, the core, or the coda's layers)."""

  cfg: ModelConfig
  num_layers: int
  block: type = Block  # the model family's block class

  @nn.compact
  def __call__(self, x_BxLxD: jax.Array, positions_L: jax.Array) -> jax.Array:
    for i in range(self.num_layers):
      x_BxLxD = self.block(self.cfg, name=f'layer_{i}')(x_BxLxD, positions_L)
    return x_BxLxD


def stack_blocks(params: dict | None, num_layers: int) -> list[dict]:
  """The per-block params of a `Stack`, in order."""
  return [params[f'layer_{i}'] for i in range(num_layers)]


class Readout(nn.Module):
  """The coda: its layers, a final norm and the LM head, from a token's exit state to logits."""

  cfg: ModelConfig

  def setup(self):
    self.coda = Stack(self.cfg, self.cfg.coda_layers)
    self.final_norm = nn.RMSNorm(epsilon=self.cfg.norm_eps, dtype=jnp.float32)
    self.lm_head = nn.Dense(self.cfg.vocab_size, dtype=jnp.float32)

  def head(self, h_BxLxD: jax.Array) -> jax.Array:
    """Final norm and LM head only: logits of the coda's output."""
    return self.lm_head(self.final_norm(h_BxLxD))

  def __call__(self, h_BxLxD: jax.Array, positions_L: jax.Array) -> jax.Array:
    return self.head(self.coda(h_BxLxD, positions_L))
