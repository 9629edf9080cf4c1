"""Workdir ownership: the lock (held, stale, leased, unwritable), the config a resumed run may
change, and metrics cut back to the resumed step. Whole runs are in test_train.py and
test_launch.py."""

import errno
import json
import os
import subprocess
import sys
import time

import pytest
from conftest import assert_one_line

from anira_jax import reporting, workdir
from anira_jax.options import ConfigError
from experiments import parity


def test_a_held_workdir_refuses_a_second_claim_naming_its_owner(tmp_path):
  lock = workdir.claim(tmp_path / 'run')
  record = json.loads((tmp_path / 'run' / workdir.LOCK_FILE).read_text())
  assert record['pid'] == os.getpid()
  with pytest.raises(workdir.WorkdirError) as e:
    workdir.claim(tmp_path / 'run')
  assert_one_line(e, 'is in use by', f'pid {os.getpid()}', f'host {record["host"]}',
                  'another --workdir')
  lock.release()
  assert not (tmp_path / 'run' / workdir.LOCK_FILE).exists()
  with workdir.claim(tmp_path / 'run'):  # free again
    pass


def _write_lock(directory, **fields):
  directory.mkdir(parents=True, exist_ok=True)
  record = {**workdir._this_process(), **fields}
  (directory / workdir.LOCK_FILE).write_text(json.dumps(record))
  return record


def test_a_stale_lock_of_a_dead_process_is_taken_over_with_a_message(tmp_path, capsys):
  dead = subprocess.Popen([sys.executable, '-c', 'pass'])
  dead.wait()
  _write_lock(tmp_path, pid=dead.pid, start_ticks=workdir._start_ticks(os.getpid()))
  with workdir.claim(tmp_path) as lock:
    assert f'pid {dead.pid}' in lock.took_over and 'no longer running' in lock.took_over
    assert json.loads(lock.path.read_text())['pid'] == os.getpid()
  assert 'note: took over the stale lock' in capsys.readouterr().err


def test_a_reused_pid_does_not_keep_a_dead_run_alive(tmp_path):
  # Our own pid, but another start time: the process that wrote the lock is gone.
  _write_lock(tmp_path, start_ticks=-1)
  with workdir.claim(tmp_path) as lock:
    assert 'no longer running' in lock.took_over


def test_a_lock_from_another_host_holds_until_its_lease_runs_out(tmp_path):
  _write_lock(tmp_path, host='elsewhere', boot_id='other', pid=4242)
  with pytest.raises(workdir.WorkdirError) as e:
    workdir.claim(tmp_path)
  assert_one_line(e, 'pid 4242 on host elsewhere')
  old = time.time() - workdir.LEASE_SECONDS - 60
  os.utime(tmp_path / workdir.LOCK_FILE, (old, old))
  with workdir.claim(tmp_path) as lock:
    assert 'last refreshed' in lock.took_over


def test_the_owner_refreshes_its_lock(tmp_path, monkeypatch):
  monkeypatch.setattr(workdir, 'REFRESH_SECONDS', 0.05)
  with workdir.claim(tmp_path) as lock:
    old = time.time() - 1000
    os.utime(lock.path, (old, old))
    time.sleep(0.5)
    assert time.time() - lock.path.stat().st_mtime < 100


def test_a_workdir_that_is_a_file_or_read_only_is_one_line(tmp_path, monkeypatch):
  (tmp_path / 'file').write_text('x')
  with pytest.raises(workdir.WorkdirError) as e:
    workdir.claim(tmp_path / 'file')
  assert_one_line(e, tmp_path / 'file', 'is a file, not a directory')

  def read_only(path, *args, **kwargs):
    raise OSError(errno.EROFS, os.strerror(errno.EROFS), path)

  monkeypatch.setattr(os, 'open', read_only)
  with pytest.raises(workdir.WorkdirError) as e:
    workdir.claim(tmp_path / 'run')
  assert_one_line(e, 'cannot write in the workdir', tmp_path / 'run', 'Read-only file system')


def _changed(**fields):
  config = parity.get_config()
  for path, value in fields.items():
    section, name = path.split('.')
    config[section][name] = value
  return config


def test_resume_accepts_the_resumable_fields_and_names_every_other_change():
  stored = workdir.as_json(parity.get_config())
  cadence = _changed(**{'train.steps': 5000, 'train.log_every': 7, 'eval.every_steps': 9,
                        'mesh.data': 2})
  changes = workdir.config_changes(stored, cadence)
  assert set(changes) == {'train.steps', 'train.log_every', 'eval.every_steps', 'mesh.data'}
  workdir.check_resume(changes, 100, '/runs/x')  # all of them may change

  changed = _changed(**{'train.steps': 5000, 'train.learning_rate': 1e6, 'model.width': 32})
  changes = workdir.config_changes(stored, changed)
  with pytest.raises(ConfigError) as e:
    workdir.check_resume(changes, 100, '/runs/x')
  assert_one_line(e, '/runs/x', 'step 100', 'train.learning_rate=1000000.0 (was 0.001)',
                  'model.width=32 (was 64)', '--allow_config_change')
  assert 'train.steps' not in str(e.value)
  workdir.check_resume(changes, 100, '/runs/x', allow=True)


def test_a_config_stored_before_a_field_existed_compares_at_its_default():
  stored = workdir.as_json(parity.get_config())
  del stored['train']['grad_clip'], stored['model']['remat']
  assert workdir.config_changes(stored, parity.get_config()) == {}


def test_metrics_after_the_start_step_are_dropped(tmp_path):
  path = tmp_path / 'metrics.jsonl'
  path.write_text(''.join(json.dumps({'step': s, 'train/loss': 1.0 / s}) + '\n'
                          for s in range(1, 11)) + '{"step": 11, "train/lo')  # cut by a kill
  writer = reporting.MetricWriter(tmp_path, start_step=6)
  writer.write(7, {'loss': 0.5})
  writer.close()
  steps = [json.loads(line)['step'] for line in path.read_text().splitlines()]
  assert steps == [1, 2, 3, 4, 5, 6, 7]
