"""Train-step speed of the project's model against a plain PyTorch eager version of the same model.

    python -m benchmarks.train_step            # batch 64 x 64 tokens, width 128, D = 8
    python -m benchmarks.train_step --quick    # a smaller batch and fewer repeats: a smoke run

The JAX side is the project's own jitted `training.step.train_step` (embedding, prelude, the
shared core iterated D times under the `fixed` decider, coda, cross-entropy, AdamW with global-norm
clipping and the warmup-cosine schedule of `train_state.make_optimizer`). The PyTorch side is
written here, plainly, as someone would write that model in eager PyTorch: the same layers
(pre-norm RMSNorm, q/k/v/out projections with biases, RoPE, causal attention, tanh-GELU MLP),
the same injection h ← h + (core(h + h0) − (h + h0)), the same freezing where(running, new, old),
the same loss and the same update (clip to global norm, then AdamW with b2 = 0.98, skipped if the
loss or the gradient norm is not finite). It starts from the JAX parameters, and the first loss
and gradient norm of both are printed side by side, so a reader can check that the two compute the
same function before comparing their speed.

The steps are timed interleaved (JAX, torch with its default threads, torch with one thread,
JAX, ...) and compared by medians, so a load that changes during the run (other jobs on the
machine) hits all alike; JAX is compared with the faster torch setting. torch is only
imported here; it is the optional `bench` extra (`pip install -e .[bench]`).
"""

from __future__ import annotations

import functools
import math
import os
import platform
import sys

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import app, flags

from benchmarks import timing

from anira_jax.anira import Anira, num_params
from anira_jax import train_state as state_lib
from anira_jax.model.config import ModelConfig
from anira_jax.training import step as step_lib

_QUICK = flags.DEFINE_bool('quick', False, 'Batch 16 x 32 tokens and 3 repeats: a smoke run.')
_BATCH = flags.DEFINE_integer('batch', 64, 'Sequences per batch.')
_LENGTH = flags.DEFINE_integer('length', 64, 'Tokens per sequence.')
_WIDTH = flags.DEFINE_integer('width', 128, 'Model width.')
_HEADS = flags.DEFINE_integer('heads', 4, 'Attention heads.')
_MLP_RATIO = flags.DEFINE_integer('mlp_ratio', 4, 'MLP hidden width / model width.')
_DEPTH = flags.DEFINE_integer('depth', 8, 'D: iterations of the shared core (every token runs D).')
_VOCAB = flags.DEFINE_integer('vocab', 32, 'Vocabulary size.')
_REPEATS = flags.DEFINE_integer('repeats', 10, 'Timed steps of each implementation.')
_TORCH_THREADS = flags.DEFINE_list(
    'torch_threads', ['default', '1'],
    'Thread counts to time torch with ("default": torch\'s own choice, one per core, as XLA). '
    'JAX is compared with the fastest: on a machine shared with other jobs torch\'s OpenMP '
    'threads can be many times slower than one thread.')
_OUT = flags.DEFINE_string('out', 'benchmarks/train_step.json', 'Where to write the results.')

# The optimizer settings of experiments/common.py (as `make_optimizer` reads them).
TRAIN = dict(learning_rate=1e-3, warmup_steps=100, steps=2000, final_lr_fraction=0.1,
             grad_clip=1.0, weight_decay=0.01)
RMS_EPS = 1e-6  # flax nn.RMSNorm's default


def _import_torch():
  try:
    import torch  # pylint: disable=g-import-not-at-top
  except ImportError:
    sys.exit('benchmarks.train_step compares against PyTorch, which is not installed. Install the '
             'optional extra with `pip install -e ".[bench]"`, or the CPU wheel alone with\n'
             '  pip install torch --index-url https://download.pytorch.org/whl/cpu')
  return torch


def learning_rate(step: int) -> float:
  """optax.warmup_cosine_decay_schedule with TRAIN's settings, at `step` (0-based)."""
  peak, warmup, total = TRAIN['learning_rate'], TRAIN['warmup_steps'], TRAIN['steps']
  end = peak * TRAIN['final_lr_fraction']
  if step < warmup:
    return peak * step / warmup
  frac = min(step - warmup, total - warmup) / (total - warmup)
  return end + (peak - end) * 0.5 * (1 + math.cos(math.pi * frac))


