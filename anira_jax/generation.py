"""Greedy generation with the KV-cache decoder, and evaluation by generation.

**Generation** (`generate_batch`): prompts of different lengths in one batch. Every row starts at
position 0 (the model has no left padding: padding is never read by real tokens only when it
trails them) and all rows advance one position per step: row b is teacher-forced while the
position is inside its prompt and feeds back its own argmax after it, so a short prompt starts
generating while longer ones are still being read. Each step is `decoding.decode_step`, the same
computation as the inference loop (tests/test_decoding.py), so every token runs its own depth.
Steps run on device in chunks (`lax.fori_loop`); between chunks the host checks stop conditions
(an end token, a stop string) and ends the batch once every row has stopped or reached
`max_new_tokens`. A generated token's depth, E_q[d] and decision cost are those of the position
whose prediction it is (the first generated token's is the last prompt token's), as annotations
sit at the position whose prediction they describe (`tasks.base`). With a mesh, each batch's rows
are split over its devices (the parameters as they are sharded) and every process gets every row
back.

**Evaluation by generation** (`generate_trace`, `results`), for tasks whose answer is graded by
validity (`tasks.Generative`). BREVO's answer is a topological order of a query's ancestors, and
many orders are right, so its original evaluation generates the answer greedily after the prompt
and grades it (the node set, then the order) instead of matching the one order of the example
token by token; teacher-forced token accuracy stays the training metric. A generation's `Trace`
holds the prompt and the generated answer. Its answer positions are those whose prediction is an
answer token (the last prompt token predicts the first) up to the answer's end; each carries the
decision it ran (depth, E[d], head calls; other positions carry none) and the annotations of the
prediction it made, computed for the order actually generated. An answer token counts as correct
while the answer so far is a valid partial answer (`annotated`), its end when the whole answer is
right: a sequence is correct exactly when the task grades it right.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

import tasks
from anira_jax import decoding, sharding
from anira_jax import trace as trace_lib
from anira_jax.anira import Anira
from anira_jax.deciders import base as deciders_base

LENGTH_QUANTUM = 128  # cache and prompt lengths are rounded up to it: few compilations


class Generated(NamedTuple):
  """One prompt's continuation (up to and excluding its stop), per generated token."""

  tokens: np.ndarray  # int32 [G]
  depth: np.ndarray  # int32 [G]: iterations run to predict it
  expected_depth: np.ndarray  # float32 [G]: E_q[d] of that decision
  head_calls: np.ndarray  # int32 [G]: decision-head calls made to predict it
  stopped: bool  # ended by EOS or a stop condition (else by max_new_tokens)


