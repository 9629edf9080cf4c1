"""A workdir that one run owns: its lock, and the config a resumed run must keep.

    with workdir.claim(path):                       # WorkdirError if another live run owns it
      changes = workdir.config_changes(stored, config)  # {field: (stored value, new value)}
      workdir.check_resume(changes, step, allow=False)  # ConfigError naming the fields

**The lock** is the file `run.lock`, created atomically (O_CREAT | O_EXCL) and holding its owner's
host, pid, process start time and command; the owner refreshes its time stamp every
`REFRESH_SECONDS` and removes it on exit (SIGTERM included). A lock is *stale*, and is taken over
with a message, when its owner is gone: on the same host (and boot), when no process with its pid
and start time runs (SIGKILL, out of memory); on another host, when its time stamp is older than
`LEASE_SECONDS` (the owner's machine died). A multi-process job holds one lock, through process
0 (`on_lead` shares the outcome with the other processes).

**Resume** keeps the config a run was started with: `RESUMABLE` lists, in one place, the fields
that may differ; any other difference is refused before anything is written, unless the caller
allows it (`launch.py --allow_config_change`), and then it is recorded in
`config_changes.jsonl`.
"""

from __future__ import annotations

import contextlib
import datetime
import fcntl
import json
import os
import pathlib
import socket
import sys
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

import jax
import ml_collections
import numpy as np
from jax.experimental import multihost_utils

from anira_jax.config import with_defaults
from anira_jax.options import ConfigError

LOCK_FILE = 'run.lock'
CONFIG_FILE = 'config.json'
CHANGES_FILE = 'config_changes.jsonl'
REFRESH_SECONDS = 60.0  # how often the owner touches its lock
LEASE_SECONDS = 900.0  # a lock from another host untouched this long belongs to a dead run

# What a resumed run may change: how long it trains; how often it logs, evaluates, saves and
# checks for preemption; where files go; how a step is laid out over devices and memory (the
# same update, to float rounding; `launch.py --host_memory` is a flag, not config). Any other
# field changes what the saved state means or how it trains on.
RESUMABLE = (
    'train.steps', 'train.log_every', 'train.checkpoint_every', 'train.keep_checkpoints',
    'train.preemption_check_every', 'train.grad_accumulation_steps',
    'train.steps_per_dispatch', 'eval.every_steps',
    'eval.data_dir', 'mesh.data', 'mesh.fsdp',
)

T = TypeVar('T')


class WorkdirError(RuntimeError):
  """The workdir cannot be used: it is a file, not writable, or owned by another run."""


# --- the lock ------------------------------------------------------------------------------

def _boot_id() -> str:
  try:
    return pathlib.Path('/proc/sys/kernel/random/boot_id').read_text().strip()
  except OSError:
    return ''


def _start_ticks(pid: int) -> int | None:
  """The process's start time in clock ticks after boot (Linux), to tell a reused pid apart."""
  try:
    stat = pathlib.Path(f'/proc/{pid}/stat').read_text()
  except OSError:
    return None
  return int(stat.rpartition(')')[2].split()[19])  # field 22; the name before ')' may hold spaces


def _running(pid: int, start: int | None) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:
    pass  # someone else's process: it exists
  return start is None or _start_ticks(pid) in (None, start)


def _this_process() -> dict[str, Any]:
  return {'host': socket.gethostname(), 'pid': os.getpid(), 'boot_id': _boot_id(),
          'start_ticks': _start_ticks(os.getpid()),
          'since': datetime.datetime.now().astimezone().isoformat(timespec='seconds'),
          'command': ' '.join(sys.argv)[:500]}


def _describe(owner: dict) -> str:
  if not owner:
    return 'an unknown run (the lock file is empty or unreadable)'
  return f'pid {owner.get("pid")} on host {owner.get("host")} (since {owner.get("since")})'


def _stale_reason(owner: dict, age_s: float) -> str | None:
  """Why the lock's owner is gone, or None while it may be alive."""
  me = _this_process()
  if owner and owner.get('host') == me['host'] and owner.get('boot_id') == me['boot_id']:
    if _running(int(owner['pid']), owner.get('start_ticks')):
      return None
    return f'its process {owner["pid"]} is no longer running'
  if age_s > LEASE_SECONDS:
    return (f'it was last refreshed {age_s / 60:.0f} min ago (a live run refreshes it every '
            f'{REFRESH_SECONDS:.0f} s)')
  return None


