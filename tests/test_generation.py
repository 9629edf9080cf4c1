"""Evaluation by generation (BREVO): verdicts and per-token records of generated answers, checked
on answers written by hand (the example's own order, a valid reordering, a broken one) and on a
real greedy decoding."""

import jax
import numpy as np
import pytest
from conftest import tiny_anira, tiny_model

import tasks
from anira_jax import evaluation, generation

TASK = tasks.make('brevo', max_nodes=12)


def _batch():
  return tasks.Stream(TASK, (4, 6, 8), 6, seed=0).batch(0)


def _answers_as_generation(monkeypatch, answers):
  """Makes `generation.generate_batch` return the given answer tokens for each prompt."""
  def fake(anira, params, prompts, *, max_new_tokens, stop, max_depth=None, mesh=None):
    del anira, params, max_new_tokens, max_depth, mesh
    made = []
    for answer in answers[:len(prompts)]:
      end = stop(answer)
      answer = answer if end is None else answer[:end]
      made.append(generation.Generated(np.asarray(answer), np.full(len(answer), 2, np.int32),
                                       np.full(len(answer), 2.0, np.float32),
                                       np.ones(len(answer), np.int32), end is not None))
    return made
  monkeypatch.setattr(generation, 'generate_batch', fake)


def _written_answers(batch):
  """Each row's answer as written in the example, its closing <eos> included."""
  answers = []
  for tokens, mask in zip(batch['tokens'], batch['loss_mask']):
    start = TASK.prompt_length(tokens, mask)
    answers.append(tokens[start:start + int(mask.sum())])
  return answers


def test_the_written_answer_is_right_and_its_record_is_the_examples(monkeypatch):
  batch = _batch()
  _answers_as_generation(monkeypatch, _written_answers(batch))
  trace, verdicts = generation.generate_trace(tiny_anira('fixed', tiny_model(vocab_size=16)),
                                              {}, TASK, batch)
  assert all(v.all() for v in verdicts.values())
  assert trace.sequence_correct.all()
  # The answer positions, annotations and features are those of the example itself (the
  # trace ends with the longest answer; the batch's tail is padding).
  length = trace.loss_mask.shape[1]
  assert not batch['loss_mask'][:, length:].any()
  np.testing.assert_array_equal(trace.loss_mask, batch['loss_mask'][:, :length])
  np.testing.assert_array_equal(trace.annotated, batch['annotated'][:, :length])
  for name in TASK.feature_names:
    np.testing.assert_array_equal(trace.features[name], batch['features'][name][:, :length],
                                  err_msg=name)
  result = generation.results(trace, verdicts)
  assert result['valid_order_rate'] == 1.0 and result['samples'] == 6
  assert result['mean_depth'] == 2.0 and set(result['per_size']) <= {4, 6, 8}


def test_a_broken_answer_is_wrong_from_its_first_invalid_token(monkeypatch):
  batch = _batch()
  answers = _written_answers(batch)
  broken = [a.copy() for a in answers]
  broken[0][[0, -2]] = broken[0][[-2, 0]]  # the query (last node) first: its parents follow it
  broken[1] = broken[1][1:]  # a node missing
  _answers_as_generation(monkeypatch, broken)
  trace, verdicts = generation.generate_trace(tiny_anira('fixed', tiny_model(vocab_size=16)),
                                              {}, TASK, batch)
  np.testing.assert_array_equal(verdicts['valid_order'], [False, False, True, True, True, True])
  assert not verdicts['node_set_correct'][1] and verdicts['node_set_correct'][0]
  np.testing.assert_array_equal(trace.sequence_correct, verdicts['valid_order'])
  first = TASK.prompt_length(batch['tokens'][0], batch['loss_mask'][0]) - 1
  assert not trace.correct[0, first] and not trace.annotated[0, first]


@pytest.mark.parametrize('name', ['early', 'online'])
def test_greedy_generation_records_the_decoders_depths(name):
  batch = _batch()
  anira = tiny_anira(name, tiny_model(vocab_size=TASK.vocab_size))
  params = anira.init(jax.random.key(0))
  trace, verdicts = evaluation.generation_traces(anira, params, TASK, [batch])
  prompts = [TASK.prompt_length(t, m) for t, m in zip(batch['tokens'], batch['loss_mask'])]
  for b, start in enumerate(prompts):
    np.testing.assert_array_equal(trace.tokens[b, :start], batch['tokens'][b, :start])
  # The decoder's depths at the answer positions are the masked loop's on the generated text.
  full = anira.apply(params, trace.tokens, train=False, path='loop')
  answer = trace.loss_mask
  np.testing.assert_array_equal(trace.depth[answer], np.asarray(full.trajectory.depth_BxL)[answer])
  assert not trace.depth[~answer].any()
  assert set(verdicts) == {'terminated', 'node_set_correct', 'valid_order'}
  assert trace.loss_mask.sum(-1).min() >= 1
