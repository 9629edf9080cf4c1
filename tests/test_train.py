"""End to end: training learns, writes results, resumes after a kill or a crash (every step
logged once, a corrupt checkpoint replaced by the previous one, a changed config refused unless
allowed), and stops within a few steps of a non-finite loss."""

import contextlib
import functools
import io
import json
import pathlib
import shutil
import sys

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import assert_one_line

import tasks
from anira_jax import checkpoint, evaluation, experiment, inspect, recurrence
from anira_jax import train_state as state_lib
from anira_jax import workdir as workdir_lib
from anira_jax.model import cpu_attention, layers
from anira_jax.options import ConfigError
from anira_jax.training import loop, preemption
from anira_jax.training import step as step_lib
from experiments import parity

REPO = pathlib.Path(__file__).resolve().parents[1]


def small_config(**train):
  config = parity.get_config()
  config.model.width = 32
  config.model.num_heads = 2
  config.task.train_sizes = '1-4'
  config.eval.splits = {'in_distribution': '1-4', 'longer': '5-6'}
  config.eval.batch_size = 32
  config.eval.num_batches = 1
  config.eval.every_steps = 1000
  config.train.batch_size = 32
  config.train.warmup_steps = 10
  config.train.learning_rate = 3e-3
  config.train.log_every = 10
  for k, v in train.items():
    config.train[k] = v
  return config


def _losses(workdir) -> dict[int, float]:
  rows = [json.loads(line) for line in (pathlib.Path(workdir) / 'metrics.jsonl').open()]
  steps = [r['step'] for r in rows if 'train/loss' in r]
  assert len(steps) == len(set(steps)), f'steps logged twice: {steps}'
  return {r['step']: r['train/loss'] for r in rows if 'train/loss' in r}


def test_the_training_stream_follows_the_configured_curriculum():
  config = small_config(curriculum_steps=4)
  stream = loop.train_stream(experiment.build(config))
  assert stream.batch_size == 32 and not stream.annotate
  # Sizes 1-4 open one per step: batch 0 draws only size 1, batch 3 and later all four.
  assert set(stream.batch(0)['size']) == {1}
  assert set(stream.batch(3)['size']) == {1, 2, 3, 4}
  # Once open, the curriculum's batches are the plain stream's.
  plain = loop.train_stream(experiment.build(small_config()))
  assert set(plain.batch(0)['size']) == {1, 2, 3, 4}
  np.testing.assert_array_equal(stream.batch(4)['tokens'], plain.batch(4)['tokens'])


@pytest.mark.slow
def test_short_run_learns_and_writes_results(tmp_path):
  config = small_config(steps=200, checkpoint_every=100)
  results = loop.train_and_evaluate(config, tmp_path)
  losses = _losses(tmp_path)
  assert losses[200] < 0.3 * losses[10], losses
  assert results['splits']['in_distribution']['token_accuracy'] > 0.9
  saved = json.loads((tmp_path / 'results.json').read_text())
  assert set(saved['splits']) == {'in_distribution', 'longer'}
  for key in ('token_accuracy', 'sequence_accuracy', 'mean_depth', 'depth_histogram',
              'execution_cost', 'decision_cost', 'spearman_depth_complexity', 'per_size'):
    assert key in saved['splits']['longer']
  assert saved['splits']['longer']['sizes'] == [5, 6]
  png = (tmp_path / 'accuracy_per_size.png').read_bytes()
  assert png.startswith(b'\x89PNG') and len(png) > 5000
  assert (tmp_path / 'config.json').exists()
  assert list((tmp_path / 'tensorboard').iterdir())


def _launch(workdir, *overrides):
  return [sys.executable, 'launch.py', '--config=experiments/parity.py', f'--workdir={workdir}',
          '--config.model.width=32', '--config.model.num_heads=2', '--config.train.batch_size=16',
          '--config.eval.num_batches=1', '--config.eval.batch_size=16',
          '--config.train.log_every=5', '--config.train.warmup_steps=5', *overrides]


def _config_from_args(args):
  config = parity.get_config()
  for arg in _launch('unused', *args)[4:]:
    path, value = arg.removeprefix('--config.').split('=')
    *parents, leaf = path.split('.')
    node = config
    for p in parents:
      node = node[p]
    node[leaf] = type(node[leaf])(value)
  return config


