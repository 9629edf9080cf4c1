"""Batched greedy generation with the KV-cache decoder, recording each generated token's depth.

`decoding.generate` continues prompts of one length; benchmarks have prompts of many. Here
every row still starts at position 0 (the model has no left padding: padding is never read
by real tokens only when it trails them) and all rows advance one position per step: row b is
teacher-forced while the position is inside its prompt and feeds back its own argmax after it,
so a short prompt starts generating while longer ones are still being read. Each step is
`decoding.decode_step`, the same computation as the inference loop (tests/test_decoding.py),
so every token runs its own depth. Steps run on device in chunks (`lax.fori_loop`); between
chunks the host checks stop conditions (EOS, a stop string) and ends the batch once every row
has stopped or reached `max_new_tokens`.

Depth of a generated token: that of the position whose prediction it is (the first generated
token's is the last prompt token's), as annotations sit at the position whose prediction they
describe (`tasks.base`). Its decision cost is that position's decision-head calls.

With a mesh, each batch's rows are split over its devices (data-parallel generation, the
parameters as they are sharded) and every process gets every row back.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

from anira_jax import decoding, sharding
from anira_jax.anira import Anira

LENGTH_QUANTUM = 128  # cache and prompt lengths are rounded up to it: few compilations


class Generated(NamedTuple):
  """One prompt's continuation (up to and excluding its stop), per generated token."""

  tokens: np.ndarray  # int32 [G]
  depth: np.ndarray  # int32 [G]: iterations run to predict it
  head_calls: np.ndarray  # int32 [G]: decision-head calls made to predict it
  stopped: bool  # ended by EOS or a stop condition (else by max_new_tokens)


def _round_up(n: int, quantum: int = LENGTH_QUANTUM) -> int:
  return -(-n // quantum) * quantum


def _chunk(anira: Anira, params, cache, prompt_BxP, prompt_len_B, token_B, start, *,
           steps: int, max_depth: int | None):
  """Positions start .. start + steps - 1: the input of row b at position p is its prompt token
  while p < prompt_len[b], else the argmax predicted at p - 1 (`token_B` carries it)."""

  def step(i, carry):
    cache, token_B, tokens_BxC, depth_BxC, calls_BxC = carry
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
            put(calls_BxC, out.head_calls_B))

  batch = prompt_BxP.shape[0]
  zeros = jnp.zeros((batch, steps), jnp.int32)
  cache, token_B, tokens_BxC, depth_BxC, calls_BxC = jax.lax.fori_loop(
      0, steps, step, (cache, token_B, zeros, zeros, zeros))
  return cache, token_B, tokens_BxC, depth_BxC, calls_BxC


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
                  out_shardings=(cache_sharding, split, replicated, replicated, replicated)))


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
  tokens, depths, calls = [], [], []
  results: dict[int, Generated] = {}
  for start in range(0, cache_len - chunk + 1, chunk):
    cache, token_B, t, d, c = run(params, cache, host['prompt'], host['length'], token_B,
                                  jnp.int32(start))
    t, d, c = jax.device_get((t, d, c))
    tokens.append(t)
    depths.append(d)
    calls.append(c)
    position = start + chunk  # positions 0 .. position - 1 done
    all_t, all_d, all_c = (np.concatenate(x, axis=1) for x in (tokens, depths, calls))
    for b in range(len(prompts)):
      if b in results:
        continue
      first = lengths[b] - 1  # the position predicting the first generated token
      made = all_t[b, first:position][:max_new_tokens]
      end = next((i for i, tok in enumerate(made) if tok in eos_ids), None)
      if end is None and stop is not None:
        end = stop(made)
      if end is not None or len(made) >= max_new_tokens:
        keep = len(made) if end is None else end
        results[b] = Generated(made[:keep], all_d[b, first:first + keep],
                               all_c[b, first:first + keep], end is not None)
    if len(results) == len(prompts) or position >= total:
      break
  for b in range(len(prompts)):  # rows that ran out of positions (cannot happen past total)
    if b not in results:
      first = lengths[b] - 1
      made = all_t[b, first:first + max_new_tokens]
      results[b] = Generated(made, all_d[b, first:first + len(made)],
                             all_c[b, first:first + len(made)], False)
  return [results[b] for b in range(len(prompts))]
