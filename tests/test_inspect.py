"""Inspection: load -> trace round trip on checkpoints of short training runs (every decider),
rules and depths at evaluation, the analyze entry point, and one-line errors for bad paths."""

import json
import pathlib
import shutil
import subprocess
import sys

import jax
import jax.numpy as jnp
import matplotlib.image
import numpy as np
import pytest
from conftest import PROTOCOL_CASES, assert_one_line
from test_recurrence import _spread_halting
from test_train import small_config

from anira_jax import checkpoint, deciders, evaluation, experiment, inspect
from anira_jax.analysis import run as analysis_run
from anira_jax.analysis import study as study_lib
from anira_jax.deciders import act, base
from anira_jax.training import loop
from experiments import brevo

REPO = pathlib.Path(__file__).resolve().parents[1]
D = 3


def tiny_config(decider: str):
  config = small_config(steps=2, checkpoint_every=2, log_every=1, warmup_steps=1)
  config.model.update(width=16, mlp_ratio=2, max_depth=D)
  config.train.batch_size = 8
  config.eval.update(batch_size=16, num_batches=1)
  # One split: every sequence length is one more compilation.
  config.eval.splits = {'in_distribution': '1-4'}
  # No deep start: untrained heads then give tokens different depths, so equal depths mean
  # something.
  config.decider.name = decider
  if issubclass(deciders.DECIDERS[decider].Options, base.HeadOptions):
    config.decider[decider].update(init_depth_bias=0.0, head_hidden=8)
  return config


@pytest.fixture(scope='module')
def trained(tmp_path_factory):
  """decider -> workdir of a 2-step training run (trained once per module, on first use)."""
  runs = {}

  def get(decider):
    if decider not in runs:
      workdir = tmp_path_factory.mktemp(decider)
      loop.train_and_evaluate(tiny_config(decider), workdir)
      runs[decider] = workdir
    return runs[decider]

  return get


def _assert_same_as_evaluation(tr, anira, params, batch):
  step = jax.jit(lambda p, b: evaluation.eval_step(p, b, evaluation.sampling_key(0), anira=anira))
  ev, _ = jax.device_get(step(params, evaluation.device_batch(batch)))
  np.testing.assert_array_equal(tr.depth, ev['depth'])
  np.testing.assert_allclose(tr.expected_depth, ev['expected_depth'], rtol=1e-6)
  np.testing.assert_array_equal(tr.correct, ev['correct'])


@pytest.mark.slow
@pytest.mark.parametrize('decider', PROTOCOL_CASES)
def test_load_trace_round_trip_matches_evaluation(trained, decider):
  workdir = trained(decider)
  run = inspect.load(workdir)
  assert run.step == 2 and run.config.decider.name == decider and run.max_depth == D
  run.params = _spread_halting(run.anira, run.params)  # two steps decide little yet
  batch = run.batches('in_distribution')[0]
  tr = run.trace(batch, states=True)
  _assert_same_as_evaluation(tr, run.anira, run.params, batch)
  if decider == 'early':
    assert len(np.unique(tr.depth[tr.answer_mask])) > 1, 'depths do not vary: test too weak'
  if run.anira.decider.has_rule:
    # Untrained halting sits near λ = 1/2 everywhere; a threshold inside the spread of
    # CDF(1) = q(1) makes some tokens stop at depth 1 and others not.
    threshold = float(np.median(tr.q[..., 0][tr.answer_mask]))
    spread = run.trace(batch, rule='threshold', threshold=threshold)
    _assert_same_as_evaluation(spread, run.model('threshold', threshold), run.params, batch)
    assert len(np.unique(spread.depth[spread.answer_mask])) > 1, 'depths do not vary'

  b, length = batch['tokens'].shape
  assert tr.q.shape == tr.halting.shape == (b, length, D)
  assert tr.readout_confidence.shape == tr.readout_prediction.shape == (D, b, length)
  assert tr.states.shape == (D, b, length, 16)
  real = tr.real
  np.testing.assert_allclose(tr.q.sum(-1)[real], 1.0, rtol=1e-5)
  np.testing.assert_allclose(tr.expected_depth, (tr.q * np.arange(1, D + 1)).sum(-1), rtol=1e-5)
  assert np.all((tr.readout_confidence > 0) & (tr.readout_confidence <= 1 + 1e-6))
  if not isinstance(run.anira.decider, act.Act):  # ACT reads out a mixture of states
    np.testing.assert_array_equal(tr.readout_prediction[-1][real], tr.prediction[real])
  if isinstance(run.anira.decider, act.Act):
    ran = np.arange(1, D + 1) <= tr.depth[..., None]
    assert np.isfinite(tr.halting[ran]).all() and np.isnan(tr.halting[~ran]).all()
  elif isinstance(run.anira.decider, base.Halting):
    np.testing.assert_allclose(base.halting_distribution(jnp.asarray(tr.halting)), tr.q, atol=1e-6)
  else:
    assert np.isnan(tr.halting).all()



