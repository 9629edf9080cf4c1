"""Inference speed of adaptive depth: fixed depth vs masked vs compacted, decoding, training.

    python -m benchmarks.inference           # the full table (a quiet machine, ~10-20 min on 2 CPUs)
    python -m benchmarks.inference --quick   # a small model and short sequences: checks it all runs

One run prints, and writes as JSON to --out (default benchmarks/inference.json):
1. Inference speed at each sequence length and depth distribution, for
     fixed      — the `fixed` decider on the inference loop: every token runs D iterations;
     masked     — the `oracle` decider on the inference loop (`path='loop'`): per-token freezing
                  by masking, the loop ends when every token has halted;
     compacted  — the `oracle` decider through `compaction.run_compacted`;
   the measured speedup of the recurrence (h0 -> exit states) over fixed next to the ideal
   n·D/Σd (Σd = executed token-steps), whole-model tokens/s (embedding, prelude, coda and head
   timed once per length and added: they bound the whole-model speedup below n·D/Σd), the
   compacted path's dense/compacted iteration counts, and the peak memory XLA plans for each
   compiled recurrence (arguments + outputs + temporaries).
   The oracle reads a synthetic complexity c = d − 1 per token (c_max = D − 1), so the depths are
   exactly the chosen distribution: all 1, geometric (p = 1/2, mean ≈ 2, truncated at D),
   uniform on 1..D, all D.
2. Decoding (`decoding.decode_step`) cost of one token at position --decode_context against that
   token's own depth 1..D (the depths called in turn, 10 x --repeats times each).
3. Training tokens/s of the jitted train step (forward + backward + AdamW) per decider.
The process's peak resident memory (ru_maxrss) is printed at the end. Nothing here is asserted;
timings are medians of --repeats calls after one warm-up (compilation) call, and in table 1 the
three methods are called in turn (fixed, masked, compacted, fixed, ...), so a load that changes
during the run hits all three alike and their ratios stay fair.
"""

from __future__ import annotations

import functools
import resource
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import app, flags

from benchmarks import timing

from anira_jax import compaction, deciders, decoding, recurrence
from anira_jax.anira import Anira
from anira_jax import train_state as state_lib
from anira_jax.deciders import scheduled
from anira_jax.model.config import ModelConfig
from anira_jax.training import step as step_lib

_QUICK = flags.DEFINE_bool('quick', False, 'Small model, short sequences, 2 repeats.')
_LENGTHS = flags.DEFINE_list('lengths', ['128', '256', '512', '1024', '2048'],
                             'Sequence lengths.')
_TOKENS = flags.DEFINE_integer('tokens_per_batch', 8192,
                               'Batch size = max(1, tokens_per_batch // length).')
_DISTS = flags.DEFINE_list('dists', ['depth1', 'geometric', 'uniform', 'full'],
                           'Depth distributions (see the module docstring).')
_WIDTH = flags.DEFINE_integer('width', 128, 'Model width.')
_HEADS = flags.DEFINE_integer('heads', 4, 'Attention heads.')
_DEPTH = flags.DEFINE_integer('depth', 8, 'D, the most iterations a token may run.')
_CORE_LAYERS = flags.DEFINE_integer('core_layers', 1, 'Layers in the recurrent core.')
_REPEATS = flags.DEFINE_integer('repeats', 5, 'Timed calls per measurement (median).')
_DENSE_FRACTION = flags.DEFINE_float('dense_fraction', 0.75,
                                     'Compacted: above this active share the dense step runs.')
_DECODE_CONTEXT = flags.DEFINE_integer('decode_context', 512, 'Position of the decoded token.')
_TRAIN_LENGTH = flags.DEFINE_integer('train_length', 256, 'Sequence length of the train step.')
_TRAIN_DECIDERS = flags.DEFINE_list('train_deciders', ['fixed', 'early', 'online'],
                                    'Deciders whose train step is timed.')
_OUT = flags.DEFINE_string('out', 'benchmarks/inference.json', 'Where to write the figures.')