def test_evaluation_from_tfds_sets_at_a_raised_depth(tmp_path):
  config = small_config(steps=4, checkpoint_every=4, log_every=2, warmup_steps=1)
  config.eval.source = 'tfds'
  config.eval.max_depth = config.model.max_depth + 2
  results = loop.train_and_evaluate(config, tmp_path)
  assert (tmp_path / 'eval_sets' / 'anira_eval_set').is_dir()
  assert results['max_depth'] == 8
  for split in results['splits'].values():
    assert split['examples'] == config.eval.batch_size * config.eval.num_batches
    assert max(split['depth_histogram']) <= 8


def _interrupted_config():
  return small_config(steps=12, checkpoint_every=4, log_every=2, warmup_steps=2)


@pytest.fixture(scope='module')
def interrupted(tmp_path_factory):
  """A 12-step run (checkpoints at 4 and 8, metrics every 2 steps) that crashed at step 11."""
  workdir = tmp_path_factory.mktemp('interrupted')

  def crash(self, step):
    if step == 11:
      raise RuntimeError('crash at step 11')
    return False

  with pytest.MonkeyPatch.context() as patch:
    patch.setattr(preemption.PreemptionWatch, 'should_stop', crash)
    with pytest.raises(RuntimeError, match='crash at step 11') as e:
      loop.train_and_evaluate(_interrupted_config(), workdir)
  assert e.value.__notes__ == [f'checkpoint step 8 is kept in {workdir}/checkpoints; rerun the '
                               'same command to resume from it']
  assert not (workdir / workdir_lib.LOCK_FILE).exists()
  return workdir


def _steps(workdir) -> list[int]:
  return [json.loads(line)['step'] for line in (workdir / 'metrics.jsonl').open()]


@pytest.fixture(scope='module')
def resumed(interrupted, tmp_path_factory):
  """(workdir, printed output) of the interrupted run resumed with its own config."""
  run = shutil.copytree(interrupted, tmp_path_factory.mktemp('resumed') / 'run')
  printed = io.StringIO()
  with contextlib.redirect_stdout(printed):
    loop.train_and_evaluate(_interrupted_config(), run)
  return run, printed.getvalue()


def test_resume_after_a_crash_logs_every_step_once(interrupted, resumed):
  run, printed = resumed
  assert _steps(interrupted) == [2, 4, 6, 8, 10]
  assert 'Resuming from checkpoint step 8' in printed
  assert _steps(run) == [2, 4, 6, 8, 10, 12]  # step 10, logged after checkpoint 8, once


