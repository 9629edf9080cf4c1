"""The benchmarks' documented commands run end to end (small, `--quick`): the inference JSON
holds every table, with compacted inference equal to the masked loop it is timed against; the
train step's torch model is the same model; the attention benchmark times equal functions; the
data and dispatch benchmarks take their config arguments. Figures are not checked: speed is the benchmark's to report, not a test's to assert."""

import json
import subprocess
import sys

import pytest
from test_train import REPO

from anira_jax.model import cpu_attention


@pytest.mark.slow
def test_quick_inference_benchmark_writes_every_table(tmp_path):
  out = tmp_path / 'inference.json'
  result = subprocess.run(
      [sys.executable, '-m', 'benchmarks.inference', '--quick', '--dists=geometric,full',
       f'--out={out}'], cwd=REPO, capture_output=True, text=True, timeout=900)
  assert result.returncode == 0, result.stderr[-3000:]
  results = json.loads(out.read_text())
  rows = results['inference']
  dists = ('geometric', 'full')
  assert {(r['length'], r['dist']) for r in rows} == {(256, d) for d in dists}
  for row in rows:
    name = f"L={row['length']} {row['dist']}"
    assert row['depths_as_chosen'], name
    assert row['compacted_max_abs_diff_vs_masked'] < 1e-4, name
    assert row['ideal_speedup'] >= 1.0 and row['compacted_speedup'] > 0, name
  work = {r['dist']: r['compacted_work'] for r in rows if r['length'] == 256}
  assert work['full']['compacted_iterations'] == 0  # no token halts: the dense step throughout
  assert work['geometric']['compacted_iterations'] > 0
  max_depth = results['model']['max_depth']
  assert [r['depth'] for r in results['decoding']] == list(range(1, max_depth + 1))
  assert results['train'] and all(r['tokens_per_s'] > 0 for r in results['train'])


@pytest.mark.slow
def test_quick_train_step_benchmark_compares_the_same_model(tmp_path):
  """The PyTorch eager model it times against is the same model: same parameter count, and the
  same first loss and gradient norm from the same parameters and batch."""
  pytest.importorskip('torch', reason="the optional `bench` extra (pip install -e '.[bench]')")
  out = tmp_path / 'train_step.json'
  result = subprocess.run(
      [sys.executable, '-m', 'benchmarks.train_step', '--quick', f'--out={out}'], cwd=REPO,
      capture_output=True, text=True, timeout=900)
  assert result.returncode == 0, result.stderr[-3000:]
  results = json.loads(out.read_text())
  assert results['parameters']['jax'] == results['parameters']['torch']
  jax_loss, jax_grad_norm = results['first_step']['jax']
  for name in ('torch_2t', 'torch_1t'):
    loss, grad_norm = results['first_step'][name]
    assert loss == pytest.approx(jax_loss, rel=1e-5), name
    assert grad_norm == pytest.approx(jax_grad_norm, rel=1e-5), name
  assert results['jax_over_torch_time'] > 0


@pytest.mark.slow
def test_quick_attention_benchmark_compares_equal_functions(tmp_path):
  if cpu_attention._compiler() is None:
    pytest.skip('no C++ compiler: no kernel to compare')
  out = tmp_path / 'attention.json'
  result = subprocess.run([sys.executable, '-m', 'benchmarks.attention', '--quick', f'--out={out}'],
                          cwd=REPO, capture_output=True, text=True, timeout=900)
  assert result.returncode == 0, result.stderr[-3000:]
  rows = json.loads(out.read_text())['rows']
  assert [r['case'].split()[0] for r in rows] == ['causal', 'causal', 'gathered']
  for row in rows:
    assert row['max_abs_difference'] < 1e-4, row['case']
    assert row['plain_ms'] > 0 and row['kernel_ms'] > 0, row['case']


@pytest.mark.slow
def test_data_benchmark_takes_a_config_argument_and_times_both_draws(tmp_path):
  out = tmp_path / 'data.json'
  result = subprocess.run(
      [sys.executable, '-m', 'benchmarks.data', '--configs=parity:ponder', '--steps=1',
       '--batch_size=16', f'--out={out}'], cwd=REPO, capture_output=True, text=True, timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]
  row = json.loads(out.read_text())['parity:ponder']
  assert row['batch_size'] == 16 and row['train_sizes'] == [1, 48]
  assert row['generated_examples_per_s_one_at_a_time'] > 0 and row['headroom'] > 0
  assert row['generated_examples_per_s_largest_size_bare'] > 0


@pytest.mark.slow
def test_quick_dispatch_benchmark_times_each_k_through_the_loops_path(tmp_path):
  out = tmp_path / 'dispatch.json'
  result = subprocess.run([sys.executable, '-m', 'benchmarks.dispatch', '--quick', f'--out={out}'],
                          cwd=REPO, capture_output=True, text=True, timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]
  rows = json.loads(out.read_text())['rows']
  assert [(r['batch_size'], r['steps_per_dispatch'], r['steps']) for r in rows] == [
      (16, 1, 16), (16, 4, 16)]
  assert rows[0]['ratio'] == 1.0 and all(r['steps_per_second'] > 0 for r in rows)
