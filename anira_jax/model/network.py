"""The recurrent Transformer as pure functions of an explicit parameter tree (DESIGN §2).

    tokens -> embed (+ positions) -> prelude -> h0 ─┬─> core, iterated per token ─> coda -> logits
                                                    └─ injected at every iteration

`Network` only holds the architecture; every method is a pure function of `params`, so the
recurrence (`anira_jax.recurrence`) can drive the core from `lax.scan`, `lax.while_loop` or a
compacted schedule without the network knowing which.

Parameter tree: {'embed', 'positions'?, 'vectors'?, 'prelude', 'core', 'adapter'?, 'iteration'?,
'readout'}. For the `standard` baseline `core` holds max_depth unshared blocks stacked on a
leading axis, and iteration t uses slice t-1: the same code path with one more index.

The block's pieces (`project`, `queries`, `keys_values`, `update`, `rotary`), which compaction
and decoding call, are methods here so that they run the config's model family: `Network` is
this project's block (`layers.Block`), `llama.LlamaNetwork` Llama's (`model.make_network` picks).
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from anira_jax.model.config import ModelConfig
from anira_jax.model import layers


class Network:
  """Embedding, prelude, shared core and readout of one ModelConfig."""

  block: type = layers.Block  # the model family's block (its pieces: project, update, ...)

  def __init__(self, cfg: ModelConfig):
    self.cfg = cfg
    self._embed = nn.Embed(cfg.vocab_size, cfg.width, embedding_init=nn.initializers.normal(1.0))
    self._prelude = layers.Stack(cfg, cfg.prelude_layers, self.block)
    self._core = layers.Stack(cfg, cfg.core_layers, self.block)
    self._readout = layers.Readout(cfg)

  def init(self, key: jax.Array) -> dict:
    cfg = self.cfg
    k_embed, k_pos, k_prelude, k_core, k_iter, k_readout = jax.random.split(key, 6)
    x_1x1xD = jnp.zeros((1, 1, cfg.width), jnp.float32)
    pos_1 = jnp.zeros((1,), jnp.int32)
    params = {
        'embed': self._embed.init(k_embed, jnp.zeros((1, 1), jnp.int32))['params'],
        # .get: a stack of zero layers has no parameters at all.
        'prelude': self._prelude.init(k_prelude, x_1x1xD, pos_1).get('params', {}),
    }
    params['readout'] = self._readout.init(k_readout, x_1x1xD, pos_1,
                                           *self._readout_args(params))['params']
    init_core = lambda k: self._core.init(k, x_1x1xD, pos_1)['params']
    if cfg.kind == 'standard':
      params['core'] = jax.vmap(init_core)(jax.random.split(k_core, cfg.max_depth))
    else:
      params['core'] = init_core(k_core)
    if cfg.position == 'learned':
      params['positions'] = 0.02 * jax.random.normal(k_pos, (cfg.max_len, cfg.width))
    if cfg.iteration_embedding:
      params['iteration'] = 0.02 * jax.random.normal(k_iter, (cfg.max_depth, cfg.width))
    if cfg.vector_size:
      # LeCun-normal: a vector of n entries of ±1 adds about sqrt(n / F) to each embedding unit.
      params['vectors'] = {'kernel': nn.initializers.lecun_normal()(
          jax.random.fold_in(k_embed, 1), (cfg.vector_size, cfg.width))}
    if cfg.injection == 'linear':
      # A·[h; h0] starts as h: with state_init='prelude' one iteration is the plain stack of
      # layers (a retrofitted checkpoint's function), and h0 enters as training finds it useful.
      eye = jnp.eye(cfg.width, dtype=jnp.float32)
      params['adapter'] = {'kernel': jnp.concatenate([eye, jnp.zeros_like(eye)])}
    return params

  # The block's pieces, for schedules that do not run every token at every step (compaction,
  # decoding): `layers` module docstring. `params` is one block's (a `core_blocks` entry).

  def rotary(self, positions: jax.Array) -> layers.Rotary:
    return self.block.rotary(self.cfg, positions)

  def project(self, params: dict, x_BxLxD: jax.Array, positions):
    return self.block(self.cfg).apply({'params': params}, x_BxLxD, positions, method='project')

  def queries(self, params: dict, x_BxLxD: jax.Array, positions):
    return self.block(self.cfg).apply({'params': params}, x_BxLxD, positions, method='queries')

  def keys_values(self, params: dict, x_BxLxD: jax.Array, positions):
    return self.block(self.cfg).apply({'params': params}, x_BxLxD, positions,
                                      method='keys_values')

  def update(self, params: dict, x_BxLxD: jax.Array, attn_BxLxHxK: jax.Array) -> jax.Array:
    return self.block(self.cfg).apply({'params': params}, x_BxLxD, attn_BxLxHxK, method='update')

  def embed_tokens(self, params: dict, tokens_BxL: jax.Array,
                   positions_L: jax.Array) -> jax.Array:
    """Token embeddings (+ learned or sinusoidal positions)."""
    x_BxLxD = self._embed.apply({'params': params['embed']}, tokens_BxL)
    if self.cfg.position == 'learned':
      x_BxLxD = x_BxLxD + params['positions'][positions_L][None]
    elif self.cfg.position == 'sinusoidal':
      x_BxLxD = x_BxLxD + layers.sinusoidal(positions_L, self.cfg.width)[None]
    return x_BxLxD

  def embed_inputs(self, params: dict, tokens_BxL: jax.Array, positions_L: jax.Array,
                   vectors_BxLxF: jax.Array | None = None) -> jax.Array:
    """The prelude's input: `embed_tokens`, plus the linear map of each position's vector for a
    model with `vector_size` > 0 (which must be given the task's vectors, and only then)."""
    x_BxLxD = self.embed_tokens(params, tokens_BxL, positions_L)
    if (vectors_BxLxF is None) != (self.cfg.vector_size == 0):
      raise ValueError(
          f'config.model.vector_size={self.cfg.vector_size} but vectors were '
          f'{"not " if vectors_BxLxF is None else ""}given: a model reads the task\'s '
          '`vectors` (batch["vectors"], [B, L, F]) exactly when its task has them')
    if vectors_BxLxF is not None:
      x_BxLxD = x_BxLxD + jnp.einsum('blf,fd->bld', vectors_BxLxF.astype(jnp.float32),
                                     params['vectors']['kernel']).astype(x_BxLxD.dtype)
    return x_BxLxD

  def embed(self, params: dict, tokens_BxL: jax.Array,
            vectors_BxLxF: jax.Array | None = None) -> jax.Array:
    """h0, the shallow representation: embeddings (+ positions, + vectors) through the
    prelude."""
    positions_L = jnp.arange(tokens_BxL.shape[1])
    x_BxLxD = self.embed_inputs(params, tokens_BxL, positions_L, vectors_BxLxF)
    return self._prelude.apply({'params': params['prelude']}, x_BxLxD, positions_L)

  def prelude_blocks(self, params: dict) -> list[dict]:
    return layers.stack_blocks(params.get('prelude'), self.cfg.prelude_layers)

  def initial_state(self, h0_BxLxD: jax.Array) -> jax.Array:
    """The state before iteration 1 (and of tokens that never run): h0, or zeros."""
    return jnp.zeros_like(h0_BxLxD) if self.cfg.state_init == 'zero' else h0_BxLxD

  def core_input(self, params: dict, h_BxLxD: jax.Array, h0_BxLxD: jax.Array,
                 t: jax.Array) -> jax.Array:
    """x = h (+ h0) (+ e_t), or A·[h; h0] (+ e_t): what the core's first layer reads at t."""
    if self.cfg.injection == 'add':
      x_BxLxD = h_BxLxD + h0_BxLxD
    elif self.cfg.injection == 'linear':
      dtype = jnp.dtype(self.cfg.dtype)
      both_BxLx2D = jnp.concatenate([h_BxLxD, h0_BxLxD], axis=-1).astype(dtype)
      x_BxLxD = jnp.einsum('ble,ed->bld', both_BxLx2D, params['adapter']['kernel'].astype(dtype),
                           preferred_element_type=jnp.float32).astype(h_BxLxD.dtype)
    else:
      x_BxLxD = h_BxLxD
    if self.cfg.iteration_embedding:
      # Clipped so that evaluating with a raised max_depth reuses the last trained embedding.
      x_BxLxD = x_BxLxD + params['iteration'][None, None, jnp.minimum(t, self.cfg.max_depth) - 1]
    return x_BxLxD

  def core_params(self, params: dict, t: jax.Array) -> dict:
    """The core's parameters at iteration t: the shared block, or slice t-1 for `standard`."""
    if self.cfg.kind == 'standard':
      return jax.tree.map(lambda p: p[t - 1], params['core'])
    return params['core']

  def core_blocks(self, params: dict, t: jax.Array) -> list[dict]:
    """The per-layer block params the core uses at iteration t."""
    return layers.stack_blocks(self.core_params(params, t), self.cfg.core_layers)

  def core_output(self, h_BxLxD: jax.Array, x_BxLxD: jax.Array,
                  y_BxLxD: jax.Array) -> jax.Array:
    """The new state from the old one h, the core's input x and its layers' output y.

    With 'add' (and 'none') the injected h0 and the iteration embedding inform the update but
    are not accumulated into the state: h_t = h_{t-1} + Δ(h_{t-1} + h0 + e_t), so states keep
    one scale at any depth. With 'linear' the layers' output is the state, as in retrofitted
    recurrence (McLeish et al. 2025): h_t = core(A·[h_{t-1}; h0]).
    """
    if self.cfg.injection == 'linear':
      return y_BxLxD
    return h_BxLxD + (y_BxLxD - x_BxLxD)

  def core(self, params: dict, h_BxLxD: jax.Array, h0_BxLxD: jax.Array,
           t: jax.Array) -> jax.Array:
    """Iteration t (1-based, may be traced) of the core on every token's current state."""
    positions_L = jnp.arange(h_BxLxD.shape[1])
    x_BxLxD = self.core_input(params, h_BxLxD, h0_BxLxD, t)
    y_BxLxD = self._core.apply({'params': self.core_params(params, t)}, x_BxLxD, positions_L)
    return self.core_output(h_BxLxD, x_BxLxD, y_BxLxD)

  def _readout_args(self, params: dict) -> tuple:
    """What the readout reads besides its own parameters (a tied head: the embeddings)."""
    del params
    return ()

  def readout(self, params: dict, h_BxLxD: jax.Array) -> jax.Array:
    """Logits [B, L, vocab] (float32) from each token's exit state."""
    positions_L = jnp.arange(h_BxLxD.shape[1])
    return self._readout.apply({'params': params['readout']}, h_BxLxD, positions_L,
                               *self._readout_args(params))

  def coda_blocks(self, params: dict) -> list[dict]:
    return layers.stack_blocks(params['readout'].get('coda'), self.cfg.coda_layers)

  def readout_head(self, params: dict, h_BxLxD: jax.Array) -> jax.Array:
    """Final norm + LM head on the coda's output (the readout without its layers)."""
    return self._readout.apply({'params': params['readout']}, h_BxLxD,
                               *self._readout_args(params), method='head')
