"""Device mesh and shardings from the config: JAX SPMD is the distributed engine (DESIGN §7).

The mesh has two axes:
- `data`: batch rows are split over it;
- `fsdp`: parameters and optimizer state are split over it (FSDP-style), and batch rows too, so
  every device holds a different slice of the global batch.
`config.mesh.data = -1` takes every device the `fsdp` axis leaves. The global batch size is
`config.train.batch_size` whatever the device count; each process generates only its own rows.
Axis types are Auto on purpose: `jax.make_mesh` defaults to Explicit axes, under which flax's
`nn.Embed` raises a ShardingTypeError.
"""

from __future__ import annotations

import jax
import ml_collections
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P

from anira_jax.options import ConfigError

BATCH_AXES = ('data', 'fsdp')


def make_mesh(config: ml_collections.ConfigDict, devices=None) -> Mesh:
  devices = devices if devices is not None else jax.devices()
  fsdp, data = config.mesh.fsdp, config.mesh.data
  if fsdp < 1 or len(devices) % fsdp:
    raise ConfigError(f'config.mesh.fsdp={fsdp} must be >= 1 and divide the {len(devices)} '
                      'devices')
  data = len(devices) // fsdp if data == -1 else data
  if data * fsdp != len(devices):
    raise ConfigError(f'config.mesh.data={config.mesh.data} × mesh.fsdp={fsdp} must equal the '
                      f'{len(devices)} devices (or set mesh.data=-1)')
  batch, steps = config.train.batch_size, config.train.grad_accumulation_steps
  if batch % len(devices) or batch % jax.process_count() or (batch // steps) % len(devices):
    raise ConfigError(f'config.train.batch_size={batch} (global) must be divisible by the '
                      f'{len(devices)} devices and the {jax.process_count()} processes, and so '
                      f'must its microbatch batch_size / train.grad_accumulation_steps')
  return jax.make_mesh((data, fsdp), BATCH_AXES, axis_types=(AxisType.Auto, AxisType.Auto),
                       devices=devices)


def batch_sharding(mesh: Mesh, stacked: bool = False) -> NamedSharding:
  """Leading (batch) axis split over every device; with `stacked`, the axis after a leading one
  that stacks several steps' batches."""
  return NamedSharding(mesh, P(None, BATCH_AXES) if stacked else P(BATCH_AXES))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def _leaf_spec(shape: tuple[int, ...], fsdp: int) -> P:
  """Split the largest axis that `fsdp` divides; replicate small or indivisible leaves."""
  if fsdp == 1 or not shape or np.prod(shape) < 1024:
    return P()
  for axis in sorted(range(len(shape)), key=lambda a: -shape[a]):
    if shape[axis] % fsdp == 0:
      return P(*([None] * axis + ['fsdp']))
  return P()


def state_shardings(mesh: Mesh, abstract_state):
  """A NamedSharding for every leaf of a (train) state, by the FSDP rule above."""
  fsdp = mesh.shape['fsdp']
  return jax.tree.map(lambda x: NamedSharding(mesh, _leaf_spec(x.shape, fsdp)), abstract_state)


def global_batch(local_batch: dict[str, np.ndarray], mesh: Mesh,
                 stacked: bool = False) -> dict[str, jax.Array]:
  """This process's rows of the global batch → one global array per key (`stacked`: leaves
  [k, rows, ...], k steps' batches)."""
  sharding = batch_sharding(mesh, stacked)
  return {k: jax.make_array_from_process_local_data(sharding, v) for k, v in local_batch.items()}
