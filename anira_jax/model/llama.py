"""The Llama model family: Llama's block as prelude, core and coda (`ModelConfig.family='llama'`).

Llama (Touvron et al. 2023; Hugging Face's `LlamaForCausalLM`): pre-norm RMSNorm blocks with
grouped-query attention (`num_kv_heads`), RoPE in the rotate-half layout Hugging Face
checkpoints expect (base `rope_theta`, Llama 3's `rope_scaling`), a SwiGLU MLP
(down(silu(gate x) · up x)), no biases, a final RMSNorm and an LM head that may be the token
embedding matrix (`tie_embeddings`). `LlamaBlock` has the pieces every executor uses
(`project`, `queries`, `keys_values`, `update`, `rotary`; see `layers`), so per-token freezing,
the deciders, compaction and KV-cache decoding run on it unchanged; `anira_jax.pretrained`
fills it from a checkpoint.

Token ids. The framework reserves id 0 for padding (`tasks.base`); a Llama vocabulary uses
every id. Our id is the checkpoint's + 1 (`tasks.text` tokenizes so): the embedding and head
keep the checkpoint's [V, D] shapes and read row id - 1, and the logit of id 0 is a constant
-1e9, so padding is never predicted (config vocab_size = V + 1).
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from anira_jax.model import layers, network
from anira_jax.model.config import ModelConfig

PAD_LOGIT = -1e9  # the logit of our padding id 0, which no checkpoint token maps to


def inverse_frequencies(cfg: ModelConfig) -> np.ndarray:
  """RoPE's [head_dim / 2] angular frequencies: rope_theta^(-2k/head_dim), rescaled as Llama 3
  does when `rope_scaling` says so (Hugging Face's `_compute_llama3_parameters`)."""
  dim = cfg.head_dim
  inv = 1.0 / cfg.rope_theta ** (np.arange(0, dim, 2, dtype=np.float64) / dim)
  scaling = cfg.rope_scaling_params()
  if not scaling:
    return inv.astype(np.float32)
  factor = float(scaling['factor'])
  low = float(scaling.get('low_freq_factor', 1.0))
  high = float(scaling.get('high_freq_factor', 4.0))
  old_context = float(scaling['original_max_position_embeddings'])
  wavelength = 2 * np.pi / inv
  scaled = np.where(wavelength > old_context / low, inv / factor, inv)
  smooth = (old_context / wavelength - low) / (high - low)
  smoothed = (1 - smooth) * scaled / factor + smooth * scaled
  medium = ~(wavelength < old_context / high) & ~(wavelength > old_context / low)
  return np.where(medium, smoothed, scaled).astype(np.float32)


class LlamaBlock(layers.Block):
  """Llama's decoder layer. Parameter names (and the checkpoint tensors `pretrained` maps onto
  them): attn_norm (input_layernorm), query/key/value/out (q/k/v/o_proj), mlp_norm
  (post_attention_layernorm), gate/up/down (mlp.gate/up/down_proj)."""

  def setup(self):
    cfg = self.cfg
    dtype = jnp.dtype(cfg.dtype)
    dense = lambda features, **kw: nn.DenseGeneral(features, use_bias=False, dtype=dtype, **kw)
    self.attn_norm = nn.RMSNorm(epsilon=cfg.norm_eps, dtype=jnp.float32)
    self.query = dense((cfg.num_heads, cfg.head_dim))
    self.key = dense((cfg.kv_heads, cfg.head_dim))
    self.value = dense((cfg.kv_heads, cfg.head_dim))
    self.out = dense(cfg.width, axis=(-2, -1))
    self.mlp_norm = nn.RMSNorm(epsilon=cfg.norm_eps, dtype=jnp.float32)
    self.gate = dense(cfg.hidden)
    self.up = dense(cfg.hidden)
    self.down = dense(cfg.width)

  @staticmethod
  def rotary(cfg: ModelConfig, positions: jax.Array) -> layers.Rotary:
    return layers.rotary(positions, cfg.head_dim, freq_K=inverse_frequencies(cfg))

  def update(self, x_BxLxD: jax.Array, attn_BxLxHxK: jax.Array) -> jax.Array:
    """Output projection and the SwiGLU MLP, with residuals."""
    x_BxLxD = x_BxLxD + self.out(attn_BxLxHxK).astype(x_BxLxD.dtype)
    h_BxLxD = self.mlp_norm(x_BxLxD)
    h_BxLxF = nn.silu(self.gate(h_BxLxD)) * self.up(h_BxLxD)
    return x_BxLxD + self.down(h_BxLxF).astype(x_BxLxD.dtype)


class LlamaReadout(nn.Module):
  """The coda's Llama layers, the final norm and the LM head ([V, D] like the checkpoint's
  `lm_head.weight`, or the embedding matrix passed in when tied)."""

  cfg: ModelConfig

  def setup(self):
    cfg = self.cfg
    self.coda = layers.Stack(cfg, cfg.coda_layers, LlamaBlock)
    self.final_norm = nn.RMSNorm(epsilon=cfg.norm_eps, dtype=jnp.float32)
    if not cfg.tie_embeddings:
      self.lm_head = self.param('lm_head', nn.initializers.normal(0.02),
                                (cfg.vocab_size - 1, cfg.width), jnp.float32)

  def head(self, h_BxLxD: jax.Array, embedding_VxD: jax.Array | None = None) -> jax.Array:
    """Logits [B, L, V + 1] (float32) of the coda's output; id 0 (padding) gets PAD_LOGIT."""
    weight_VxD = embedding_VxD if self.cfg.tie_embeddings else self.lm_head
    dtype = jnp.dtype(self.cfg.dtype)
    logits_BxLxV = jnp.einsum('bld,vd->blv', self.final_norm(h_BxLxD).astype(dtype),
                              weight_VxD.astype(dtype), preferred_element_type=jnp.float32)
    pad_BxLx1 = jnp.full(logits_BxLxV.shape[:2] + (1,), PAD_LOGIT, jnp.float32)
    return jnp.concatenate([pad_BxLx1, logits_BxLxV], axis=-1)

  def __call__(self, h_BxLxD: jax.Array, positions_L: jax.Array,
               embedding_VxD: jax.Array | None = None) -> jax.Array:
    return self.head(self.coda(h_BxLxD, positions_L), embedding_VxD)


class LlamaNetwork(network.Network):
  """`Network` with Llama's block, embedding (ids shifted by one) and readout.

  Parameter tree as `Network`'s: {'embed': {'embedding' [V, D]}, 'vectors'?, 'prelude', 'core',
  'adapter'?, 'iteration'?, 'readout': {'coda', 'final_norm', 'lm_head' [V, D] (untied)}}.
  """

  block = LlamaBlock

  def __init__(self, cfg: ModelConfig):
    super().__init__(cfg)
    self._embed = nn.Embed(cfg.vocab_size - 1, cfg.width,
                           embedding_init=nn.initializers.normal(0.02))
    self._readout = LlamaReadout(cfg)

  def embed_tokens(self, params: dict, tokens_BxL: jax.Array,
                   positions_L: jax.Array) -> jax.Array:
    del positions_L  # RoPE: positions enter in attention
    # Our id i is the checkpoint's i - 1; padding (0) reads row 0, and is never read by others.
    return self._embed.apply({'params': params['embed']}, jnp.maximum(tokens_BxL - 1, 0))

  def _readout_args(self, params: dict) -> tuple:
    return (params['embed']['embedding'],) if self.cfg.tie_embeddings else ()