def test_load_accepts_checkpoint_dirs_and_steps(trained):
  workdir = trained('fixed')
  assert inspect.load(workdir / 'checkpoints').step == 2
  assert inspect.load(workdir / 'checkpoints' / '2').step == 2
  assert inspect.load(workdir, step=2).step == 2
  with pytest.raises(checkpoint.CheckpointError, match=r'has no checkpoint step 7; it has \[2\]'):
    inspect.load(workdir, step=7)


def test_rules_depths_and_tokens_at_evaluation(trained):
  run = inspect.load(trained('online'))
  low = run.evaluate('in_distribution', rule='threshold', threshold=0.05)
  high = run.evaluate('in_distribution', rule='threshold', threshold=0.95)
  assert low['mean_depth'] < high['mean_depth']
  # The stored results are reproduced exactly from the checkpoint.
  saved = json.loads((run.workdir / 'results.json').read_text())
  assert json.loads(json.dumps(run.results())) == saved
  raised = run.trace(run.batches('7-8', num_batches=1, batch_size=4)[0], max_depth=D + 2)
  assert raised.q.shape[-1] == D + 2 and raised.max_depth == D + 2
  custom = run.evaluate('7-8', max_depth=D + 2, num_batches=1, batch_size=4)
  assert custom['sizes'] == [7, 8] and custom['examples'] == 4

  batch = run.batches('in_distribution')[0]
  n = int(batch['tokens'][0].astype(bool).sum())
  text = ' '.join(run.decode(batch['tokens'][0, :n]))
  from_text = run.trace(text)
  np.testing.assert_array_equal(from_text.depth[0], run.trace(batch).depth[0, :n])
  assert from_text.correct is None
  with pytest.raises(ValueError, match='not in the parity vocabulary'):
    run.trace('0 1 7')
  with pytest.raises(ValueError, match='no inference rule'):
    inspect.load(trained('fixed')).evaluate('in_distribution', rule='mode')
  with pytest.raises(ValueError, match="rule='vote' is not allowed; choose one of"):
    run.evaluate('in_distribution', rule='vote')


def test_sampled_halting_is_reproducible_and_matches_evaluation(trained):
  """rule='sample' draws halting steps from q with one fixed key per evaluation batch, so
  tracing and evaluating the same batches agree, and every batch gets fresh draws."""
  run = inspect.load(trained('online'))
  sizes, counts = run.sizes('in_distribution'), dict(num_batches=2, batch_size=8)
  sampled = run.trace_split(sizes, rule='sample', **counts)
  again = run.trace_split(sizes, rule='sample', **counts)
  np.testing.assert_array_equal(sampled.depth, again.depth)
  result = run.evaluate(sizes, rule='sample', **counts)
  answers = sampled.loss_mask.astype(bool)
  assert result['mean_depth'] == pytest.approx(sampled.depth[answers].mean())
  second = run.trace(run.batches(sizes, **counts)[1], rule='sample', batch_index=1)
  np.testing.assert_array_equal(second.depth, sampled.depth[8:])


def _valid_png(path):
  assert path.read_bytes().startswith(b'\x89PNG\r\n\x1a\n')
  assert matplotlib.image.imread(path).shape[0] > 100