def _read(path: pathlib.Path) -> tuple[str, float] | None:
  """(text, age in seconds) of the lock file, None if there is none."""
  try:
    with path.open() as f:
      return f.read(), time.time() - os.fstat(f.fileno()).st_mtime
  except FileNotFoundError:
    return None


def _parse(text: str) -> dict:
  try:
    owner = json.loads(text)
  except ValueError:
    return {}
  return owner if isinstance(owner, dict) else {}


@contextlib.contextmanager
def _directory_locked(directory: pathlib.Path):
  """Serialises stale-lock takeovers (flock on the directory itself: no extra file)."""
  fd = os.open(directory, os.O_RDONLY)
  try:
    fcntl.flock(fd, fcntl.LOCK_EX)
    yield
  finally:
    os.close(fd)


def _make_directory(workdir: pathlib.Path) -> None:
  if workdir.exists() and not workdir.is_dir():
    raise WorkdirError(f'--workdir {workdir} is a file, not a directory')
  try:
    workdir.mkdir(parents=True, exist_ok=True)
  except OSError as e:
    raise WorkdirError(f'cannot create the workdir {workdir}: {e.strerror or e}') from e


class Lock:
  """Ownership of a workdir by this process (see the module docstring); a context manager."""

  def __init__(self, workdir: str | pathlib.Path):
    self.workdir = pathlib.Path(workdir).absolute()
    self.path = self.workdir / LOCK_FILE
    self.took_over: str | None = None  # what was said about a stale lock taken over
    self._text = ''
    self._stop = threading.Event()
    self._thread: threading.Thread | None = None

  def acquire(self) -> 'Lock':
    _make_directory(self.workdir)
    text = json.dumps(_this_process()) + '\n'
    for _ in range(3):  # a takeover races only with another takeover; both cannot win
      try:
        fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
      except FileExistsError:
        self._take_over_if_stale()
        continue
      except OSError as e:
        raise WorkdirError(f'cannot write in the workdir {self.workdir}: '
                           f'{e.strerror or e}') from e
      try:
        os.write(fd, text.encode())
        os.fsync(fd)
      finally:
        os.close(fd)
      self._text = text
      self._thread = threading.Thread(target=self._refresh, daemon=True, name='workdir-lock')
      self._thread.start()
      if self.took_over:
        print(f'note: {self.took_over}', file=sys.stderr, flush=True)
      return self
    raise WorkdirError(f'{self.workdir} is being claimed by another run at the same moment; '
                       f'see {self.path}')

  def _take_over_if_stale(self) -> None:
    found = _read(self.path)
    if found is None:
      return  # released meanwhile: try again
    text, age = found
    owner = _parse(text)
    reason = _stale_reason(owner, age)
    if reason is None:
      raise WorkdirError(
          f'{self.workdir} is in use by {_describe(owner)}; wait for that run to finish or use '
          f'another --workdir (if no run uses it, delete {self.path})')
    with _directory_locked(self.workdir):
      again = _read(self.path)
      if again is not None and again[0] == text:  # nobody took it over meanwhile
        self.path.unlink()
    self.took_over = (f'took over the stale lock of {_describe(owner)} in {self.workdir}: '
                      f'{reason}')

  def _owned(self) -> bool:
    found = _read(self.path)
    return found is not None and found[0] == self._text

  def _refresh(self) -> None:
    while not self._stop.wait(REFRESH_SECONDS):
      with contextlib.suppress(OSError):
        if self._owned():
          os.utime(self.path)

  def release(self) -> None:
    self._stop.set()
    if self._thread is not None:
      self._thread.join()
      self._thread = None
    with contextlib.suppress(OSError):
      if self._text and self._owned():
        self.path.unlink()
    self._text = ''

  def __enter__(self) -> 'Lock':
    return self if self._text else self.acquire()

  def __exit__(self, *exc) -> None:
    self.release()


def claim(workdir: str | pathlib.Path) -> Lock:
  """The workdir's lock, taken (WorkdirError, one line naming the owner, if a live run holds
  it); release it with `release()` or use it as a context manager."""
  return Lock(workdir).acquire()