METHODS = ('fixed', 'masked', 'compacted')
DECODE_CALLS_PER_REPEAT = 10


def _planned_bytes(compiled) -> int | None:
  """Arguments + outputs + temporaries of the compiled program (XLA's plan), if reported."""
  try:
    stats = compiled.memory_analysis()
  except Exception:  # not every backend reports it
    return None
  if stats is None:
    return None
  return int(stats.argument_size_in_bytes + stats.output_size_in_bytes
             + stats.temp_size_in_bytes - stats.alias_size_in_bytes)


def depths(dist: str, shape: tuple[int, int], max_depth: int, rng: np.random.Generator):
  """Per-token depths [B, L] of a named distribution over 1..max_depth."""
  if dist == 'depth1':
    return np.ones(shape, np.int32)
  if dist == 'full':
    return np.full(shape, max_depth, np.int32)
  if dist == 'uniform':
    return rng.integers(1, max_depth + 1, shape).astype(np.int32)
  if dist == 'geometric':
    return np.minimum(rng.geometric(0.5, shape), max_depth).astype(np.int32)
  raise ValueError(f'unknown depth distribution {dist!r}')


def _models(model: ModelConfig, max_depth: int):
  oracle = Anira(model, 'oracle', scheduled.OracleOptions(max_complexity=float(max_depth - 1)))
  fixed = Anira(model, 'fixed')
  return oracle, fixed