def _round_up(n: int, quantum: int = LENGTH_QUANTUM) -> int:
  return -(-n // quantum) * quantum


def _chunk(anira: Anira, params, cache, prompt_BxP, prompt_len_B, token_B, start, *,
           steps: int, max_depth: int | None):
  """Positions start .. start + steps - 1: the input of row b at position p is its prompt token
  while p < prompt_len[b], else the argmax predicted at p - 1 (`token_B` carries it)."""

  def step(i, carry):
    cache, token_B, tokens_BxC, depth_BxC, expected_BxC, calls_BxC = carry
    position = start + i
    inside_B = position < prompt_len_B
    prompt_B = jax.lax.dynamic_index_in_dim(prompt_BxP, jnp.minimum(position,
                                                                    prompt_BxP.shape[1] - 1),
                                            axis=1, keepdims=False)
    input_B = jnp.where(inside_B, prompt_B, token_B)
    out, cache = decoding.decode_step(anira, params, cache, input_B, position,
                                      max_depth=max_depth)
    token_B = jnp.argmax(out.logits_BxV, -1).astype(jnp.int32)
    put = lambda x, v: jax.lax.dynamic_update_index_in_dim(x, v.astype(x.dtype), i, axis=1)
    return (cache, token_B, put(tokens_BxC, token_B), put(depth_BxC, out.depth_B),
            put(expected_BxC, deciders_base.expected_depth(out.q_BxT[:, None])[:, 0]),
            put(calls_BxC, out.head_calls_B))

  batch = prompt_BxP.shape[0]
  zeros = jnp.zeros((batch, steps), jnp.int32)
  carry = (cache, token_B, zeros, zeros, jnp.zeros((batch, steps), jnp.float32), zeros)
  return jax.lax.fori_loop(0, steps, step, carry)


@functools.lru_cache(maxsize=None)
def _compiled(anira: Anira, batch: int, prompt_len: int, cache_len: int, steps: int,
              max_depth: int | None, mesh):
  """(init_cache, chunk) jitted for one batch shape, rows split over `mesh` when given."""
  init = functools.partial(decoding.init_cache, anira, batch, cache_len, max_depth)
  chunk = functools.partial(_chunk, anira, steps=steps, max_depth=max_depth)
  if mesh is None:
    return jax.jit(init), jax.jit(chunk, donate_argnums=1)
  rows = sharding.BATCH_AXES
  shapes = jax.eval_shape(init)
  cache_sharding = jax.tree.map(
      lambda x: NamedSharding(mesh, P(*([None] * (x.ndim - 4)), rows)), shapes)
  split, replicated = sharding.batch_sharding(mesh), sharding.replicated(mesh)
  return (jax.jit(init, out_shardings=cache_sharding),
          jax.jit(chunk, donate_argnums=1,
                  out_shardings=(cache_sharding, split, *[replicated] * 4)))


def generate_batch(anira: Anira, params, prompts: Sequence[np.ndarray], *, max_new_tokens: int,
                   stop: Callable[[np.ndarray], int | None] | None = None,
                   eos_ids: Sequence[int] = (), chunk: int = 16, max_depth: int | None = None,
                   mesh=None) -> list[Generated]:
  """Greedy continuations of `prompts` (our token ids, each non-empty), one batch.

  Args:
    anira, params: the model (inference rule of its decider) and its parameters.
    prompts: token ids of each row's prompt.
    max_new_tokens: most tokens generated per row.
    stop: given a row's generated ids so far, the number of them to keep if it should stop
      there (e.g. before a stop string), else None.
    eos_ids: ids that end a row (not kept).
    chunk: positions per device call between the host's stop checks.
    max_depth: T at evaluation (the trained D by default).
    mesh: split rows over its devices (every process passes the same prompts).

  Returns:
    one `Generated` per prompt.
  """
  if LENGTH_QUANTUM % chunk:
    raise ValueError(f'chunk={chunk} must divide {LENGTH_QUANTUM}')
  lengths = np.array([len(p) for p in prompts], np.int32)
  if lengths.min() < 1:
    raise ValueError('every prompt needs at least one token')
  batch = len(prompts)
  if mesh is not None:
    batch = -(-batch // mesh.devices.size) * mesh.devices.size
  prompt_len = _round_up(int(lengths.max()))
  total = int(lengths.max()) - 1 + max_new_tokens  # positions that predict something needed
  cache_len = _round_up(total + 1)
  prompt_BxP = np.zeros((batch, prompt_len), np.int32)
  for b, p in enumerate(prompts):
    prompt_BxP[b, :len(p)] = p
  lengths_B = np.zeros(batch, np.int32)
  lengths_B[:len(prompts)] = lengths
  init, run = _compiled(anira, batch, prompt_len, cache_len, chunk, max_depth, mesh)
  host = {'prompt': prompt_BxP, 'length': lengths_B, 'token': np.zeros(batch, np.int32)}
  if mesh is not None:  # every process holds every row; each device takes its own
    split = sharding.batch_sharding(mesh)
    host = {k: jax.make_array_from_callback(x.shape, split, lambda index, x=x: x[index])
            for k, x in host.items()}
  cache, token_B = init(), host['token']
  chunks = []  # per chunk: (tokens, depth, expected depth, head calls), each [B, chunk]
  results: dict[int, Generated] = {}

  def row(b: int, first: int, keep: int, stopped: bool) -> Generated:
    t, d, e, c = (x[b, first:first + keep] for x in outputs)
    return Generated(t, d, e, c, stopped)

  for start in range(0, cache_len - chunk + 1, chunk):
    cache, token_B, *made_chunk = run(params, cache, host['prompt'], host['length'], token_B,
                                      jnp.int32(start))
    chunks.append(jax.device_get(made_chunk))
    position = start + chunk  # positions 0 .. position - 1 done
    outputs = [np.concatenate(x, axis=1) for x in zip(*chunks)]
    for b in range(len(prompts)):
      if b in results:
        continue
      first = lengths[b] - 1  # the position predicting the first generated token
      made = outputs[0][b, first:position][:max_new_tokens]
      end = next((i for i, tok in enumerate(made) if tok in eos_ids), None)
      if end is None and stop is not None:
        end = stop(made)
      if end is not None or len(made) >= max_new_tokens:
        results[b] = row(b, first, len(made) if end is None else end, end is not None)
    if len(results) == len(prompts) or position >= total:
      break
  for b in range(len(prompts)):  # rows that ran out of positions (cannot happen past total)
    if b not in results:
      results[b] = row(b, lengths[b] - 1, max_new_tokens, False)
  return [results[b] for b in range(len(prompts))]


def generate_trace(anira: Anira, params: dict, task: tasks.Generative, batch: dict,
                   max_depth: int | None = None, mesh=None
                   ) -> tuple[trace_lib.Trace, dict[str, np.ndarray]]:
  """The greedy answer of every row of a host batch after its prompt, as a Trace (see the module
  docstring), and the task's verdicts ({name: [B] bool})."""
  tokens_BxL, loss_mask_BxL = batch['tokens'], batch['loss_mask']
  batch_size = len(tokens_BxL)
  prompt_B = [task.prompt_length(t, m) for t, m in zip(tokens_BxL, loss_mask_BxL)]
  prompts = [tokens_BxL[b, :prompt_B[b]] for b in range(batch_size)]
  made = generate_batch(anira, params, prompts,
                        max_new_tokens=task.max_answer_length(int(max(batch['size']))),
                        stop=task.answer_end, max_depth=max_depth, mesh=mesh)
  length = max(p + len(m.tokens) for p, m in zip(prompt_B, made))
  zeros = lambda dtype: np.zeros((batch_size, length), dtype)  # noqa: E731
  arrays = {name: zeros(np.float32) for name in ('expected_depth', 'complexity')}
  arrays.update({name: zeros(np.int32) for name in ('tokens', 'depth', 'head_calls')})
  arrays.update({name: zeros(bool) for name in ('loss_mask', 'annotated', 'correct')})
  fields = {name: zeros(np.float32) for name in task.feature_names}
  verdicts: dict[str, list[bool]] = {}
  for b, (start, out) in enumerate(zip(prompt_B, made)):
    prompt = tokens_BxL[b, :start]
    grade = task.grade(prompt, out.tokens)
    for name, verdict in grade.items():
      verdicts.setdefault(name, []).append(verdict)
    annotations = task.generation_features(prompt, out.tokens)
    answer = slice(start - 1, start - 1 + len(out.tokens))  # position p predicts token p + 1
    arrays['tokens'][b, :start] = prompt
    arrays['tokens'][b, start:start + len(out.tokens)] = out.tokens
    arrays['depth'][b, answer] = out.depth
    arrays['expected_depth'][b, answer] = out.expected_depth
    arrays['head_calls'][b, answer] = out.head_calls
    arrays['loss_mask'][b, answer] = True
    arrays['annotated'][b, answer] = annotations['annotated']
    arrays['complexity'][b, answer] = annotations['complexity']
    # Answer tokens are right while the answer stays valid; its last one (the end) when the
    # whole answer is: the sequence is right exactly when the task's last verdict says so.
    arrays['correct'][b, answer] = annotations['annotated']
    if len(out.tokens):
      arrays['correct'][b, start - 2 + len(out.tokens)] = list(grade.values())[-1]
    for name in task.feature_names:
      fields[name][b, answer] = annotations[name]
  trace = trace_lib.Trace(max_depth=max_depth or anira.model_cfg.max_depth,
                          rule=anira.decider.rule_label, size=np.asarray(batch['size']),
                          features=fields, **arrays)
  return trace, {name: np.asarray(v) for name, v in verdicts.items()}


def results(trace: trace_lib.Trace, verdicts: dict[str, np.ndarray]) -> dict:
  """A split's generation figures: `accuracy` (the share of right answers: the task's last
  verdict), each verdict's rate, the mean depth of the generated answer tokens' decisions, and
  the same per size."""
  right = list(verdicts)[-1]

  def figures(rows_B):
    summary = trace_lib.summary(trace, rows_B)
    return {'samples': int(rows_B.sum()), 'accuracy': float(verdicts[right][rows_B].mean()),
            **{f'{name}_rate': float(v[rows_B].mean()) for name, v in verdicts.items()},
            'mean_depth': summary['mean_depth'],
            'mean_expected_depth': summary['mean_expected_depth']}

  every = np.ones(trace.batch_size, bool)
  return {**figures(every),
          'per_size': {int(s): figures(trace.size == s) for s in np.unique(trace.size)}}
