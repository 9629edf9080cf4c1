"""Trains and evaluates one experiment: `python launch.py --config=experiments/parity.py`.

`--mode=analyze` runs the paper's analyses on the workdir's newest checkpoint instead
(analysis.json, analysis.md and figures in the workdir).

Every error stops the launcher with one line, `error: ...` (exit status 1): a bad flag or config
file, a config refused on resume, a workdir that is a file, unwritable or owned by another run,
an unreadable checkpoint, a full disk. `--verbose` prints the traceback instead; an error the
library did not anticipate also leaves its traceback in WORKDIR/error.log.
"""

import pathlib
import sys
import traceback

import jax
from absl import app, flags, logging
from ml_collections import config_flags

from anira_jax import checkpoint, host_memory
from anira_jax import workdir as workdir_lib
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
_ALLOW_CONFIG_CHANGE = flags.DEFINE_bool(
    'allow_config_change', False, 'Resume a workdir whose run was started with a different config '
    '(fields beyond anira_jax.workdir.RESUMABLE, e.g. the learning rate); the changes are printed '
    'and recorded in WORKDIR/config_changes.jsonl.')
_VERBOSE = flags.DEFINE_bool('verbose', False, 'On an error, print the full traceback instead '
                             'of one line.')
_HOST_MEMORY = flags.DEFINE_enum(
    'host_memory', 'keep', host_memory.MODES, 'How malloc treats memory XLA:CPU frees: keep it '
    'for the next call; single_arena also for very large blocks (long sequences, large batches; '
    'slower for small models); default leaves malloc alone. See anira_jax/host_memory.py.')

PREEMPTED_EXIT_CODE = 143  # 128 + SIGTERM, so schedulers see the run as stopped, not finished
# Errors whose messages are written for people: printed as they are.
EXPLAINED = (ConfigError, checkpoint.CheckpointError, workdir_lib.WorkdirError,
             loop.NonFiniteLossError)


def default_workdir(config_arg: str) -> pathlib.Path:
  path, _, variant = config_arg.partition(':')
  name = pathlib.Path(path).stem + (f'_{variant.replace("=", "-").replace(",", "_")}'
                                    if variant else '')
  return pathlib.Path('workdirs') / name


def _lines(e: BaseException) -> list[str]:
  return [line.strip() for line in str(e).splitlines() if line.strip()] or [type(e).__name__]


def _config_arg(argv: list[str]) -> str | None:
  return next((a.split('=', 1)[1] for a in argv if a.startswith('--config=')), None)


def _unknown_override(argv: list[str]) -> str | None:
  """'--config.a.b=v: config.a has no field 'b'' for the first override naming no field."""
  try:
    config = flags.FLAGS['config'].parser.parse(_config_arg(argv))
  except Exception:  # the file itself does not load: its own error says more
    return None
  for arg in argv:
    if arg.startswith('--config.'):
      node, path = config, arg.removeprefix('--').split('=', 1)[0].split('.')
      for i, part in enumerate(path[1:], 1):
        if not hasattr(node, 'keys') or part not in node:
          return f'{arg}: {".".join(path[:i])} has no field {part!r}'
        node = node[part]
  return None


def parse_flags(argv: list[str]) -> list[str]:
  """absl's flag parsing, with one line for a bad flag or config file (traceback: --verbose)."""
  try:
    return flags.FLAGS(argv)
  except Exception as e:  # flags and config files fail in many ways; each gets one line
    if any(arg in ('--verbose', '--verbose=true', '--verbose=True') for arg in argv):
      raise
    if isinstance(e, flags.Error) and 'Error whilst parsing config file' not in str(e):
      hint = ' (--helpshort lists the flags)' if isinstance(e, flags.UnrecognizedFlagError) else ''
      sys.exit(f'error: {_lines(e)[0]}{hint}')
    # A config file's own error is the last line, after the traceback or the paths tried.
    line = ((_unknown_override(argv) if isinstance(e, (AttributeError, KeyError)) else None)
            or f'--config={_config_arg(argv)}: {_lines(e)[-1]}')
    sys.exit(f'error: {line}')


def _fail(e: Exception, workdir: pathlib.Path) -> None:
  """Exits with one line for `e`; a traceback for an error the library did not anticipate goes
  to WORKDIR/error.log when it can be written."""
  first, *rest = _lines(e)
  line = first if isinstance(e, (*EXPLAINED, OSError)) else f'{type(e).__name__}: {first}'
  notes = list(getattr(e, '__notes__', ()))
  if not isinstance(e, EXPLAINED):
    log = workdir / 'error.log'
    try:
      if workdir.is_dir():
        log.write_text(''.join(traceback.format_exception(e)))
        notes.append(f'traceback in {log}')
    except OSError:
      pass
  sys.exit('error: ' + '; '.join([line, *notes]))


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  host_memory.reuse_freed_memory(_HOST_MEMORY.value)  # before anything creates JAX's CPU client
  if not flags.FLAGS['verbosity'].present:
    logging.set_verbosity(logging.WARNING)  # orbax is chatty at INFO; -v 0 shows it all
  workdir = pathlib.Path(
      _WORKDIR.value or default_workdir(flags.FLAGS['config'].serialize().split('=', 1)[1]))
  try:
    if _MULTIHOST.value or _COORDINATOR.value:
      # Never skipped on failure: that is a real error of the job's setup (its line says which).
      jax.distributed.initialize(coordinator_address=_COORDINATOR.value,
                                 num_processes=_NUM_PROCESSES.value, process_id=_PROCESS_ID.value)
    logging.info('process %d/%d, devices: %s', jax.process_index(), jax.process_count(),
                 jax.devices())
    try:
      config = _CONFIG.value
      config.keys()  # a config file that did not load raises on first use
    except OSError as e:
      raise ConfigError(f'{flags.FLAGS["config"].serialize()}: {_lines(e)[-1]}') from e
    if _MODE.value == 'analyze':
      result = analysis_run.analyze(workdir)
      print(f'wrote {", ".join(result["files"])} to {workdir}')
    else:
      loop.train_and_evaluate(config, workdir, allow_config_change=_ALLOW_CONFIG_CHANGE.value)
  except preemption.Preempted as e:
    print(f'preempted: {e}', file=sys.stderr, flush=True)
    sys.exit(PREEMPTED_EXIT_CODE)
  except Exception as e:  # every error ends in one line; the traceback with --verbose
    if _VERBOSE.value:
      raise
    _fail(e, workdir)


if __name__ == '__main__':
  flags.mark_flags_as_required(['config'])
  app.run(main, flags_parser=parse_flags)
