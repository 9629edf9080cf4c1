"""Orbax checkpoints of a run: the train state, the resolved config and the state's checksums.

Every checkpoint holds `state` (a TrainState), `config` (JSON), so a checkpoint describes itself,
and `checksum` (JSON): one 32-bit checksum per array of the state, computed on device when it is
saved. Orbax writes each step to a temporary directory and renames it when complete, so a process
killed mid-save never leaves a step that `latest_step` would offer; the checksums catch what that
cannot, files changed after the save (a flipped or overwritten byte, a truncated file):
`restore_state` recomputes them from the restored arrays and refuses a step that differs, and
`restore_newest` falls back to the newest step that passes. Checkpoints written before checksums
existed restore unverified.
"""

from __future__ import annotations

import json
import pathlib
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from absl import logging
from jax.experimental import multihost_utils

CHECKPOINT_DIR = 'checkpoints'
REJECTED_DIR = 'rejected_checkpoints'  # where a run moves checkpoints that failed verification
ITEMS = ('state', 'config', 'checksum')


class CheckpointError(RuntimeError):
  """A missing, unreadable, corrupt or mismatched checkpoint; the message names the path."""


def manager(workdir: str | pathlib.Path, *, keep: int = 3,
            read_only: bool = False) -> ocp.CheckpointManager:
  directory = pathlib.Path(workdir).absolute() / CHECKPOINT_DIR
  options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=not read_only,
                                         read_only=read_only)
  return ocp.CheckpointManager(directory, options=options, item_names=ITEMS)


# --- checksums -----------------------------------------------------------------------------

@jax.jit
def _leaf_checksum(x: jax.Array) -> jax.Array:
  """Σ_i bits(x_i) · w_i mod 2³², with an odd weight w_i per position: any one changed element
  changes the sum (odd numbers are invertible mod 2³²), and moved elements almost surely do.
  Exact integer arithmetic, so the same on every mesh and sharding. Compiled per leaf shape (one
  program for the whole state took 1.6 s to compile for a tiny model, again for every new state
  structure; a state's leaves share a few shapes)."""
  if x.dtype == jnp.bool_:
    x = x.astype(jnp.uint8)
  if x.dtype.itemsize >= 4:  # 8-byte elements become a trailing axis of two words
    bits = jax.lax.bitcast_convert_type(x, jnp.uint32)
  else:
    bits = jax.lax.bitcast_convert_type(x, jnp.dtype(f'uint{8 * x.dtype.itemsize}'))
    bits = bits.astype(jnp.uint32)
  index = jnp.zeros(bits.shape, jnp.uint32)
  for axis, size in enumerate(bits.shape):
    index = index * jnp.uint32(size) + jax.lax.broadcasted_iota(jnp.uint32, bits.shape, axis)
  weight = index * jnp.uint32(0x9E3779B1)  # Fibonacci hashing spreads neighbouring positions
  weight = (weight ^ (weight >> 15)) * jnp.uint32(2) + jnp.uint32(1)
  return jnp.sum(bits * weight, dtype=jnp.uint32)


def checksums(state) -> dict[str, int]:
  """{leaf path: checksum} of every array of `state` (computed where the arrays live; each
  process gets the same replicated scalars)."""
  paths, leaves = zip(*jax.tree_util.tree_flatten_with_path(state)[0])
  values = [_leaf_checksum(x) for x in leaves]
  if jax.process_count() > 1:
    # Global scalars (replicated over every process's devices) are read where they are; a
    # scalar only one process holds comes back once per process, and process 0's is taken.
    values = [np.ravel(v)[0] for v in multihost_utils.process_allgather(values, tiled=True)]
  return {jax.tree_util.keystr(p): int(v) for p, v in zip(paths, jax.device_get(values))}


# --- save and restore ------------------------------------------------------------------------

def save(mngr: ocp.CheckpointManager, step: int, state, config_json: str) -> None:
  mngr.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                          config=ocp.args.JsonSave(json.loads(config_json)),
                                          checksum=ocp.args.JsonSave(checksums(state))),
            force=True)