def inference_table(model: ModelConfig, lengths, dists, repeats, dense_fraction, tokens_per_batch):
  """Rows of recurrence and whole-model throughput per (length, distribution).

  The three methods differ only in the recurrence, so each is timed on h0 (prelude output) to
  the trajectory; embedding + prelude + coda + LM head are timed once per length and added for
  the whole-model tokens/s.
  """
  oracle, fixed = _models(model, model.max_depth)
  params = oracle.init(jax.random.key(0))
  fixed_params = {'model': params['model'], 'decider': {}}
  net = oracle.network
  rng = np.random.default_rng(0)

  def context(complexity):
    return deciders.Context(train=False, key=None, max_depth=model.max_depth,
                            complexity_BxL=complexity)

  run = {
      'fixed': jax.jit(lambda p, h0, c, valid: recurrence.loop(
          net, fixed.decider, p, h0, context(None), valid)),
      'masked': jax.jit(lambda p, h0, c, valid: recurrence.loop(
          net, oracle.decider, p, h0, context(c), valid)),
      'compacted': jax.jit(lambda p, h0, c, valid: compaction.compacted_loop(
          oracle, p, h0, context(c), valid,
          buckets=compaction.bucket_sizes(h0.shape[0] * h0.shape[1],
                                          dense_fraction=dense_fraction))),
  }
  embed_and_readout = jax.jit(lambda p, tok: net.readout(p, net.embed(p, tok)))
  embed = jax.jit(net.embed)
  rows = []
  for length in lengths:
    batch = max(1, tokens_per_batch // length)
    tokens = jnp.asarray(rng.integers(1, model.vocab_size, (batch, length)), jnp.int32)
    valid = tokens != 0
    h0 = embed(params['model'], tokens)
    io_seconds = timing.median_seconds(lambda: embed_and_readout(params['model'], tokens), repeats)
    # Each method compiled once per length (every distribution has the same shapes), its time
    # printed: on an accelerator compiling the compacted loop's buckets can take minutes.
    compiled, memory = {}, {}
    for method in METHODS:
      start = time.perf_counter()
      compiled[method] = run[method].lower(
          fixed_params if method == 'fixed' else params, h0,
          jnp.zeros((batch, length), jnp.float32), valid).compile()
      memory[method] = _planned_bytes(compiled[method])
      print(f'   L={length}: {method} compiled in {time.perf_counter() - start:.1f} s', flush=True)
    for dist in dists:
      depth_BxL = depths(dist, (batch, length), model.max_depth, rng)
      complexity = jnp.asarray(depth_BxL - 1, jnp.float32)
      ideal = batch * length * model.max_depth / depth_BxL.sum()
      row = {'length': length, 'batch': batch, 'dist': dist,
             'mean_depth': float(depth_BxL.mean()), 'ideal_speedup': float(ideal),
             'embed_readout_seconds': io_seconds}
      args = {method: (fixed_params if method == 'fixed' else params, h0, complexity, valid)
              for method in METHODS}
      calls = {method: functools.partial(compiled[method], *args[method])
               for method in METHODS}
      seconds = {method: float(np.median(times))
                 for method, times in timing.interleaved(calls, repeats).items()}
      for method in METHODS:
        row[f'{method}_recurrence_seconds'] = seconds[method]
        row[f'{method}_speedup'] = seconds['fixed'] / seconds[method]
        row[f'{method}_tokens_per_s'] = batch * length / (seconds[method] + io_seconds)
        row[f'{method}_planned_mb'] = (memory[method] / 2**20
                                       if memory.get(method) is not None else None)
      trajectory, work = compiled['compacted'](params, h0, complexity, valid)
      row['depths_as_chosen'] = bool(np.array_equal(np.asarray(trajectory.depth_BxL), depth_BxL))
      masked = compiled['masked'](params, h0, complexity, valid)
      row['compacted_max_abs_diff_vs_masked'] = float(jnp.max(jnp.abs(
          trajectory.state_BxLxD - masked.state_BxLxD)))
      row['compacted_work'] = {k: int(v) for k, v in work._asdict().items()}
      row['compacted_share_of_ideal'] = row['compacted_speedup'] / ideal
      rows.append(row)
      print(f'L={length:5d} B={batch:3d} {dist:9s} mean d {row["mean_depth"]:4.2f} | recurrence '
            f'speedup over fixed: masked {row["masked_speedup"]:4.2f}x, compacted '
            f'{row["compacted_speedup"]:5.2f}x = {100 * row["compacted_share_of_ideal"]:3.0f}% '
            f'of ideal {ideal:4.2f}x | model tokens/s fixed {row["fixed_tokens_per_s"]:7.0f} '
            f'masked {row["masked_tokens_per_s"]:7.0f} compacted '
            f'{row["compacted_tokens_per_s"]:7.0f} | dense/compacted iterations '
            f'{int(work.dense_iterations)}/{int(work.compacted_iterations)}', flush=True)
    print(f'   L={length}: embed+readout {1e3 * io_seconds:.1f} ms; planned memory of the '
          'recurrence (MB): ' + ', '.join(f'{m} {memory[m] / 2**20:.1f}' for m in METHODS
                                          if memory.get(m) is not None), flush=True)
  return rows


def decoding_table(model: ModelConfig, context: int, repeats: int):
  """Seconds to decode one token at position `context` - 1, per depth of that token."""
  oracle, _ = _models(model, model.max_depth)
  params = oracle.init(jax.random.key(0))
  # The cache is donated, as in `decoding.generate`: updated in place, not copied per token.
  step = jax.jit(functools.partial(decoding.decode_step, oracle), donate_argnums=1)
  token = jnp.ones((1,), jnp.int32)
  position = jnp.int32(context - 1)  # rewritten each call: the earlier positions stay zeros
  holder = [decoding.init_cache(oracle, 1, context)]

  def once(complexity):
    out, holder[0] = step(params, holder[0], token, position, complexity)
    return out

  calls = {}
  for depth in range(1, model.max_depth + 1):
    complexity = jnp.full((1,), depth - 1.0, jnp.float32)
    assert int(once(complexity).depth_B[0]) == depth
    calls[depth] = functools.partial(lambda c: once(c).logits_BxV, complexity)
  # The depths in turn, DECODE_CALLS_PER_REPEAT x repeats times: one step takes only a few ms,
  # so a load change would otherwise show up as a cost of some depths.
  times = timing.interleaved(calls, DECODE_CALLS_PER_REPEAT * repeats)
  rows = [{'depth': depth, 'ms_per_token': 1e3 * float(np.median(times[depth]))}
          for depth in calls]
  base = rows[0]['ms_per_token']
  print(f'decoding one token at position {context - 1} (static frozen keys/values: '
        f'{decoding.static_frozen_kv(oracle)})')
  print('   depth  ms/token  vs depth 1')
  for row in rows:
    row['relative'] = row['ms_per_token'] / base
    print(f'   {row["depth"]:5d}  {row["ms_per_token"]:8.3f}  {row["relative"]:6.2f}x')
  return rows


def train_table(model: ModelConfig, length: int, decider_names, repeats: int, tokens_per_batch):
  batch = max(1, tokens_per_batch // length)
  rng = np.random.default_rng(1)
  tokens = jnp.asarray(rng.integers(1, model.vocab_size, (batch, length)), jnp.int32)
  data = {'tokens': tokens, 'targets': jnp.roll(tokens, -1, axis=1),
          'loss_mask': jnp.ones(tokens.shape, bool),
          'complexity': jnp.asarray(depths('uniform', tokens.shape, model.max_depth, rng) - 1,
                                    jnp.float32)}
  tx = optax.adamw(1e-3)
  rows = []
  for name in decider_names:
    options = deciders.DECIDERS[name].resolve(deciders.DECIDERS[name].Options(),
                                              (model.max_depth - 1,))
    anira = Anira(model, name, options)
    state = state_lib.create(anira, tx, jax.random.key(0))
    step = jax.jit(functools.partial(step_lib.train_step, anira=anira, tx=tx,
                                     key=jax.random.key(1)), donate_argnums=0)
    holder = [state]

    def once():
      holder[0], metrics = step(holder[0], data)
      return metrics['loss']

    seconds = timing.median_seconds(once, repeats)
    rows.append({'decider': name, 'length': length, 'batch': batch,
                 'tokens_per_s': batch * length / seconds, 'seconds_per_step': seconds})
    print(f'train step {name:7s} L={length} B={batch}: {batch * length / seconds:9.0f} tokens/s '
          f'({1e3 * seconds:.0f} ms/step)', flush=True)
  return rows


def main(argv):
  del argv
  host_memory_mode = timing.set_up_host_memory()
  quick = _QUICK.value
  model = ModelConfig(vocab_size=32, width=64 if quick else _WIDTH.value,
                      num_heads=_HEADS.value, mlp_ratio=4, max_depth=_DEPTH.value,
                      core_layers=_CORE_LAYERS.value)
  lengths = [256] if quick else [int(x) for x in _LENGTHS.value]
  repeats = 2 if quick else _REPEATS.value
  tokens_per_batch = 2048 if quick else _TOKENS.value
  print(f'{jax.devices()[0].platform} x{jax.device_count()}, jax {jax.__version__}; '
        f'model width {model.width}, {model.num_heads} heads, D={model.max_depth}, '
        f'core layers {model.core_layers}; {tokens_per_batch} tokens per batch; host memory: '
        f'{host_memory_mode}', flush=True)
  results = {
      'device': str(jax.devices()[0].device_kind), 'jax': jax.__version__, 'quick': quick,
      'host_memory': host_memory_mode,
      'tokens_per_batch': tokens_per_batch, 'dense_fraction': _DENSE_FRACTION.value,
      'model': {k: getattr(model, k) for k in
                ('width', 'num_heads', 'mlp_ratio', 'max_depth', 'core_layers')},
  }
  results['inference'] = inference_table(model, lengths, _DISTS.value, repeats,
                                         _DENSE_FRACTION.value, tokens_per_batch)
  results['decoding'] = decoding_table(model, 64 if quick else _DECODE_CONTEXT.value, repeats)
  results['train'] = train_table(model, 64 if quick else _TRAIN_LENGTH.value,
                                 ['early'] if quick else _TRAIN_DECIDERS.value, repeats,
                                 tokens_per_batch)
  results['peak_rss_mb'] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
  print(f'peak resident memory of this process: {results["peak_rss_mb"]:.0f} MB')
  timing.write_results(results, _OUT.value)


if __name__ == '__main__':
  app.run(main)
