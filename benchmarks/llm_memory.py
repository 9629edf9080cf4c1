"""Memory per device of the paper's LLM-scale fine-tuning, computed from shapes alone.

    python -m benchmarks.llm_memory [--fsdp=4,8] [--length=4096] [--sequences=1,2,4]

No weights and no accelerator: the model is built from a Llama-3.2-1B config.json (its
published values; McLeish et al.'s Recurrent-Llama-3.2 keeps 4 prelude, 6 core and 4 coda
layers of its 16: layers 0-3, 6-11, 12-15 here, by analogy with their OLMo map), D = 8, ANIRA-E,
bfloat16 matmuls, AdamW, and
- the train state (float32 parameters and both Adam moments) from `jax.eval_shape` of
  `train_state.create`, split over `fsdp` devices by `sharding.state_shardings`' rule;
- gradients: one more float32 copy of the parameters, split the same way;
- activations: the residuals the backward pass keeps for one sequence of `length` tokens,
  listed by JAX for the training loss (`saved_residuals`, shapes only) with and without
  `model.remat` (which recomputes each core iteration; the prelude and coda layers keep
  theirs), times the sequences each device holds per microbatch (the batch is split over
  every device; `train.grad_accumulation_steps` sets the microbatch). The largest is the
  softmax over the 128,257 logits of every position (2.0 GiB a sequence, float32);
- bfloat16 copies of weights kept for the backward pass, reported apart: one layer's worth
  when XLA re-gathers FSDP shards per use, all of them at worst.
Not counted: XLA's temporary buffers while a layer runs (its working set: a few activations of
one layer), the data, and framework overhead. Printed as a markdown table for the README.
"""

from __future__ import annotations

import argparse
import json
import math
import tempfile

import jax
import jax.numpy as jnp
import ml_collections
# What jax.ad_checkpoint.print_saved_residuals prints, as data (shapes and where they come from).
from jax._src.ad_checkpoint import saved_residuals

from anira_jax import pretrained, sharding
from anira_jax import train_state as state_lib
from anira_jax.anira import Anira
from anira_jax.model.config import ModelConfig
from anira_jax.training import objective

LLAMA_3_2_1B = {  # meta-llama/Llama-3.2-1B config.json
    'model_type': 'llama', 'architectures': ['LlamaForCausalLM'], 'vocab_size': 128256,
    'hidden_size': 2048, 'intermediate_size': 8192, 'num_hidden_layers': 16,
    'num_attention_heads': 32, 'num_key_value_heads': 8, 'head_dim': 64, 'rms_norm_eps': 1e-5,
    'rope_theta': 500000.0, 'tie_word_embeddings': True, 'bos_token_id': 128000,
    'eos_token_id': 128001, 'rope_scaling': {
        'factor': 32.0, 'low_freq_factor': 1.0, 'high_freq_factor': 4.0,
        'original_max_position_embeddings': 8192, 'rope_type': 'llama3'}}
GB = 2**30


def model(remat: bool) -> Anira:
  with tempfile.TemporaryDirectory() as directory:
    with open(f'{directory}/config.json', 'w') as f:
      json.dump(LLAMA_3_2_1B, f)
    fields = pretrained.model_fields(pretrained.Options(path=directory, prelude='0-3',
                                                        core='6-11', coda='12-15'))
  return Anira(ModelConfig(max_depth=8, dtype='bfloat16', remat=remat, **fields), 'early')


def nbytes(tree) -> int:
  return sum(math.prod(x.shape) * jnp.dtype(x.dtype).itemsize for x in jax.tree.leaves(tree))


def split_bytes(tree, fsdp: int) -> float:
  """Bytes per device under `sharding`'s FSDP rule (a leaf split over fsdp, or replicated)."""
  total = 0.0
  for x in jax.tree.leaves(tree):
    size = math.prod(x.shape) * jnp.dtype(x.dtype).itemsize
    total += size / fsdp if sharding._leaf_spec(x.shape, fsdp) != jax.sharding.PartitionSpec() \
        else size
  return total


def residuals(anira: Anira, params, length: int) -> tuple[int, int, int]:
  """(activation bytes, weight-copy bytes) kept for the backward pass of one sequence."""
  batch = {'tokens': jax.ShapeDtypeStruct((1, length), jnp.int32),
           'targets': jax.ShapeDtypeStruct((1, length), jnp.int32),
           'loss_mask': jax.ShapeDtypeStruct((1, length), jnp.bool_),
           'complexity': jax.ShapeDtypeStruct((1, length), jnp.float32)}
  loss = lambda p, b: sum(objective.loss_terms(anira, p, b, jax.random.key(0))[:2])
  activations = weights = 0
  for shape_dtype, source in saved_residuals(loss, params, batch):
    if source.startswith('from the argument'):  # the parameters themselves: in the state
      continue
    size = math.prod(shape_dtype.shape) * jnp.dtype(shape_dtype.dtype).itemsize
    per_token = length in shape_dtype.shape  # activations have the sequence axis
    activations += size if per_token else 0
    weights += 0 if per_token else size
  return activations, weights


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--fsdp', default='4,8')
  parser.add_argument('--length', type=int, default=4096)
  parser.add_argument('--sequences', default='1,2,4')
  args = parser.parse_args(argv)
  train = ml_collections.ConfigDict(dict(learning_rate=2e-5, warmup_steps=100, steps=5000,
                                         final_lr_fraction=0.1, weight_decay=0.0, grad_clip=1.0))
  tx = state_lib.make_optimizer(train)
  anira = model(remat=False)
  state = jax.eval_shape(lambda k: state_lib.create(anira, tx, k), jax.random.key(0))
  params = state.params
  layer = params['model']['core']['layer_0']
  print(f'model: {nbytes(params) / 4 / 1e9:.3f} B parameters (float32: {nbytes(params) / GB:.2f} '
        f'GiB; one layer {nbytes(layer) / 4 / 1e6:.1f} M), Adam moments '
        f'{(nbytes(state.opt_state)) / GB:.2f} GiB')
  per_sequence = {remat: residuals(model(remat), params, args.length) for remat in (False, True)}
  for remat, (act, weights) in per_sequence.items():
    print(f'remat={remat}: activations {act / GB:.2f} GiB per sequence of {args.length}; '
          f'bfloat16 weight copies {weights / GB:.2f} GiB')
  print()
  print('| fsdp | params + Adam | gradients | remat | sequences / device | activations | '
        'total (weights re-gathered) | + all bf16 weight copies |')
  print('|---|---|---|---|---|---|---|---|')
  for fsdp in map(int, args.fsdp.split(',')):
    state_gb = split_bytes(state, fsdp) / GB
    grads_gb = split_bytes(params, fsdp) / GB
    layer_copy = nbytes(layer) / 2 / GB  # one layer's weights in bfloat16, gathered
    for remat, (act, weights) in per_sequence.items():
      for m in map(int, args.sequences.split(',')):
        base = state_gb + grads_gb + m * act / GB + layer_copy
        print(f'| {fsdp} | {state_gb:.2f} GiB | {grads_gb:.2f} GiB | {remat} | {m} | '
              f'{m * act / GB:.2f} GiB | {base:.1f} GiB | {base + weights / GB:.1f} GiB |')


if __name__ == '__main__':
  main()