def test_steps_per_dispatch_makes_the_same_updates_from_any_step(interrupted, resumed, tmp_path):
  """Resumed at step 8 with 3 steps a dispatch (step 9, then 10-12: realigned after the first):
  the parameters of resuming step by step, metrics logged at dispatch ends."""
  run = shutil.copytree(interrupted, tmp_path / 'run')
  config = _interrupted_config()
  config.train.update(steps_per_dispatch=3, log_every=3, checkpoint_every=3)
  config.eval.every_steps = 999
  loop.train_and_evaluate(config, run)  # every change is one a resumed run may make
  assert _steps(run) == [2, 4, 6, 8, 9, 12]
  chex.assert_trees_all_close(inspect.load(run).params, inspect.load(resumed[0]).params,
                              rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize('field,value,named', [
    ('train.learning_rate', 1e6, 'train.learning_rate=1000000.0 (was 0.003)'),
    ('model.width', 48, 'model.width=48 (was 32)')])
def test_resume_refuses_a_changed_config_before_writing_anything(interrupted, tmp_path, field,
                                                                 value, named):
  run = shutil.copytree(interrupted, tmp_path / 'run')
  before = {p: p.read_bytes() for p in run.rglob('*') if p.is_file()}
  config = _interrupted_config()
  section, name = field.split('.')
  config[section][name] = value
  config.train.steps = 20  # may change on resume: not named
  with pytest.raises(ConfigError) as e:
    loop.train_and_evaluate(config, run)
  assert_one_line(e, named, f'the run in {run}', 'checkpoint step 8', '--allow_config_change')
  assert 'train.steps' not in str(e.value)
  assert {p: p.read_bytes() for p in run.rglob('*') if p.is_file()} == before


def test_resume_with_allow_config_change_records_the_change(interrupted, tmp_path, capsys):
  run = shutil.copytree(interrupted, tmp_path / 'run')
  config = _interrupted_config()
  config.train.learning_rate = 1e-3
  loop.train_and_evaluate(config, run, allow_config_change=True)
  assert 'Config changed on resume: train.learning_rate=0.001 (was 0.003)' in (
      capsys.readouterr().out)
  recorded = [json.loads(line) for line in (run / workdir_lib.CHANGES_FILE).open()]
  assert [(r['resumed_step'], r['changes']) for r in recorded] == [
      (8, {'train.learning_rate': {'was': 0.003, 'now': 0.001}})]
  assert json.loads((run / 'config.json').read_text())['train']['learning_rate'] == 1e-3


def test_a_corrupt_checkpoint_is_detected_and_the_previous_one_restored(interrupted, tmp_path,
                                                                        capsys):
  run = shutil.copytree(interrupted, tmp_path / 'run')
  interrupted_losses = _losses(run)
  # 64 bytes inside the largest data file of step 8: the arrays still decode, with other values.
  data = max((p for p in (run / 'checkpoints' / '8' / 'state').rglob('*') if p.is_file()),
             key=lambda p: p.stat().st_size)
  content = bytearray(data.read_bytes())
  middle = len(content) // 2
  content[middle:middle + 64] = bytes(b ^ 0xFF for b in content[middle:middle + 64])
  data.write_bytes(bytes(content))

  with pytest.raises(checkpoint.CheckpointError) as e:
    inspect.load(run)
  assert_one_line(e, f'checkpoint step 8 in {run}/checkpoints is corrupt',
                  'differ from the checksums', 'the newest checkpoint that passes is step 4')

  loop.train_and_evaluate(_interrupted_config(), run)
  out = capsys.readouterr()
  assert 'Resuming from checkpoint step 4' in out.out
  assert f'checkpoint step 8 in {run}/checkpoints is corrupt' in out.err
  assert (run / checkpoint.REJECTED_DIR / '8').is_dir() and (run / 'checkpoints' / '12').is_dir()
  assert _steps(run) == [2, 4, 6, 8, 10, 12]
  resumed = _losses(run)
  assert [resumed[s] for s in (6, 8, 10)] == [interrupted_losses[s] for s in (6, 8, 10)]


def test_unreadable_checkpoints_give_one_line_naming_each_step(interrupted, tmp_path):
  run = shutil.copytree(interrupted, tmp_path / 'run')
  for step in (4, 8):
    for f in (run / 'checkpoints' / str(step) / 'state').rglob('*'):
      if f.is_file():
        f.write_bytes(b'not a checkpoint')
  with pytest.raises(checkpoint.CheckpointError) as e:
    loop.train_and_evaluate(_interrupted_config(), run)
  assert_one_line(e, f'no checkpoint in {run}/checkpoints can be restored',
                  'checkpoint step 8 in', 'checkpoint step 4 in', 'cannot be restored')
  assert not (run / checkpoint.REJECTED_DIR).exists()  # nothing set aside when none passes


def test_a_non_finite_step_is_skipped_keeping_params():
  config = small_config(steps=10, warmup_steps=2)
  exp = experiment.build(config)
  task, anira = exp.task, exp.anira
  tx = state_lib.make_optimizer(config.train)
  state = state_lib.create(anira, tx, jax.random.key(0))
  batch = evaluation.device_batch(
      tasks.Stream(task, (1, 2, 3), 8, seed=0).batch(0))
  poisoned = state.replace(params=jax.tree.map(lambda x: x * jnp.nan, state.params))
  step = jax.jit(functools.partial(step_lib.train_step, anira=anira, tx=tx))
  new, metrics = step(poisoned, batch, key=jax.random.key(1))
  assert int(new.skipped_steps) == int(metrics['skipped_steps']) == 1
  assert not np.isfinite(metrics['loss'])
  chex.assert_trees_all_equal(new.params, poisoned.params)


@pytest.mark.parametrize('per_dispatch', [1, 4])
def test_a_non_finite_loss_stops_the_run_within_a_few_steps(tmp_path, monkeypatch, per_dispatch):
  """Parameters turn NaN from step 7 on; checkpoints (every 100 steps) and metrics (every 100)
  are far away, yet the run stops a few steps (dispatches) later, naming step 7 even inside a
  dispatch of 4."""
  real_step = step_lib.train_step

  def poisoned(state, batch, **kwargs):
    scale = jnp.where(state.step >= 6, jnp.nan, 1.0)
    return real_step(state.replace(params=jax.tree.map(lambda p: p * scale, state.params)),
                     batch, **kwargs)

  monkeypatch.setattr(step_lib, 'train_step', poisoned)
  config = small_config(steps=200, checkpoint_every=100, log_every=100, warmup_steps=2,
                        steps_per_dispatch=per_dispatch)
  with pytest.raises(loop.NonFiniteLossError) as e:
    loop.train_and_evaluate(config, tmp_path)
  assert e.value.step == 7
  dispatch_end = -(-7 // per_dispatch) * per_dispatch  # of the dispatch holding step 7
  assert e.value.stopped_at <= dispatch_end + loop.NON_FINITE_LAG * per_dispatch
  assert_one_line(e, 'non-finite loss or gradient at step 7', 'no checkpoint was written',
                  'the run starts again from step 0')
  assert not list((tmp_path / 'checkpoints').iterdir())


def test_train_step_compiles_once_whatever_the_depths():
  config = small_config(steps=10, warmup_steps=2)
  config.decider.name = 'oracle'
  exp = experiment.build(config)
  task, anira = exp.task, exp.anira
  tx = state_lib.make_optimizer(config.train)
  state = state_lib.create(anira, tx, jax.random.key(0))
  key = jax.random.key(1)

  @jax.jit
  @chex.assert_max_traces(n=1)
  def step_fn(state, batch):
    return step_lib.train_step(state, batch, anira=anira, tx=tx, key=key)

  stream = tasks.Stream(task, (1, 2, 3, 4), 8, seed=0)
  depths = set()
  for i in range(3):
    batch = evaluation.device_batch(stream.batch(i))
    state, metrics = step_fn(state, batch)
    depths.add(float(metrics['mean_depth']))
  assert len(depths) > 1


@pytest.mark.parametrize('decider', ['fixed', 'oracle', 'early'])
def test_accumulated_gradients_equal_the_whole_batch(decider):
  """Four microbatches give the whole batch's loss, metrics and gradient; answer-token counts
  differ between microbatches (mixed lengths), so per-microbatch means would not add up."""
  config = small_config(steps=10, warmup_steps=2)
  config.decider.name = decider
  exp = experiment.build(config)
  task, anira = exp.task, exp.anira
  params = anira.init(jax.random.key(0))
  batch = evaluation.device_batch(tasks.Stream(task, (1, 2, 3, 4), 32, seed=0).batch(0))
  grads = functools.partial(step_lib.gradients, params, batch, jax.random.key(1), anira=anira)
  whole, whole_metrics = jax.jit(grads)()
  accumulated, accumulated_metrics = jax.jit(functools.partial(grads, accumulation_steps=4))()
  counts = ('tokens',)
  if decider == 'early':  # a different Gumbel draw per microbatch: only counts must agree
    assert np.isfinite(float(accumulated_metrics['loss']))
  else:
    chex.assert_trees_all_close(accumulated, whole, atol=1e-6, rtol=1e-5)
    counts = tuple(whole_metrics)
  for name in counts:
    np.testing.assert_allclose(accumulated_metrics[name], whole_metrics[name], rtol=1e-5,
                               err_msg=name)


def _gradients_with(decider, sizes=(1, 2, 3, 4), **model):
  """(gradients function, its arguments) for a small model with `model` overrides, on a batch
  of parity strings of `sizes`."""
  config = small_config(steps=10, warmup_steps=2)
  config.decider.name = decider
  config.model.update(model)
  exp = experiment.build(config)
  task, anira = exp.task, exp.anira
  params = anira.init(jax.random.key(0))
  batch = evaluation.device_batch(tasks.Stream(task, sizes, 16, seed=0).batch(0))
  return functools.partial(step_lib.gradients, anira=anira), (params, batch, jax.random.key(1))


@pytest.mark.parametrize('decider', ['online', 'ponder'])
def test_remat_recomputes_the_same_gradients(decider):
  fn, args = _gradients_with(decider, remat=True)
  ref_fn, ref_args = _gradients_with(decider, remat=False)
  # Both checkpoint each iteration; remat=True saves nothing (policy=None), the default keeps
  # the weight matmuls' outputs (recurrence.RESIDUALS_POLICY).
  assert 'policy=None' in str(jax.make_jaxpr(fn)(*args))
  assert 'policy=None' not in str(jax.make_jaxpr(ref_fn)(*ref_args))
  (grads, metrics), (ref_grads, ref_metrics) = jax.jit(fn)(*args), jax.jit(ref_fn)(*ref_args)
  chex.assert_trees_all_close(grads, ref_grads, atol=1e-6, rtol=1e-5)
  np.testing.assert_allclose(metrics['loss'], ref_metrics['loss'], rtol=1e-6)


def test_bfloat16_matmuls_track_float32():
  """bfloat16 matmuls (params and norms stay float32): the same loss to bf16 precision and
  gradients pointing the same way."""
  grads, metrics = jax.jit(lambda f, a: f(*a), static_argnums=0)(*_gradients_with(
      'early', dtype='bfloat16'))
  ref_grads, ref_metrics = jax.jit(lambda f, a: f(*a), static_argnums=0)(*_gradients_with(
      'early', dtype='float32'))
  assert all(g.dtype == jnp.float32 for g in jax.tree.leaves(grads))
  np.testing.assert_allclose(metrics['loss'], ref_metrics['loss'], rtol=2e-2)
  flat, ref_flat = (jnp.concatenate([g.ravel() for g in jax.tree.leaves(t)])
                    for t in (grads, ref_grads))
  cosine = jnp.dot(flat, ref_flat) / (jnp.linalg.norm(flat) * jnp.linalg.norm(ref_flat))
  assert cosine > 0.99, cosine


def test_residual_policy_gives_plain_autodiff_gradients(monkeypatch):
  """The training unroll's policy (keep only weight-matmul outputs) changes what is stored, not
  the gradient: the same as saving every intermediate, i.e. plain reverse mode."""
  fn, args = _gradients_with('online')
  grads, metrics = jax.jit(fn)(*args)
  monkeypatch.setattr(recurrence, 'RESIDUALS_POLICY', jax.checkpoint_policies.everything_saveable)
  ref_fn, ref_args = _gradients_with('online')
  ref_grads, ref_metrics = jax.jit(ref_fn)(*ref_args)
  chex.assert_trees_all_close(grads, ref_grads, atol=1e-6, rtol=1e-5)
  np.testing.assert_allclose(metrics['loss'], ref_metrics['loss'], rtol=1e-6)


@pytest.mark.parametrize('decider,block', [('online', 128), ('act', 3)])
def test_attention_backward_pass_gives_plain_autodiff_gradients(decider, block, monkeypatch):
  """`layers.blocked_causal_attention`'s own backward pass (here in one block of 128 or in
  blocks of 3) against JAX's derivative of the plain `layers.attention`, on the whole model's
  gradients (tests/test_cpu_attention.py checks the fused kernel's the same way)."""
  monkeypatch.setattr(cpu_attention, 'supports', lambda *_: False)
  monkeypatch.setattr(layers, 'CAUSAL_BLOCK', block)
  fn, args = _gradients_with(decider)
  saves = lambda fn, args: layers.ATTENTION_OUT in str(jax.make_jaxpr(fn)(*args))
  assert saves(fn, args)  # what only the custom forward pass names
  grads, metrics = jax.jit(fn)(*args)
  monkeypatch.setattr(layers, 'causal_attention', lambda q, k, v, window: layers.attention(
      q, k, v, layers.causal_mask(jnp.arange(q.shape[1]), window)))
  ref_fn, ref_args = _gradients_with(decider)
  assert not saves(ref_fn, ref_args)
  ref_grads, ref_metrics = jax.jit(ref_fn)(*ref_args)
  chex.assert_trees_all_close(grads, ref_grads, atol=1e-6, rtol=1e-5)
  np.testing.assert_allclose(metrics['loss'], ref_metrics['loss'], rtol=1e-6)
