"""The architecture of the recurrent Transformer (DESIGN §2): `config.model`'s fields, defaults
and checks."""

from __future__ import annotations

import dataclasses

from anira_jax import options

POSITIONS = ('rope', 'learned', 'sinusoidal', 'none')
INJECTIONS = ('none', 'add')
KINDS = ('recurrent', 'standard')
DTYPES = ('float32', 'bfloat16')


@dataclasses.dataclass(frozen=True)
class ModelConfig(options.Options):
  """Every field but `vocab_size` (the task's) is a `config.model` field with this default."""

  vocab_size: int
  width: int = 64
  num_heads: int = 4
  mlp_ratio: int = 4
  prelude_layers: int = 1
  core_layers: int = 1  # layers inside the weight-shared block
  coda_layers: int = 1
  max_depth: int = 6  # D: most iterations of the core any token may run
  kind: str = 'recurrent'  # 'recurrent' (shared core) or 'standard' (D unshared cores)
  position: str = 'rope'  # 'rope' | 'learned' | 'sinusoidal' | 'none'
  max_len: int = 512  # table size for learned positions
  injection: str = 'add'  # 'add': h0 informs every iteration's update | 'none'
  iteration_embedding: bool = False  # learned embedding of the iteration index, added per step
  dtype: str = 'float32'  # matmul dtype ('bfloat16' on accelerators); norms, softmax, halting f32
  remat: bool = False  # rematerialise each iteration in the backward pass (saves memory)

  @property
  def head_dim(self) -> int:
    return self.width // self.num_heads

  def check(self, path: str) -> None:
    options.choice(f'{path}.kind', self.kind, KINDS)
    options.choice(f'{path}.position', self.position, POSITIONS)
    options.choice(f'{path}.injection', self.injection, INJECTIONS)
    options.choice(f'{path}.dtype', self.dtype, DTYPES)
    for field in ('width', 'num_heads', 'mlp_ratio', 'core_layers', 'max_depth', 'max_len'):
      options.integer(f'{path}.{field}', getattr(self, field), 1)
    for field in ('prelude_layers', 'coda_layers'):
      options.integer(f'{path}.{field}', getattr(self, field), 0)
    if self.width % self.num_heads or (self.width // self.num_heads) % 2:
      raise options.ConfigError(
          f'config.{path}.width={self.width} must be a multiple of 2 * num_heads '
          f'(num_heads={self.num_heads}) so every head has an even size')
