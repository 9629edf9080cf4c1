"""The architecture of the recurrent Transformer (DESIGN §2): `config.model`'s fields, defaults
and checks."""

from __future__ import annotations

import dataclasses
import json

from anira_jax import options

FAMILIES = ('anira', 'llama')  # the block: this project's own, or Llama's (`model/llama.py`)
POSITIONS = ('rope', 'learned', 'sinusoidal', 'none')
INJECTIONS = ('none', 'add', 'linear')
STATE_INITS = ('prelude', 'zero')
ROPE_SCALINGS = ('llama3',)
KINDS = ('recurrent', 'standard')
DTYPES = ('float32', 'bfloat16')


@dataclasses.dataclass(frozen=True)
class ModelConfig(options.Options):
  """Every field but `vocab_size` and `vector_size` (the task's) is a `config.model` field with
  this default."""

  vocab_size: int
  # F > 0: every position also reads a real-valued vector of F entries (the task's
  # `Example.vectors`), added to its embedding through a learned linear map; 0 = tokens only
  vector_size: int = 0
  family: str = 'anira'  # the block: 'anira' (pre-norm, GELU MLP) | 'llama' (SwiGLU, no biases)
  width: int = 64
  num_heads: int = 4
  num_kv_heads: int = 0  # key/value heads (grouped-query attention when fewer); 0 = num_heads
  mlp_ratio: int = 4
  mlp_hidden: int = 0  # the MLP's hidden width (Llama's intermediate_size); 0 = mlp_ratio * width
  prelude_layers: int = 1
  core_layers: int = 1  # layers inside the weight-shared block
  coda_layers: int = 1
  max_depth: int = 6  # D: most iterations of the core any token may run
  kind: str = 'recurrent'  # 'recurrent' (shared core) or 'standard' (D unshared cores)
  position: str = 'rope'  # 'rope' | 'learned' | 'sinusoidal' | 'none'
  max_len: int = 512  # table size for learned positions
  # 'add': h0 informs every iteration's update | 'none' | 'linear': the core reads
  # A·[h; h0] and its output is the new state (retrofitted recurrence's adapter)
  injection: str = 'add'
  state_init: str = 'prelude'  # the recurrence starts from h0 | from 'zero'
  iteration_embedding: bool = False  # learned embedding of the iteration index, added per step
  dtype: str = 'float32'  # matmul dtype ('bfloat16' on accelerators); norms, softmax, halting f32
  remat: bool = False  # rematerialise each iteration in the backward pass (saves memory)
  norm_eps: float = 1e-6  # RMSNorm's epsilon
  rope_theta: float = 10_000.0  # RoPE's base
  rope_scaling: str = ''  # a checkpoint's rope_scaling as JSON ('' = none; rope_type 'llama3')
  tie_embeddings: bool = False  # the LM head reads the token embedding matrix (llama only)
  # W > 0: every layer's query sees only itself and the W - 1 positions before it (a local,
  # scan-like model whose reach grows with depth); 0: every earlier position
  attention_window: int = 0

  @classmethod
  def defaults(cls) -> dict:
    """`config.model`'s defaults: every field but the task's."""
    return {k: v for k, v in super().defaults().items() if k != 'vector_size'}

  @property
  def head_dim(self) -> int:
    return self.width // self.num_heads

  @property
  def kv_heads(self) -> int:
    return self.num_kv_heads or self.num_heads

  @property
  def hidden(self) -> int:
    """The MLP's hidden width."""
    return self.mlp_hidden or self.mlp_ratio * self.width

  def rope_scaling_params(self) -> dict:
    return json.loads(self.rope_scaling) if self.rope_scaling else {}

  def check(self, path: str) -> None:
    options.choice(f'{path}.family', self.family, FAMILIES)
    options.choice(f'{path}.kind', self.kind, KINDS)
    options.choice(f'{path}.position', self.position, POSITIONS)
    options.choice(f'{path}.injection', self.injection, INJECTIONS)
    options.choice(f'{path}.dtype', self.dtype, DTYPES)
    options.choice(f'{path}.state_init', self.state_init, STATE_INITS)
    for field in ('width', 'num_heads', 'mlp_ratio', 'core_layers', 'max_depth', 'max_len'):
      options.integer(f'{path}.{field}', getattr(self, field), 1)
    for field in ('prelude_layers', 'coda_layers', 'num_kv_heads', 'mlp_hidden',
                  'attention_window', 'vector_size'):
      options.integer(f'{path}.{field}', getattr(self, field), 0)
    options.number(f'{path}.norm_eps', self.norm_eps)
    options.number(f'{path}.rope_theta', self.rope_theta)
    if self.num_heads % self.kv_heads:
      raise options.ConfigError(f'config.{path}.num_kv_heads={self.num_kv_heads} must divide '
                                f'num_heads={self.num_heads}')
    if self.family == 'llama' and self.position != 'rope':
      raise options.ConfigError(f'config.{path}.position={self.position!r}: the llama family '
                                'uses RoPE (position="rope")')
    if self.tie_embeddings and self.family != 'llama':
      raise options.ConfigError(f'config.{path}.tie_embeddings=True needs family="llama"')
    try:
      scaling = self.rope_scaling_params()
    except json.JSONDecodeError:
      scaling = None
    if scaling is None or (scaling and scaling.get('rope_type', scaling.get('type'))
                           not in ROPE_SCALINGS):
      raise options.ConfigError(f'config.{path}.rope_scaling={self.rope_scaling!r} must be '
                                f'empty or a JSON object with rope_type in {list(ROPE_SCALINGS)}')
    if self.width % self.num_heads or (self.width // self.num_heads) % 2:
      raise options.ConfigError(
          f'config.{path}.width={self.width} must be a multiple of 2 * num_heads '
          f'(num_heads={self.num_heads}) so every head has an even size')
