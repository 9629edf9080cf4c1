"""The LLM-scale path without weights: the text task's packed stream, batched generation with
ragged prompts, GSM-Symbolic's format, prompt and scoring, and `launch.py` with
experiments/gsm_symbolic.py:tiny end to end (fine-tuning, evaluation, results.json)."""

import json
import os
import pathlib
import subprocess
import sys

import jax.numpy as jnp
import numpy as np
import pytest
from conftest import tiny_anira
from test_llama import _params, tiny_llama

from anira_jax import experiment, generation, gsm_symbolic
from experiments import gsm_symbolic as gsm_experiment

pytest.importorskip('tokenizers')
pytest.importorskip('safetensors')
from tasks import text  # noqa: E402  (after the skip: it needs the `llm` extra)

REPO = pathlib.Path(__file__).resolve().parents[1]


@pytest.fixture(scope='module')
def assets(tmp_path_factory):
  return gsm_experiment.tiny_assets(tmp_path_factory.mktemp('tiny'))


def test_tokenizer_shifts_ids_and_round_trips(assets):
  tok = text.Tokenizer(assets / 'checkpoint')
  ids = tok.encode('Tom has 3 apples.')
  assert ids.min() >= 1 and tok.decode(ids) == 'Tom has 3 apples.'
  assert tok.decode([0, *ids]) == 'Tom has 3 apples.'  # padding is skipped
  hf = json.loads((assets / 'checkpoint' / 'config.json').read_text())
  assert tok.token_id('</s>') == hf['eos_token_id'] + 1 and tok.size == hf['vocab_size'] + 1


def test_text_stream_is_packed_deterministic_and_scores_answers(assets, tmp_path):
  task = text.TextTask(tokenizer=str(assets / 'checkpoint'), files=str(assets / 'train.jsonl'),
                       bos_id=1, eos_id=2, cache_dir=str(tmp_path))
  tokens, scored = task.corpus
  records = [json.loads(l) for l in (assets / 'train.jsonl').read_text().splitlines()]
  first = np.concatenate([[2], task.tokenizer.encode(records[0]['question']),
                          task.tokenizer.encode(records[0]['answer']), [3]])
  np.testing.assert_array_equal(tokens[:len(first)], first)  # BOS (ours 2) ... EOS (ours 3)
  answer = len(task.tokenizer.encode(records[0]['answer']))
  question = len(first) - answer - 1
  assert not scored[:question].any() and scored[question:len(first)].all()
  stream = text.base.Stream(task, (32,), 4, seed=5, host_index=1, host_count=2)
  a, b = stream.batch(3), stream.batch(3)
  np.testing.assert_array_equal(a['tokens'], b['tokens'])
  assert not np.array_equal(a['tokens'], stream.batch(4)['tokens'])
  assert a['tokens'].shape == (4, 32) and np.all(a['tokens'] > 0)  # packed: no padding
  np.testing.assert_array_equal(a['targets'][:, :-1], a['tokens'][:, 1:])
  for row in range(4):  # each window is a slice of the stream; loss on its answer targets
    start = next(s for s in range(len(tokens) - 32) if np.array_equal(tokens[s:s + 32],
                                                                       a['tokens'][row]))
    np.testing.assert_array_equal(a['loss_mask'][row], scored[start + 1:start + 33])
  again = text.TextTask(tokenizer=str(assets / 'checkpoint'), files=str(assets / 'train.jsonl'),
                        bos_id=1, eos_id=2, cache_dir=str(tmp_path))
  assert again.cache_path() == task.cache_path() and len(list(tmp_path.iterdir())) == 1


def test_extraction_and_prompt_follow_the_benchmark():
  assert gsm_symbolic.final_answer('so 5,000 + 3 = 5,003. The final answer is 5003.') == 5003.0
  assert gsm_symbolic.final_answer('It is -2.5 or 3.0') == 3.0
  assert gsm_symbolic.final_answer('no number') is None
  assert gsm_symbolic.target('a\nb = 7\n#### 1,234') == 1234.0
  p = gsm_symbolic.prompt('How many?', shots=8)
  assert p.startswith(gsm_symbolic.PREAMBLE + '\n\nQ: There are 15 trees')
  assert ("A: Let's think step by step. There are 15 trees originally. Then there were 21 trees "
          'after some more were planted. So there must have been 21 - 15 = 6. The final answer '
          'is 6.\n') in p
  assert p.count('\nQ: ') == 9 and p.endswith("\n\nQ: How many?\nA: Let's think step by step.")