def torch_model(torch, model: ModelConfig, jax_params: dict):
  """The PyTorch eager model, initialised from the JAX parameter tree (the same function)."""
  nn, F = torch.nn, torch.nn.functional
  heads, head_dim, width = model.num_heads, model.head_dim, model.width

  def tensor(x):
    return torch.tensor(np.asarray(x, np.float32))

  def linear(p, in_features, out_features):
    layer = nn.Linear(in_features, out_features)
    with torch.no_grad():  # flax kernels are [in..., out...]; torch's weight is [out, in]
      layer.weight.copy_(tensor(p['kernel']).reshape(in_features, out_features).T)
      layer.bias.copy_(tensor(p['bias']).reshape(out_features))
    return layer

  class RMSNorm(nn.Module):

    def __init__(self, p):
      super().__init__()
      self.scale = nn.Parameter(tensor(p['scale']))

    def forward(self, x):
      return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + RMS_EPS) * self.scale

  def rope(x_BxHxLxK):
    half = head_dim // 2
    freq = 10_000.0 ** (-torch.arange(half, dtype=torch.float32) / half)
    angle = torch.arange(x_BxHxLxK.shape[2], dtype=torch.float32)[:, None] * freq[None]
    sin, cos = angle.sin(), angle.cos()
    x1, x2 = x_BxHxLxK[..., :half], x_BxHxLxK[..., half:]
    return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], -1)

  class Block(nn.Module):

    def __init__(self, p):
      super().__init__()
      self.attn_norm, self.mlp_norm = RMSNorm(p['attn_norm']), RMSNorm(p['mlp_norm'])
      self.query = linear(p['query'], width, width)
      self.key = linear(p['key'], width, width)
      self.value = linear(p['value'], width, width)
      self.out = linear(p['out'], width, width)
      self.mlp_in = linear(p['mlp_in'], width, model.mlp_ratio * width)
      self.mlp_out = linear(p['mlp_out'], model.mlp_ratio * width, width)

    def forward(self, x_BxLxD):
      b, length, _ = x_BxLxD.shape
      h = self.attn_norm(x_BxLxD)
      split = lambda y: y.view(b, length, heads, head_dim).transpose(1, 2)
      q, k, v = rope(split(self.query(h))), rope(split(self.key(h))), split(self.value(h))
      attn = F.scaled_dot_product_attention(q, k, v, is_causal=True)
      x_BxLxD = x_BxLxD + self.out(attn.transpose(1, 2).reshape(b, length, width))
      return x_BxLxD + self.mlp_out(F.gelu(self.mlp_in(self.mlp_norm(x_BxLxD)),
                                          approximate='tanh'))

  class Model(nn.Module):

    def __init__(self, p):
      super().__init__()
      self.embed = nn.Embedding(model.vocab_size, width)
      with torch.no_grad():
        self.embed.weight.copy_(tensor(p['embed']['embedding']))
      self.prelude = Block(p['prelude']['layer_0'])
      self.core = Block(p['core']['layer_0'])
      self.coda = Block(p['readout']['coda']['layer_0'])
      self.final_norm = RMSNorm(p['readout']['final_norm'])
      self.lm_head = linear(p['readout']['lm_head'], width, model.vocab_size)

    def forward(self, tokens_BxL, depth_BxL):
      h0 = self.prelude(self.embed(tokens_BxL))
      h = h0
      for t in range(1, model.max_depth + 1):
        x = h + h0
        new = h + (self.core(x) - x)
        h = torch.where((depth_BxL >= t)[..., None], new, h)  # tokens past their depth freeze
      return self.lm_head(self.final_norm(self.coda(h)))

  assert (model.prelude_layers, model.core_layers, model.coda_layers) == (1, 1, 1)
  return Model(jax_params['model'])


def torch_trainer(torch, model: ModelConfig, jax_params: dict, data: dict):
  """(step function, module): one eager AdamW update per call, the JAX step's update."""
  net = torch_model(torch, model, jax_params)
  opt = torch.optim.AdamW(net.parameters(), lr=learning_rate(0), betas=(0.9, 0.98), eps=1e-8,
                          weight_decay=TRAIN['weight_decay'])
  tokens = torch.tensor(np.asarray(data['tokens']), dtype=torch.long)
  targets = torch.tensor(np.asarray(data['targets']), dtype=torch.long)
  answer = torch.tensor(np.asarray(data['loss_mask']), dtype=torch.float32)
  depth = torch.full(tokens.shape, model.max_depth, dtype=torch.long)  # the fixed decider
  counter = [0]

  def step():
    logits = net(tokens, depth)
    ce = torch.nn.functional.cross_entropy(logits.reshape(-1, model.vocab_size),
                                           targets.reshape(-1), reduction='none')
    loss = (ce * answer.reshape(-1)).sum() / answer.sum().clamp(min=1.0)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    grad_norm = torch.nn.utils.clip_grad_norm_(net.parameters(), TRAIN['grad_clip'])
    if torch.isfinite(loss) and torch.isfinite(grad_norm):
      for group in opt.param_groups:
        group['lr'] = learning_rate(counter[0])
      opt.step()
      counter[0] += 1
    return loss.detach(), grad_norm

  return step, net