def test_analyze_writes_json_figures_and_summary(trained, tmp_path):
  workdir = trained('online')
  result = analysis_run.analyze(workdir, tmp_path, thresholds=(0.3,), n_boot=10)
  saved = json.loads((tmp_path / 'analysis.json').read_text())
  assert saved == result
  generalization = saved['generalization']['by_max_depth']
  assert set(generalization) == {str(D), str(2 * D)}
  assert set(generalization[str(D)]['per_category']) == {'train'}
  exits = {f'{name} {p:g}' for name, cls in deciders.DECIDERS.items() for p in cls.sweep}
  assert exits and saved['tradeoff']['applicable'] and set(saved['tradeoff']['points']) == {
      'mode', 'median', 'threshold=0.3', *exits}
  assert 'timing' not in saved  # parity has no BREVO features
  for name in saved['files']:
    assert (tmp_path / name).exists(), name
    if name.endswith('.png'):
      _valid_png(tmp_path / name)
  assert (tmp_path / 'analysis.md').read_text().startswith('# Analysis: parity')


def test_study_records_of_a_run(trained):
  """The study's per-run records agree with the traces they come from."""
  run = inspect.load(trained('online'))
  records = study_lib.run_records(run, raised_depth=2 * D, num_batches=1, batch_size=8)
  seq = records['sequences']
  assert set(seq['max_depth']) == {D, 2 * D} and len(seq['split']) == 4 * 8
  assert study_lib.current(records)
  trace = run.trace_split('in_distribution', num_batches=1, batch_size=8)
  trained_depth = (seq['max_depth'] == D) & (seq['forced'] == 0)
  np.testing.assert_allclose(seq['depth_sum'][trained_depth],
                             (trace.depth * trace.answer_mask).sum(-1))
  # forced: every answer token runs all T iterations, whatever the decider would say
  for depth in (D, 2 * D):
    forced = (seq['max_depth'] == depth) & (seq['forced'] == 1)
    np.testing.assert_allclose(seq['depth_sum'][forced], depth * seq['answer_tokens'][forced])
    np.testing.assert_array_equal(seq['sequence'][forced], seq['sequence'][trained_depth])
  tokens = records['tokens']
  assert len(tokens['depth']) == trace.analysis_mask.sum()
  np.testing.assert_array_equal(tokens['position@-1'][1:][tokens['sequence'][1:] ==
                                                          tokens['sequence'][:-1]],
                                tokens['position'][:-1][tokens['sequence'][1:] ==
                                                        tokens['sequence'][:-1]])
  assert 'timing' not in records  # parity groups no features


# --- errors -------------------------------------------------------------------------------

def test_missing_path_and_plain_directories_give_one_line_errors(tmp_path):
  with pytest.raises(checkpoint.CheckpointError) as e:
    inspect.load(tmp_path / 'nowhere')
  assert_one_line(e, tmp_path / 'nowhere', 'does not exist', 'expected a training workdir')
  (tmp_path / 'plain').mkdir()
  (tmp_path / 'plain' / 'notes.txt').write_text('hello')
  with pytest.raises(checkpoint.CheckpointError) as e:
    inspect.load(tmp_path / 'plain')
  assert_one_line(e, tmp_path / 'plain', 'is not a workdir', 'checkpoints/')
  with pytest.raises(checkpoint.CheckpointError) as e:
    inspect.load(tmp_path / 'plain' / 'notes.txt')
  assert_one_line(e, 'notes.txt', 'is a file')
  (tmp_path / 'empty' / 'checkpoints').mkdir(parents=True)
  with pytest.raises(checkpoint.CheckpointError) as e:
    inspect.load(tmp_path / 'empty')
  assert_one_line(e, tmp_path / 'empty' / 'checkpoints', 'holds no complete checkpoint')


