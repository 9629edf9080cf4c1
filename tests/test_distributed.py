"""Scale-out: sharded training equals one device; two processes train and one resumes;
SIGTERM checkpoints and exits; resumed runs reproduce an uninterrupted one."""

import json
import os
import pathlib
import signal
import socket
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
from conftest import eight_device_env
from test_train import REPO, _config_from_args, _launch, _losses

from anira_jax import inspect
from anira_jax.training import loop

# The scripts below import the tests' helpers (test_train, which imports conftest) as top-level
# modules, the way pytest puts them on the path.
_SCRIPT_PATH = os.pathsep.join([str(REPO), str(REPO / 'tests')])

# Runs in a fresh process with 8 simulated CPU devices; prints {mesh: losses}.
_MESH_SCRIPT = textwrap.dedent('''
    import json, sys
    import jax
    from anira_jax import experiment, sharding, train_state as state_lib
    from anira_jax.training import loop
    import tasks
    from test_train import small_config

    decider = sys.argv[1]
    results = {}
    # The same losses with two microbatches per step, for a decider that draws no random keys.
    # And two steps a dispatch: the stacked batches split over the mesh along their second axis.
    meshes = [(1, 1, 1, 1, 1), (8, 1, 8, 1, 1), (4, 2, 8, 1, 1), (4, 2, 8, 1, 2)]
    meshes += [(4, 2, 8, 2, 1)] if decider == 'fixed' else []
    for data, fsdp, devices, microbatches, per_dispatch in meshes:
      config = small_config(steps=10, warmup_steps=2, grad_accumulation_steps=microbatches)
      config.decider.name = decider
      config.model.width = 64  # big enough that fsdp really splits kernels
      config.mesh.data, config.mesh.fsdp = data, fsdp
      exp = experiment.build(config)
      task, anira = exp.task, exp.anira
      mesh = sharding.make_mesh(config, devices=jax.devices()[:devices])
      tx = state_lib.make_optimizer(config.train)
      create, _, shardings, step = loop.compile_training(
          anira, tx, mesh, jax.random.key(1), microbatches, steps_per_dispatch=per_dispatch)
      state = create(jax.random.key(0))
      split = sum(s.spec != jax.sharding.PartitionSpec() for s in jax.tree.leaves(shardings))
      stream = tasks.Stream(task, exp.train_sizes, 32, seed=0)
      losses = []
      for _, _, batch in loop.dispatches(stream, 0, 6, per_dispatch, mesh):
        state, metrics = step(state, batch)
        losses.append(float(metrics['loss']))  # the dispatch's last step
      name = (f'{data}x{fsdp}' + (f'/{microbatches}' if microbatches > 1 else '')
              + (f' dispatch {per_dispatch}' if per_dispatch > 1 else ''))
      results[name] = {'losses': losses, 'split_leaves': int(split),
                       'devices': len(mesh.devices.flat)}
    print(json.dumps(results))
''')


@pytest.mark.parametrize('decider', ['online'])
def test_sharded_training_matches_one_device(decider):
  env = eight_device_env(PYTHONPATH=_SCRIPT_PATH)
  result = subprocess.run([sys.executable, '-c', _MESH_SCRIPT, decider], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]
  runs = json.loads(result.stdout.strip().splitlines()[-1])
  assert runs['8x1']['devices'] == runs['4x2']['devices'] == 8
  assert runs['1x1']['split_leaves'] == runs['8x1']['split_leaves'] == 0
  assert runs['4x2']['split_leaves'] > 0  # parameters really are sharded
  assert ('4x2/2' in runs) == (decider == 'fixed')
  for mesh in {'8x1', '4x2', '4x2/2'} & set(runs):
    np.testing.assert_allclose(runs[mesh]['losses'], runs['1x1']['losses'], rtol=2e-4,
                               err_msg=mesh)
  np.testing.assert_allclose(runs['4x2 dispatch 2']['losses'], runs['1x1']['losses'][1::2],
                             rtol=2e-4)


# Runs in a fresh process with 8 simulated CPU devices; prints {mesh: evaluation results}.
_EVAL_SCRIPT = textwrap.dedent('''
    import json
    import jax
    from anira_jax import evaluation, experiment, sharding
    import tasks
    from test_train import small_config

    config = small_config()
    config.decider.name, config.decider.online.rule = 'online', 'sample'  # random draws
    exp = experiment.build(config)
    task, anira = exp.task, exp.anira
    params = anira.init(jax.random.key(0))
    stream = tasks.Stream(task, (1, 2, 3, 4, 5, 6), 12, seed=3)  # 12 rows: 16 on 8 devices
    batches = [stream.batch(i) for i in range(2)]
    results = {}
    for data, fsdp in [(1, 1), (8, 1), (2, 4)]:
      config.mesh.data, config.mesh.fsdp = data, fsdp
      mesh = sharding.make_mesh(config, devices=jax.devices()[:data * fsdp])
      rows = evaluation.rows_over_mesh(evaluation.device_batch(batches[0]), mesh)['tokens']
      results[f'{data}x{fsdp}'] = {
          'rows_per_device': sorted({s.data.shape[0] for s in rows.addressable_shards}),
          **evaluation.evaluate_batches(anira, params, batches, mesh=mesh)}
    results['none'] = evaluation.evaluate_batches(anira, params, batches)
    print(json.dumps(results))
''')


