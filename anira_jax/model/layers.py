"""Flax layers of the recurrent Transformer: pre-norm causal self-attention blocks.

Layers hold no state between calls; the network (`network.py`) owns their parameters and calls
them as pure functions. Softmax and norms run in float32 whatever the matmul dtype.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from anira_jax.config import ModelConfig


def rope(x_BxLxHxK: jax.Array, positions_L: jax.Array, base: float = 10_000.0) -> jax.Array:
  """Rotary position embedding (Su et al. 2021) on the last axis, in float32."""
  half = x_BxLxHxK.shape[-1] // 2
  freq_K = base ** (-jnp.arange(half, dtype=jnp.float32) / half)
  angle_LxK = positions_L.astype(jnp.float32)[:, None] * freq_K[None, :]
  sin, cos = jnp.sin(angle_LxK)[None, :, None, :], jnp.cos(angle_LxK)[None, :, None, :]
  x1, x2 = jnp.split(x_BxLxHxK.astype(jnp.float32), 2, axis=-1)
  out = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
  return out.astype(x_BxLxHxK.dtype)


def sinusoidal(positions_L: jax.Array, width: int) -> jax.Array:
  """The fixed sinusoidal position table of Vaswani et al. 2017: [L, width] float32."""
  half = width // 2
  freq = 10_000.0 ** (-np.arange(half) / half)
  angle = positions_L.astype(jnp.float32)[:, None] * freq[None, :]
  return jnp.concatenate([jnp.sin(angle), jnp.cos(angle)], axis=-1)


class Block(nn.Module):
  """Pre-norm causal self-attention + MLP, with residuals."""

  cfg: ModelConfig

  @nn.compact
  def __call__(self, x_BxLxD: jax.Array, positions_L: jax.Array) -> jax.Array:
    cfg = self.cfg
    dtype = jnp.dtype(cfg.dtype)
    dense = lambda features, axis=-1, name=None: nn.DenseGeneral(
        features, axis=axis, dtype=dtype, name=name)

    h_BxLxD = nn.RMSNorm(dtype=jnp.float32, name='attn_norm')(x_BxLxD)
    qkv = [dense((cfg.num_heads, cfg.head_dim), name=n)(h_BxLxD) for n in ('query', 'key', 'value')]
    q_BxLxHxK, k_BxLxHxK, v_BxLxHxK = qkv
    if cfg.position == 'rope':
      q_BxLxHxK, k_BxLxHxK = rope(q_BxLxHxK, positions_L), rope(k_BxLxHxK, positions_L)
    attn_BxLxHxK = jax.nn.dot_product_attention(
        q_BxLxHxK, k_BxLxHxK, v_BxLxHxK, is_causal=True)
    x_BxLxD = x_BxLxD + dense(cfg.width, axis=(-2, -1), name='out')(attn_BxLxHxK)

    h_BxLxD = nn.RMSNorm(dtype=jnp.float32, name='mlp_norm')(x_BxLxD)
    h_BxLxF = nn.gelu(dense(cfg.mlp_ratio * cfg.width, name='mlp_in')(h_BxLxD))
    return x_BxLxD + dense(cfg.width, name='mlp_out')(h_BxLxF).astype(x_BxLxD.dtype)


class Stack(nn.Module):
  """`num_layers` blocks applied in order (the prelude, the core, or the coda's layers)."""

  cfg: ModelConfig
  num_layers: int

  @nn.compact
  def __call__(self, x_BxLxD: jax.Array, positions_L: jax.Array) -> jax.Array:
    for i in range(self.num_layers):
      x_BxLxD = Block(self.cfg, name=f'layer_{i}')(x_BxLxD, positions_L)
    return x_BxLxD


class Readout(nn.Module):
  """The coda: its layers, a final norm and the LM head, from a token's exit state to logits."""

  cfg: ModelConfig

  @nn.compact
  def __call__(self, h_BxLxD: jax.Array, positions_L: jax.Array) -> jax.Array:
    h_BxLxD = Stack(self.cfg, self.cfg.coda_layers, name='coda')(h_BxLxD, positions_L)
    h_BxLxD = nn.RMSNorm(dtype=jnp.float32, name='final_norm')(h_BxLxD)
    return nn.Dense(self.cfg.vocab_size, dtype=jnp.float32, name='lm_head')(h_BxLxD)