def on_lead(fn: Callable[[], T]) -> T | None:
  """`fn()` on process 0 only; every process stops if it raised (the others with a line saying
  so), so a refusal at start-up stops the whole job at once. Returns fn's result on process 0,
  None elsewhere."""
  result, error = None, None
  if jax.process_index() == 0:
    try:
      result = fn()
    except Exception as e:  # re-raised below, after every process has heard of it
      error = e
  if jax.process_count() > 1:
    ok = multihost_utils.broadcast_one_to_all(np.int32(error is None))
    if not ok and error is None:
      raise WorkdirError('process 0 stopped at start-up; its output says why')
  if error is not None:
    raise error
  return result


@contextlib.contextmanager
def owned(workdir: str | pathlib.Path):
  """The workdir's lock for the length of a `with` block, held by process 0 of the job."""
  lock = on_lead(lambda: claim(workdir))
  try:
    yield lock
  finally:
    if lock is not None:
      lock.release()


# --- the config a run resumes with -------------------------------------------------------------

_UNSET = '(unset)'


def _flatten(tree: dict, prefix: str = '') -> dict[str, Any]:
  flat = {}
  for key, value in tree.items():
    path = f'{prefix}{key}'
    if isinstance(value, dict):
      flat.update(_flatten(value, path + '.'))
    else:
      flat[path] = value
  return flat


def as_json(config: ml_collections.ConfigDict) -> dict:
  """The config as config.json and checkpoints store it."""
  return json.loads(config.to_json_best_effort())


def config_changes(stored: dict, config: ml_collections.ConfigDict) -> dict[str, tuple]:
  """{field: (stored value, new value)} for every field that differs; a field the stored config
  predates counts at its default."""
  old, new = _flatten(with_defaults(stored)), _flatten(as_json(config))
  return {path: (old.get(path, _UNSET), new.get(path, _UNSET))
          for path in sorted(set(old) | set(new)) if old.get(path, _UNSET) != new.get(path, _UNSET)}


def resumable(path: str) -> bool:
  return any(path == f or path.startswith(f + '.') for f in RESUMABLE)


def describe_changes(changes: dict[str, tuple]) -> str:
  return ', '.join(f'{path}={new!r} (was {old!r})' for path, (old, new) in changes.items())


def check_resume(changes: dict[str, tuple], step: int, workdir: str | pathlib.Path,
                 allow: bool = False) -> None:
  """Raises ConfigError, one line naming every refused field with both values, when a field
  outside `RESUMABLE` changed and `allow` is False."""
  refused = {path: c for path, c in changes.items() if not resumable(path)}
  if refused and not allow:
    raise ConfigError(
        f'the config differs from the one the run in {workdir} was started with (checkpoint step '
        f'{step}): {describe_changes(refused)}; a run resumes with its own config: use another '
        '--workdir, or pass --allow_config_change to resume with the new values')


def stored_config(workdir: str | pathlib.Path) -> dict | None:
  """The config the workdir's run was started with (config.json), None when there is none."""
  path = pathlib.Path(workdir) / CONFIG_FILE
  try:
    text = path.read_text()
  except FileNotFoundError:
    return None
  except OSError as e:
    raise WorkdirError(f'cannot read {path}: {e.strerror or e}') from e
  try:
    stored = json.loads(text)
  except ValueError:
    stored = None
  if not isinstance(stored, dict):
    raise WorkdirError(f'{path} is not a JSON config; restore it, or pass '
                       '--allow_config_change to resume with this config')
  return stored


def _write_atomically(path: pathlib.Path, text: str) -> None:
  tmp = path.with_name(f'.{path.name}.{os.getpid()}.tmp')
  tmp.write_text(text)
  os.replace(tmp, path)


def write_config(workdir: str | pathlib.Path, config: ml_collections.ConfigDict) -> None:
  _write_atomically(pathlib.Path(workdir) / CONFIG_FILE,
                    config.to_json_best_effort(indent=2) + '\n')


def record_changes(workdir: str | pathlib.Path, changes: dict[str, tuple], step: int) -> None:
  """Appends one line to config_changes.jsonl: when, at which step, what changed."""
  entry = {'time': datetime.datetime.now().astimezone().isoformat(timespec='seconds'),
           'resumed_step': step, 'changes': {p: {'was': o, 'now': n}
                                             for p, (o, n) in changes.items()}}
  with (pathlib.Path(workdir) / CHANGES_FILE).open('a') as f:
    f.write(json.dumps(entry, default=str) + '\n')