def test_evaluation_splits_rows_over_devices_with_the_same_results():
  """Each device evaluates its share of a batch (padded from 12 rows to 16); the results, random
  halting draws included, equal one device's and those without a mesh."""
  env = eight_device_env(PYTHONPATH=_SCRIPT_PATH)
  result = subprocess.run([sys.executable, '-c', _EVAL_SCRIPT], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]
  runs = json.loads(result.stdout.strip().splitlines()[-1])
  assert runs['1x1'].pop('rows_per_device') == [12]
  assert runs['8x1'].pop('rows_per_device') == runs['2x4'].pop('rows_per_device') == [2]
  reference = runs.pop('none')
  assert len(reference['depth_histogram']) > 2, 'depths do not vary: test too weak'
  for mesh, got in runs.items():
    assert got['depth_histogram'] == reference['depth_histogram'], mesh
    assert got['examples'] == reference['examples'] == 24, mesh
    for key, value in reference.items():
      if isinstance(value, float):
        np.testing.assert_allclose(got[key], value, rtol=1e-6, err_msg=f'{mesh}: {key}')


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


@pytest.mark.slow
def test_two_processes_train_then_one_process_resumes(tmp_path):
  port = _free_port()
  args = ['--config.train.steps=20', '--config.train.checkpoint_every=10']
  procs = [subprocess.Popen(
      _launch(tmp_path, *args, f'--coordinator_address=127.0.0.1:{port}', '--num_processes=2',
              f'--process_id={i}'), cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
      text=True) for i in range(2)]
  outputs = [p.communicate(timeout=600)[0] for p in procs]
  assert all(p.returncode == 0 for p in procs), outputs[0][-2000:] + outputs[1][-2000:]
  assert "'data': 2" in outputs[0] and '2 process(es)' in outputs[0]
  assert (tmp_path / 'checkpoints' / '20').is_dir()
  two_process_results = json.loads((tmp_path / 'results.json').read_text())
  # Its evaluation (each process evaluating its devices' rows) = one process's, same checkpoint.
  one_process = inspect.load(tmp_path, step=20).results()
  for split, got in two_process_results['splits'].items():
    want = one_process['splits'][split]
    assert got['depth_histogram'] == {str(d): n for d, n in want['depth_histogram'].items()}
    np.testing.assert_allclose(got['token_accuracy'], want['token_accuracy'], rtol=1e-6)

  # One process restores the two-process checkpoint and continues.
  resumed = subprocess.run(_launch(tmp_path, '--config.train.steps=30',
                                   '--config.train.checkpoint_every=10'),
                           cwd=REPO, capture_output=True, text=True, timeout=600)
  assert resumed.returncode == 0, resumed.stderr[-3000:]
  assert 'Resuming from checkpoint step 20' in resumed.stdout
  assert (tmp_path / 'checkpoints' / '30').is_dir()
  assert two_process_results['step'] == 20
  assert json.loads((tmp_path / 'results.json').read_text())['step'] == 30


def _wait_for(path: pathlib.Path, proc, timeout=300):
  deadline = time.time() + timeout
  while not path.exists() and time.time() < deadline and proc.poll() is None:
    time.sleep(0.2)
  assert path.exists(), f'{path} never appeared'


@pytest.mark.slow
def test_sigterm_then_sigkill_then_resume_reproduces_an_uninterrupted_run(tmp_path):
  args = ['--config.train.steps=120', '--config.train.checkpoint_every=10']
  run = tmp_path / 'interrupted'

  first = subprocess.Popen(_launch(run, *args), cwd=REPO, stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, text=True)
  _wait_for(run / 'checkpoints' / '10', first)
  first.send_signal(signal.SIGTERM)
  _, err = first.communicate(timeout=120)
  assert first.returncode == 143, err[-2000:]
  assert 'preempted: SIGTERM: saved checkpoint step' in err and 'Traceback' not in err
  saved = int(err.split('saved checkpoint step ')[1].split()[0])
  assert (run / 'checkpoints' / str(saved)).is_dir()

  second = subprocess.Popen(_launch(run, *args), cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
  _wait_for(run / 'checkpoints' / str((saved // 10 + 2) * 10), second)
  second.send_signal(signal.SIGKILL)
  second.wait()

  third = subprocess.run(_launch(run, *args), cwd=REPO, capture_output=True, text=True,
                         timeout=600)
  assert third.returncode == 0, third.stderr[-3000:]
  # The killed run's lock was left behind; the rerun takes it over.
  assert f'note: took over the stale lock of pid {second.pid}' in third.stderr
  resumed_at = int(third.stdout.split('Resuming from checkpoint step ')[1].split()[0])
  assert resumed_at > saved

  loop.train_and_evaluate(_config_from_args(args), tmp_path / 'straight')
  interrupted, straight = _losses(run), _losses(tmp_path / 'straight')
  later = [s for s in straight if s > saved]
  np.testing.assert_allclose([interrupted[s] for s in later], [straight[s] for s in later],
                             rtol=1e-5)
