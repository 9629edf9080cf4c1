"""The launcher as a user meets it: every start-up error is one line, a second launch into a
workdir in use is refused, and a full disk mid-run is one line that keeps the last checkpoint."""

import json
import subprocess
import sys
import time

import pytest
from test_train import REPO, _launch

from anira_jax import workdir as workdir_lib


def _run(args, timeout=300):
  return subprocess.run([sys.executable, 'launch.py', *args], cwd=REPO, capture_output=True,
                        text=True, timeout=timeout)


def _only_line(result, after_progress: bool = False) -> str:
  """The one line a failed launch printed (after the progress bar, for a run that started)."""
  assert result.returncode == 1, result.stdout[-2000:] + result.stderr[-2000:]
  lines = result.stderr.strip().splitlines()
  if after_progress:
    lines = [line for line in lines if not line.startswith('train:')]
  assert len(lines) == 1, result.stderr[-3000:]
  return lines[0]


@pytest.mark.parametrize('case', ['unknown field', 'missing file', 'broken file',
                                  'unknown variant', 'workdir is a file'])
def test_every_start_up_error_is_one_line(case, tmp_path):
  broken, file = tmp_path / 'broken.py', tmp_path / 'file'
  broken.write_text('def get_config(:\n')
  file.write_text('not a directory')
  args, want = {
      'unknown field': (['--config=experiments/parity.py', '--config.model.nonexistent=3'],
                        "error: --config.model.nonexistent=3: config.model has no field "
                        "'nonexistent'"),
      'missing file': (['--config=experiments/nope.py'],
                       "error: --config=experiments/nope.py: [Errno 2] No such file or "
                       "directory: 'experiments/nope.py'"),
      'broken file': ([f'--config={broken}'],
                      f'error: --config={broken}: invalid syntax (broken.py, line 1)'),
      'unknown variant': (['--config=experiments/parity.py:colour=red'],
                          "error: --config=experiments/parity.py:colour=red: ValueError: unknown "
                          "config argument 'colour'; known: decider, ponder, quick, tokens"),
      'workdir is a file': (['--config=experiments/parity.py', f'--workdir={file}'],
                            f'error: --workdir {file} is a file, not a directory'),
  }[case]
  assert _only_line(_run(args)) == want


@pytest.mark.slow
def test_a_second_launch_into_a_workdir_in_use_is_refused(tmp_path):
  """Two launches into one workdir at once (seeds 0 and 1): the second stops with one line
  naming the first, before writing anything."""
  run = tmp_path / 'run'
  first = subprocess.Popen(_launch(run, '--config.train.steps=100000'), cwd=REPO,
                           stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
  try:
    deadline = time.time() + 240
    while not (run / workdir_lib.LOCK_FILE).exists() and time.time() < deadline:
      assert first.poll() is None, first.stderr.read()[-3000:]
      time.sleep(0.1)
    owner = json.loads((run / workdir_lib.LOCK_FILE).read_text())
    assert owner['pid'] == first.pid
    second = subprocess.run(_launch(run, '--config.seed=1'), cwd=REPO, capture_output=True,
                            text=True, timeout=300)
    line = _only_line(second)
    assert line.startswith(f'error: {run} is in use by pid {first.pid} on host {owner["host"]}')
    assert first.poll() is None  # the first run went on
  finally:
    first.kill()
    first.wait()
  if (run / 'config.json').exists():
    assert json.loads((run / 'config.json').read_text())['seed'] == 0


@pytest.mark.slow
def test_a_full_disk_mid_run_is_one_line_and_keeps_the_last_checkpoint(tmp_path):
  run = tmp_path / 'run'
  run.mkdir()
  (run / 'metrics.jsonl').symlink_to('/dev/full')  # every write to it: no space left
  result = _run(_launch(run, '--config.train.steps=8', '--config.train.checkpoint_every=1',
                        '--config.train.log_every=2')[2:])
  line = _only_line(result, after_progress=True)
  assert line.startswith('error: [Errno 28] No space left on device'), line
  assert f'checkpoint step 1 is kept in {run}/checkpoints' in line
  assert f'traceback in {run}/error.log' in line
  assert (run / 'checkpoints' / '1').is_dir()
  assert 'Traceback' in (run / 'error.log').read_text()
  assert not (run / workdir_lib.LOCK_FILE).exists()