def jax_trainer(model: ModelConfig, data: dict):
  """(step function, initial params): the project's jitted train step, as `training.loop` runs
  it."""
  anira = Anira(model, 'fixed')
  tx = state_lib.make_optimizer(ml_collections.ConfigDict(TRAIN))
  state = state_lib.create(anira, tx, jax.random.key(0))
  params = jax.tree.map(np.asarray, state.params)  # a copy: the step donates the state
  jitted = jax.jit(functools.partial(step_lib.train_step, anira=anira, tx=tx,
                                     key=jax.random.key(1)), donate_argnums=0)
  holder = [state]

  def step():
    holder[0], metrics = jitted(holder[0], data)
    return jax.block_until_ready((metrics['loss'], metrics['grad_norm']))

  return step, params


def main(argv):
  del argv
  host_memory_mode = timing.set_up_host_memory()
  torch = _import_torch()
  default_threads = torch.get_num_threads()
  quick = _QUICK.value
  batch, length = (16, 32) if quick else (_BATCH.value, _LENGTH.value)
  repeats = 3 if quick else _REPEATS.value
  model = ModelConfig(vocab_size=_VOCAB.value, width=_WIDTH.value, num_heads=_HEADS.value,
                      mlp_ratio=_MLP_RATIO.value, prelude_layers=1, core_layers=1, coda_layers=1,
                      max_depth=_DEPTH.value)
  rng = np.random.default_rng(0)
  tokens = rng.integers(1, model.vocab_size, (batch, length))
  data = {'tokens': jnp.asarray(tokens, jnp.int32),
          'targets': jnp.asarray(np.roll(tokens, -1, axis=1), jnp.int32),
          'loss_mask': jnp.ones((batch, length), bool),
          'complexity': jnp.zeros((batch, length), jnp.float32)}

  jax_step, params = jax_trainer(model, data)
  torch_steps = {}
  for threads in _TORCH_THREADS.value:
    n = default_threads if threads == 'default' else int(threads)
    step, net = torch_trainer(torch, model, params, data)

    def with_threads(step=step, n=n):
      torch.set_num_threads(n)
      return step()

    torch_steps[f'torch_{n}t'] = with_threads
  counts = {'jax': num_params(params), 'torch': sum(p.numel() for p in net.parameters())}
  print(f'{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs; jax '
        f'{jax.__version__} ({jax.devices()[0].platform}), torch {torch.__version__} '
        f'(default {default_threads} threads); host memory (both): {host_memory_mode}')
  print(f'model: width {model.width}, {model.num_heads} heads, MLP x{model.mlp_ratio}, '
        f'1 prelude + 1 core (x{model.max_depth}) + 1 coda layer, vocab {model.vocab_size}; '
        f'batch {batch} x {length} tokens, float32')
  print(f'parameters: jax {counts["jax"]:,}, torch {counts["torch"]:,}')
  if counts['jax'] != counts['torch']:
    sys.exit('the two models differ in parameter count; the comparison would be meaningless')

  # First step of each from the same parameters: same loss and gradient norm = same function.
  first = {'jax': [float(x) for x in jax_step()]}
  first.update({name: [float(x) for x in fn()] for name, fn in torch_steps.items()})
  print('first step loss / grad norm: ' + ', '.join(
      f'{name} {loss:.6f} / {norm:.6f}' for name, (loss, norm) in first.items()))

  times = timing.interleaved({'jax': jax_step, **torch_steps}, repeats)
  tokens_per_step = batch * length
  results = {
      'jax': jax.__version__, 'torch': torch.__version__, 'torch_default_threads': default_threads,
      'host_memory': host_memory_mode,
      'cpus': os.cpu_count(), 'xla_flags': os.environ.get('XLA_FLAGS', ''), 'quick': quick,
      'batch': batch, 'length': length, 'repeats': repeats, 'parameters': counts,
      'model': {k: getattr(model, k) for k in
                ('width', 'num_heads', 'mlp_ratio', 'max_depth', 'vocab_size')},
      'first_step': first,
  }
  for name, seconds in times.items():
    median = float(np.median(seconds))
    results[name + '_step'] = {'median_s': median, 'min_s': float(np.min(seconds)),
                               'tokens_per_s': tokens_per_step / median}
    print(f'{name:9s} train step: {tokens_per_step / median:9.0f} tokens/s  '
          f'(median {1e3 * median:.0f} ms, min {1e3 * np.min(seconds):.0f} ms, {repeats} steps)')
  fastest = min(torch_steps, key=lambda name: results[name + '_step']['median_s'])
  ratios = np.asarray(times['jax']) / np.asarray(times[fastest])
  results['torch_fastest'] = fastest
  results['jax_over_torch_time'] = (results['jax_step']['median_s']
                                    / results[fastest + '_step']['median_s'])
  results['jax_over_torch_time_paired_median'] = float(np.median(ratios))
  print(f'JAX / torch ({fastest}, the faster torch) step time: '
        f'{results["jax_over_torch_time"]:.2f} (ratio of medians), '
        f'{results["jax_over_torch_time_paired_median"]:.2f} (median of paired ratios); '
        f'< 1 means JAX is faster')
  timing.write_results(results, _OUT.value)


if __name__ == '__main__':
  app.run(main)