def _all_processes(ok: bool) -> bool:
  """Whether `ok` holds on every process (so that all of them take the same branch)."""
  if jax.process_count() == 1:
    return ok
  return bool(np.all(multihost_utils.process_allgather(np.array(ok))))


def _first_line(e: Exception) -> str:
  text = str(e).strip().splitlines()
  return f'{type(e).__name__}: {text[0][:300] if text else ""}'


def restore_state(mngr: ocp.CheckpointManager, step: int, abstract_state):
  """The state at `step`, laid out like `abstract_state` (from `jax.eval_shape`), verified
  against the checksums saved with it. A step that cannot be read, or whose arrays differ from
  their checksums, raises CheckpointError (one line naming the step and the path)."""
  where = f'checkpoint step {step} in {mngr.directory}'
  error, restored = None, None
  try:
    args = {'state': ocp.args.StandardRestore(abstract_state)}
    if (pathlib.Path(str(mngr.directory)) / str(step) / 'checksum').is_dir():
      args['checksum'] = ocp.args.JsonRestore()
    restored = mngr.restore(step, args=ocp.args.Composite(**args))
  except Exception as e:  # orbax raises many types for unreadable or mismatched files
    error = e
  if not _all_processes(error is None):
    reason = _first_line(error) if error is not None else 'another process could not read it'
    raise CheckpointError(f'{where} cannot be restored ({reason})') from error
  if restored.get('checksum') is None:
    logging.warning('%s has no checksums (written before they existed): not verified', where)
    return restored.state
  saved, now = restored.checksum, checksums(restored.state)
  differ = sorted(p for p in saved.keys() | now.keys() if saved.get(p) != now.get(p))
  if differ:
    raise CheckpointError(
        f'{where} is corrupt: {len(differ)} of {len(saved)} arrays differ from the checksums '
        f'written when it was saved (first: {differ[0]})')
  return restored.state


def restore_newest(mngr: ocp.CheckpointManager, abstract_state
                   ) -> tuple[int | None, object, list[tuple[int, CheckpointError]]]:
  """(step, state, rejected) of the newest checkpoint that restores and passes its checksums;
  `rejected` holds the newer steps that did not, with why. (None, None, []) when there is no
  checkpoint; CheckpointError, naming each step's reason, when none passes."""
  rejected = []
  for step in sorted(mngr.all_steps(), reverse=True):
    try:
      return step, restore_state(mngr, step, abstract_state), rejected
    except CheckpointError as e:
      rejected.append((step, e))
  if rejected:
    reasons = '; '.join(str(e) for _, e in rejected)
    raise CheckpointError(
        f'no checkpoint in {mngr.directory} can be restored: {reasons}. If the config was '
        'changed in a way that changes the state (model, decider, optimizer), these checkpoints '
        'cannot take it: use a fresh --workdir')
  return None, None, []


def newest_good_step(mngr: ocp.CheckpointManager, abstract_state, below: int) -> int | None:
  """The newest step before `below` that restores and passes its checksums."""
  for step in sorted((s for s in mngr.all_steps() if s < below), reverse=True):
    try:
      restore_state(mngr, step, abstract_state)
      return step
    except CheckpointError:
      continue
  return None


def set_aside(mngr: ocp.CheckpointManager, steps: list[int]) -> list[pathlib.Path]:
  """Moves the given step directories to WORKDIR/rejected_checkpoints/ (kept for a look, out of
  the run's way); returns where each went. Call on one process, then `mngr.reload()` on all."""
  directory = pathlib.Path(str(mngr.directory))
  moved = []
  for step in steps:
    target = directory.parent / REJECTED_DIR / str(step)
    n = 1
    while target.exists():
      target, n = directory.parent / REJECTED_DIR / f'{step}-{n}', n + 1
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.move(str(directory / str(step)), target)
    moved.append(target)
  return moved


def restore_config(mngr: ocp.CheckpointManager, step: int) -> dict:
  try:
    return mngr.restore(step, args=ocp.args.Composite(config=ocp.args.JsonRestore())).config
  except Exception as e:
    raise CheckpointError(f'cannot read the config of checkpoint step {step} in '
                          f'{mngr.directory}: {type(e).__name__}') from e