def test_reads_the_published_format(tmp_path):
  directory = gsm_symbolic.write_synthetic(tmp_path, templates=3, instances=2)
  records = gsm_symbolic.read(directory, 'p2')
  assert len(records) == 6 and set(records[0]) >= {'id', 'instance', 'question', 'answer',
                                                    'original_id', 'canary'}
  for record in records:  # the answer's last line is '#### <number>', and it is right
    assert gsm_symbolic.target(record['answer']) == float(record['answer'].split('= ')[-1]
                                                          .split('\n')[0])
  assert len(gsm_symbolic.read(directory, 'main', limit=4)) == 4


def test_generation_with_ragged_prompts_is_greedy_decoding():
  """Rows of different prompt lengths in one batch: each generated token is the full model's
  argmax after the row's own prompt and continuation (the inference loop on the whole
  sequence), at that position's depth."""
  anira = tiny_anira('online', tiny_llama())
  params = _params(anira)
  prompts = [np.array([3, 5, 7, 2, 9]), np.array([4, 4]), np.array([1, 2, 3, 4, 5, 6, 7, 8, 9])]
  made = generation.generate_batch(anira, params, prompts, max_new_tokens=6, chunk=4)
  sequences = np.zeros((3, 15), np.int32)  # right-padded: padding never changes earlier positions
  for row, (prompt, out) in enumerate(zip(prompts, made)):
    assert len(out.tokens) == 6 and not out.stopped
    sequences[row, :len(prompt) + 6] = np.concatenate([prompt, out.tokens])
  full = anira.apply(params, jnp.asarray(sequences), train=False, path='loop')
  for row, (prompt, out) in enumerate(zip(prompts, made)):
    # Generated token i is predicted at position len(prompt) - 1 + i, with that position's depth.
    at = slice(len(prompt) - 1, len(prompt) + 5)
    np.testing.assert_array_equal(out.tokens, np.argmax(full.logits_BxLxV[row, at], -1))
    np.testing.assert_array_equal(out.depth, full.trajectory.depth_BxL[row, at])
  assert len(np.unique(np.concatenate([m.depth for m in made]))) > 1, 'test too weak'
  eos = int(made[0].tokens[2])
  stopped = generation.generate_batch(anira, params, prompts, max_new_tokens=6, chunk=4,
                                      eos_ids=(eos,))
  assert stopped[0].stopped and len(stopped[0].tokens) == list(made[0].tokens).index(eos)


def test_tiny_config_builds_from_its_checkpoint(assets):
  config = gsm_experiment.get_config(f'tiny,assets={assets}')
  exp = experiment.build(config)
  assert exp.anira.model_cfg.family == 'llama' and exp.pretrained.path
  assert exp.anira.model_cfg.vocab_size == exp.task.vocab_size == 101
  paper = gsm_experiment.get_config(f'checkpoint={assets / "checkpoint"},prelude=0,core=1-2,coda=3')
  assert paper.model.max_depth == 8 and paper.train.learning_rate == 2e-5
  assert paper.decider.early.gamma == paper.decider.online.gamma == 0.1
  assert paper.mesh.fsdp == 4 and paper.task.train_sizes == '4096'


@pytest.mark.slow
def test_launch_tiny_end_to_end(assets, tmp_path):
  """`python launch.py --config=experiments/gsm_symbolic.py:tiny`: fine-tunes the tiny
  checkpoint, evaluates text windows and GSM-Symbolic (decider and fixed depth) and writes
  results.json with accuracy, depth and both costs per variant."""
  result = subprocess.run(
      [sys.executable, 'launch.py', f'--config=experiments/gsm_symbolic.py:tiny,assets={assets}',
       f'--workdir={tmp_path / "run"}'], cwd=REPO, capture_output=True, text=True, timeout=600,
      env={**os.environ, 'JAX_PLATFORMS': 'cpu'})
  assert result.returncode == 0, result.stderr[-3000:]
  results = json.loads((tmp_path / 'run' / 'results.json').read_text())
  models = results['gsm_symbolic']['models']
  assert set(models) == {'early', 'fixed'} and set(models['early']) == {'main', 'p1', 'p2'}
  for name, variants in models.items():
    for r in variants.values():
      assert r['questions'] == 8 and 0 <= r['accuracy'] <= 1 and r['generated_tokens'] > 0
      assert r['execution_cost'] == round(r['mean_depth'] * r['generated_tokens'])
      assert r['decision_cost'] == (0 if name == 'fixed' else r['generated_tokens'])
  assert all(r['mean_depth'] == 3 for r in models['fixed'].values())
  lines = (tmp_path / 'run' / 'gsm_symbolic' / 'early_main.jsonl').read_text().splitlines()
  assert len(lines) == 8 and json.loads(lines[0])['depth'] and 'accuracy %' in result.stdout
