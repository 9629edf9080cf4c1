"""Trains and evaluates one experiment: `python launch.py --config=experiments/parity.py`.

`--mode=analyze` runs the paper's analyses on the workdir's newest checkpoint instead
(analysis.json, analysis.md and figures in the workdir).
"""

import pathlib
import sys

import jax
from absl import app, flags, logging
from ml_collections import config_flags

from anira_jax import checkpoint, host_memory
from anira_jax.analysis import run as analysis_run
from anira_jax.options import ConfigError
from anira_jax.training import loop, preemption

_CONFIG = config_flags.DEFINE_config_file(
    'config', None, 'Experiment config file, optionally with a variant: FILE.py:ARG.',
    lock_config=True)
_WORKDIR = flags.DEFINE_string(
    'workdir', None, 'Run directory (checkpoints, metrics, results). Default: '
    'workdirs/<config name>[_<variant>] under the current directory.')
_MODE = flags.DEFINE_enum('mode', 'train', ['train', 'analyze'],
                          'train: train (or resume) and evaluate; analyze: analyse the workdir.')
_MULTIHOST = flags.DEFINE_bool(
    'multihost', False, 'Join a multi-process job with jax.distributed.initialize(): on TPU pods '
    'and SLURM/Kubernetes clusters the coordinator and process ids are detected automatically.')
_COORDINATOR = flags.DEFINE_string(
    'coordinator_address', None, 'host:port of process 0, for multi-process jobs without '
    'auto-detection (implies --multihost; also set --num_processes and --process_id).')
_NUM_PROCESSES = flags.DEFINE_integer('num_processes', None, 'Processes in the job.')
_PROCESS_ID = flags.DEFINE_integer('process_id', None, 'This process, 0..num_processes-1.')
_HOST_MEMORY = flags.DEFINE_enum(
    'host_memory', 'keep', host_memory.MODES, 'How malloc treats memory XLA:CPU frees: keep it '
    'for the next call; single_arena also for very large blocks (long sequences, large batches; '
    'slower for small models); default leaves malloc alone. See anira_jax/host_memory.py.')

PREEMPTED_EXIT_CODE = 143  # 128 + SIGTERM, so schedulers see the run as stopped, not finished


def default_workdir(config_arg: str) -> pathlib.Path:
  path, _, variant = config_arg.partition(':')
  name = pathlib.Path(path).stem + (f'_{variant.replace("=", "-").replace(",", "_")}'
                                    if variant else '')
  return pathlib.Path('workdirs') / name


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  host_memory.reuse_freed_memory(_HOST_MEMORY.value)  # before anything creates JAX's CPU client
  if not flags.FLAGS['verbosity'].present:
    logging.set_verbosity(logging.WARNING)  # orbax is chatty at INFO; -v 0 shows it all
  if _MULTIHOST.value or _COORDINATOR.value:
    # No try/except: a failed initialisation is a real error of the job's setup.
    jax.distributed.initialize(coordinator_address=_COORDINATOR.value,
                               num_processes=_NUM_PROCESSES.value, process_id=_PROCESS_ID.value)
  workdir = _WORKDIR.value or default_workdir(flags.FLAGS['config'].serialize().split('=', 1)[1])
  logging.info('process %d/%d, devices: %s', jax.process_index(), jax.process_count(),
               jax.devices())
  try:
    if _MODE.value == 'analyze':
      result = analysis_run.analyze(workdir)
      print(f'wrote {", ".join(result["files"])} to {workdir}')
    else:
      loop.train_and_evaluate(_CONFIG.value, workdir)
  except (ConfigError, checkpoint.CheckpointError, loop.NonFiniteLossError) as e:
    sys.exit(f'error: {e}')
  except preemption.Preempted as e:
    print(f'preempted: {e}', file=sys.stderr, flush=True)
    sys.exit(PREEMPTED_EXIT_CODE)


if __name__ == '__main__':
  flags.mark_flags_as_required(['config'])
  app.run(main)
