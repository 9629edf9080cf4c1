"""Orbax checkpoints of a run: the train state plus the resolved config, in the workdir.

Every checkpoint holds `state` (a TrainState) and `config` (JSON), so a checkpoint describes
itself. Orbax writes each step to a temporary directory and renames it when complete, so a
process killed mid-save never leaves a step that `latest_step` would offer.
"""

from __future__ import annotations

import json
import pathlib

import orbax.checkpoint as ocp

CHECKPOINT_DIR = 'checkpoints'


class CheckpointError(RuntimeError):
  """A missing, unreadable or mismatched checkpoint; the message names the path."""


def manager(workdir: str | pathlib.Path, *, keep: int = 3,
            read_only: bool = False) -> ocp.CheckpointManager:
  directory = pathlib.Path(workdir).absolute() / CHECKPOINT_DIR
  options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=not read_only,
                                         read_only=read_only)
  return ocp.CheckpointManager(directory, options=options, item_names=('state', 'config'))


def save(mngr: ocp.CheckpointManager, step: int, state, config_json: str) -> None:
  mngr.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                          config=ocp.args.JsonSave(json.loads(config_json))),
            force=True)


def restore_state(mngr: ocp.CheckpointManager, step: int, abstract_state):
  """The state at `step`, laid out like `abstract_state` (from `jax.eval_shape`)."""
  try:
    restored = mngr.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract_state)))
  except Exception as e:  # orbax raises many types for unreadable or mismatched files
    raise CheckpointError(
        f'cannot restore checkpoint step {step} from {mngr.directory}: {type(e).__name__}: '
        f'{str(e).splitlines()[0] if str(e) else ""}. The files are corrupt or were written '
        'by a different config; delete that step directory or use a fresh --workdir.') from e
  return restored.state


def restore_config(mngr: ocp.CheckpointManager, step: int) -> dict:
  try:
    return mngr.restore(step, args=ocp.args.Composite(config=ocp.args.JsonRestore())).config
  except Exception as e:
    raise CheckpointError(f'cannot read the config of checkpoint step {step} in '
                          f'{mngr.directory}: {type(e).__name__}') from e