def test_corrupt_checkpoint_gives_one_line_error(trained, tmp_path):
  workdir = tmp_path / 'run'
  shutil.copytree(trained('fixed'), workdir)
  for f in (workdir / 'checkpoints' / '2' / 'state').rglob('*'):
    if f.is_file():
      f.write_bytes(b'not a checkpoint')
  with pytest.raises(checkpoint.CheckpointError) as e:
    inspect.load(workdir)
  assert_one_line(e, f'checkpoint step 2 in {workdir}/checkpoints cannot be restored',
                  'no older checkpoint there passes either')


def test_bad_arguments_are_refused_with_one_line(trained):
  run = inspect.load(trained('online'))
  vocab = run.anira.model_cfg.vocab_size
  cases = [
      (lambda: run.trace([[1, 2, 999]]), f'token id 999 at [0, 2] is outside the parity '
                                          f'vocabulary (ids 0..{vocab - 1})'),
      (lambda: run.trace([1, -1]), 'token id -1 at [0, 1] is outside'),
      (lambda: run.trace(np.zeros((0, 4), np.int32)), 'empty or misshapen batch'),
      (lambda: run.trace([[]]), 'empty or misshapen batch'),
      (lambda: run.trace([[1.5, 2.0]]), 'token ids must be integers'),
      (lambda: run.trace([[1, 2]], max_depth=0), 'max_depth=0 must be an integer >= 1'),
      (lambda: run.evaluate('17-18', max_depth=-3), 'max_depth=-3 must be an integer >= 1'),
      (lambda: run.evaluate('1-4', num_batches=0), 'num_batches=0 must be an integer >= 1'),
      (lambda: run.batches('1-4', batch_size=-2), 'batch_size=-2 must be an integer >= 1'),
      (lambda: run.evaluate('0-3'), "sizes [0] are outside what task 'parity' generates"),
      (lambda: run.evaluate('99999-100000'), 'sizes up to 100000 make sequences of 100000 '
                                             'tokens: a batch of 16 needs about'),
      (lambda: run.trace(np.ones((4, 200_000), np.int32)), 'over inspect.MEMORY_BUDGET_BYTES'),
  ]
  for call, fragment in cases:
    with pytest.raises(ValueError) as e:
      call()
    assert_one_line(e, fragment)


def test_analyze_command_line_reports_a_bad_workdir(tmp_path):
  proc = subprocess.run([sys.executable, 'launch.py', '--config=experiments/parity.py',
                         '--mode=analyze', f'--workdir={tmp_path}'], cwd=REPO,
                        capture_output=True, text=True, timeout=120)
  assert proc.returncode != 0
  assert proc.stderr.strip().splitlines()[-1] == (
      f'error: {tmp_path} is not a workdir (it has no checkpoints/ directory); '
      f'{inspect._EXPECTED}')


def test_generate_split_is_evaluations_generation_and_checks_its_arguments(tmp_path):
  """A run graded by generation (BREVO, untrained): `generate_split` gives what evaluation's
  generation gives on the same batches, with the trained decider or one without parameters in its
  place; a bad depth is refused."""
  config = brevo.get_config('quick')
  config.model.update(width=16, mlp_ratio=2, max_depth=D)
  config.decider.name = 'early'
  config.decider.early.update(init_depth_bias=0.0, head_hidden=8)
  exp = experiment.build(config)
  run = inspect.Run(experiment=exp, params=exp.anira.init(jax.random.key(0)), step=0,
                    workdir=tmp_path)
  counts = dict(num_batches=1, batch_size=4)
  trace, verdicts = run.generate_split('held_out', **counts)
  ref_trace, ref_verdicts = evaluation.generation_traces(
      exp.anira, run.params, exp.task, run.batches('held_out', **counts))
  np.testing.assert_array_equal(trace.tokens, ref_trace.tokens)
  np.testing.assert_array_equal(trace.depth, ref_trace.depth)
  assert verdicts.keys() == ref_verdicts.keys() and len(verdicts['valid_order']) == 4
  exit_trace, _ = run.generate_split('held_out', decider='fixed', max_depth=2, **counts)
  assert set(np.unique(exit_trace.depth[exit_trace.loss_mask])) == {2}
  with pytest.raises(ValueError, match='max_depth=0 must be an integer >= 1'):
    run.generate_split('held_out', max_depth=0, **counts)
