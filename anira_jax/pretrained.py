"""Pretrained checkpoints: a Hugging Face Llama checkpoint retrofitted into prelude / core / coda,
or an already-recurrent one, loaded into the model's parameter tree born sharded.

Two formats, both a directory with `config.json` and `*.safetensors` (one file, or shards named
by `model.safetensors.index.json`), read with the `safetensors` package (no torch):
- **Llama** (`model_type` 'llama', `LlamaForCausalLM`): `config.pretrained.prelude`, `.core`
  and `.coda` name which of its layers form the prelude, the looped core and the coda, as in
  retrofitted recurrence (McLeish et al. 2025, arXiv 2511.07384: TinyLlama's 22 layers as
  prelude 0-3, core 10-17, coda 18-21, layers 4-9 dropped). The linear adapter A·[h; h0] is not
  in the checkpoint: it starts as the identity on h (`Network.init`), so with every layer in
  place, no recurrence (D = 1) and the prelude output as initial state the model is the
  checkpoint's function (tested against `transformers`). McLeish et al. keep a fresh random
  adapter instead and start the state from noise.
- **Raven** (`model_type` 'huginn_raven' with Llama blocks: the retrofitted-recurrence models,
  e.g. Recurrent-Llama-3.2 / Recurrent-TinyLlama): prelude, core block, coda and adapter are
  the checkpoint's own (`transformer.prelude.N`, `.core_block.N`, `.coda.N`, `.adapter`, fused
  `attn.Wqkv` and `mlp.fc`). Their recurrence starts from random noise s0 ~ TruncNormal; ours is
  deterministic, so these load with `state_init='zero'` (their `init_values.std = 0` case).
  Huginn-0125 itself (sandwich blocks with four norms, q/k biases, scaled embeddings) is
  another block and is refused.

`model_fields` gives the `config.model` fields a checkpoint implies (the experiment config
sets them; `check` refuses a model that differs). `load_params` builds every parameter with
`jax.make_array_from_callback`: each device's shard is read from the memory-mapped file as a
slice of the tensor (transposed from torch's [out, in] layout), so no host ever holds the whole
model, and parameters the checkpoint lacks (decision head; adapter) come from `Anira.init`
under the same shardings. Token ids are shifted by one (`model/llama.py`).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import pathlib
import re

import jax
import jax.numpy as jnp
import ml_dtypes  # noqa: F401  (numpy learns bfloat16: checkpoints are stored in it)
import numpy as np

from anira_jax import options
from anira_jax.anira import Anira
from anira_jax.model.config import ModelConfig
from anira_jax.options import ConfigError
from anira_jax.train_state import TrainState

FORMATS = ('llama', 'raven')


@dataclasses.dataclass(frozen=True)
class Options(options.Options):
  """`config.pretrained`: the checkpoint a run starts from (instead of a random init)."""

  path: str = ''  # a directory with config.json and *.safetensors; '' = train from scratch
  prelude: str = ''  # Llama format: checkpoint layers forming the prelude, e.g. '0-3'
  core: str = ''  # ... the looped core, e.g. '10-17'
  coda: str = ''  # ... the coda, e.g. '18-21' ('' = the format's own, for Raven)

  def check(self, path: str) -> None:
    for field in ('prelude', 'core', 'coda'):
      layer_list(getattr(self, field), f'{path}.{field}')


def layer_list(spec: str, path: str = 'layers') -> tuple[int, ...]:
  """'0-3,5' -> (0, 1, 2, 3, 5) in the order written (a layer may not repeat)."""
  layers = []
  for part in str(spec).replace(' ', '').split(','):
    if not part:
      continue
    match = re.fullmatch(r'(\d+)(?:-(\d+))?', part)
    if not match or int(match[2] or match[1]) < int(match[1]):
      raise ConfigError(f'config.{path}={spec!r}: expected layer indices like "0-3,5"')
    layers.extend(range(int(match[1]), int(match[2] or match[1]) + 1))
  if len(set(layers)) != len(layers):
    raise ConfigError(f'config.{path}={spec!r} names a layer twice')
  return tuple(layers)


def read_config(path: str | pathlib.Path) -> dict:
  file = pathlib.Path(path) / 'config.json'
  if not file.exists():
    raise ConfigError(f'config.pretrained.path={str(path)!r} has no config.json (expected a '
                      'Hugging Face checkpoint directory: config.json and *.safetensors)')
  return json.loads(file.read_text())


def checkpoint_format(hf: dict) -> str:
  if hf.get('model_type') == 'huginn_raven' or 'n_layers_in_recurrent_block' in hf:
    return 'raven'
  if hf.get('model_type') == 'llama' or 'LlamaForCausalLM' in hf.get('architectures', []):
    return 'llama'
  raise ConfigError(f'checkpoint model_type={hf.get("model_type")!r} is not supported; '
                    f'supported: Llama ("llama") and recurrent Llama ("huginn_raven")')


def _layout(opts: Options, hf: dict) -> tuple[tuple[int, ...], ...]:
  """(prelude, core, coda) checkpoint layer indices (Raven: each part's own 0..n-1)."""
  if checkpoint_format(hf) == 'raven':
    if opts.prelude or opts.core or opts.coda:
      raise ConfigError('config.pretrained.prelude/core/coda map a Llama checkpoint\'s layers; a '
                        'recurrent (Raven) checkpoint has its own: leave them empty')
    return tuple(tuple(range(hf[f'n_layers_in_{part}'])) for part in
                 ('prelude', 'recurrent_block', 'coda'))
  parts = [layer_list(getattr(opts, f), f'pretrained.{f}') for f in ('prelude', 'core', 'coda')]
  used = [i for part in parts for i in part]
  if not parts[1]:
    raise ConfigError('config.pretrained.core is empty: name the checkpoint layers that form the '
                      'looped core, e.g. "4-11"')
  layers = hf['num_hidden_layers']
  if max(used) >= layers or len(set(used)) != len(used):
    raise ConfigError(f'config.pretrained prelude/core/coda={[opts.prelude, opts.core, opts.coda]}'
                      f' must name distinct layers below num_hidden_layers={layers}')
  return tuple(parts)


def model_fields(opts: Options) -> dict:
  """The `config.model` fields (and `vocab_size`, ours: the checkpoint's + 1) a checkpoint and
  its layer map imply; the experiment sets them, depth and deciders are its own."""
  hf = read_config(opts.path)
  fmt = checkpoint_format(hf)
  prelude, core, coda = _layout(opts, hf)
  if fmt == 'raven':
    if hf.get('qk_bias') or hf.get('block_class_name', 'SandwichBlock') != 'SandwichBlock':
      raise ConfigError('this Raven checkpoint is not a retrofitted Llama (q/k biases or another '
                        'block): Huginn-0125\'s sandwich block is not supported')
    width, heads = hf['n_embd'], hf.get('num_attention_heads', hf.get('n_heads'))
    eps, tied = hf.get('norm_eps', 1e-5), hf.get('tie_embeddings', False)
    theta = hf.get('rope_theta') or hf.get('rope_base', 10_000.0)
  else:
    width, heads = hf['hidden_size'], hf['num_attention_heads']
    eps, tied = hf.get('rms_norm_eps', 1e-6), hf.get('tie_word_embeddings', False)
    # transformers >= 5 writes rope_parameters {rope_theta, rope_type, ...}; earlier versions
    # rope_theta and rope_scaling.
    rope = hf.get('rope_parameters') or {}
    theta = hf.get('rope_theta', rope.get('rope_theta', 10_000.0))
    if rope.get('rope_type', 'default') != 'default' and not hf.get('rope_scaling'):
      hf = {**hf, 'rope_scaling': {k: v for k, v in rope.items() if k != 'rope_theta'}}
    if hf.get('attention_bias') or hf.get('mlp_bias'):
      raise ConfigError('checkpoint has attention or MLP biases; Llama blocks have none')
  if hf.get('head_dim', width // heads) != width // heads:
    raise ConfigError(f'checkpoint head_dim={hf["head_dim"]} differs from hidden/heads; '
                      'not supported')
  scaling = hf.get('rope_scaling')
  if scaling and scaling.get('rope_type', scaling.get('type')) not in ('llama3',):
    raise ConfigError(f'checkpoint rope_scaling {scaling} is not supported (only "llama3")')
  return dict(
      vocab_size=hf['vocab_size'] + 1, family='llama', width=width, num_heads=heads,
      num_kv_heads=hf.get('num_key_value_heads', heads), mlp_hidden=hf['intermediate_size'],
      prelude_layers=len(prelude), core_layers=len(core), coda_layers=len(coda),
      position='rope', norm_eps=float(eps), rope_theta=float(theta),
      rope_scaling=json.dumps(scaling, sort_keys=True) if scaling else '',
      tie_embeddings=bool(tied), injection='linear',
      state_init='zero' if fmt == 'raven' else 'prelude')


def check(model: ModelConfig, opts: Options) -> None:
  """Refuses a model whose architecture differs from what the checkpoint implies."""
  for field, value in model_fields(opts).items():
    if getattr(model, field) != value:
      raise ConfigError(f'config.model.{field}={getattr(model, field)!r} but the checkpoint at '
                        f'{opts.path} implies {value!r}; the experiment config sets the model '
                        'from the checkpoint (experiments/gsm_symbolic.py:checkpoint=PATH)')


@dataclasses.dataclass(frozen=True)
class Source:
  """Where a parameter comes from: our leaf = M.reshape(leaf shape), with M = W[rows] (or its
  transpose, torch's [out, in] kernels) and rows = [offset, offset + n) of tensor W."""

  tensor: str
  transposed: bool = False
  offset: int = 0


def _block_sources(cfg: ModelConfig, prefix: str, fmt: str) -> dict[str, Source]:
  heads, kv, dim, hidden = cfg.num_heads, cfg.kv_heads, cfg.head_dim, cfg.hidden
  if fmt == 'llama':
    attn, mlp = f'{prefix}.self_attn', f'{prefix}.mlp'
    return {'attn_norm/scale': Source(f'{prefix}.input_layernorm.weight'),
            'query/kernel': Source(f'{attn}.q_proj.weight', True),
            'key/kernel': Source(f'{attn}.k_proj.weight', True),
            'value/kernel': Source(f'{attn}.v_proj.weight', True),
            'out/kernel': Source(f'{attn}.o_proj.weight', True),
            'mlp_norm/scale': Source(f'{prefix}.post_attention_layernorm.weight'),
            'gate/kernel': Source(f'{mlp}.gate_proj.weight', True),
            'up/kernel': Source(f'{mlp}.up_proj.weight', True),
            'down/kernel': Source(f'{mlp}.down_proj.weight', True)}
  qkv = f'{prefix}.attn.Wqkv.weight'  # rows: q, k, v; mlp.fc rows: gate, up
  return {'attn_norm/scale': Source(f'{prefix}.norm_1.weight'),
          'query/kernel': Source(qkv, True, 0),
          'key/kernel': Source(qkv, True, heads * dim),
          'value/kernel': Source(qkv, True, (heads + kv) * dim),
          'out/kernel': Source(f'{prefix}.attn.proj.weight', True),
          'mlp_norm/scale': Source(f'{prefix}.norm_2.weight'),
          'gate/kernel': Source(f'{prefix}.mlp.fc.weight', True, 0),
          'up/kernel': Source(f'{prefix}.mlp.fc.weight', True, hidden),
          'down/kernel': Source(f'{prefix}.mlp.proj.weight', True)}


def sources(cfg: ModelConfig, opts: Options) -> dict[str, Source]:
  """{'model/...' leaf path: Source} for every parameter the checkpoint holds."""
  hf = read_config(opts.path)
  fmt = checkpoint_format(hf)
  layout = _layout(opts, hf)
  if cfg.kind != 'recurrent':
    raise ConfigError('config.model.kind must be "recurrent" to load a checkpoint')
  if fmt == 'llama':
    names = {'embed': 'model.embed_tokens.weight', 'norm': 'model.norm.weight',
             'head': 'lm_head.weight', 'layer': 'model.layers.{}'}
    parts = {'prelude': 'model.layers.{}', 'core': 'model.layers.{}',
             'readout/coda': 'model.layers.{}'}
  else:
    names = {'embed': 'transformer.wte.weight', 'norm': 'transformer.ln_f.weight',
             'head': 'lm_head.weight'}
    parts = {'prelude': 'transformer.prelude.{}', 'core': 'transformer.core_block.{}',
             'readout/coda': 'transformer.coda.{}'}
  result = {'model/embed/embedding': Source(names['embed']),
            'model/readout/final_norm/scale': Source(names['norm'])}
  if not cfg.tie_embeddings:
    result['model/readout/lm_head'] = Source(names['head'])
  if fmt == 'raven':
    result['model/adapter/kernel'] = Source('transformer.adapter.weight', True)
  for (part, pattern), layers in zip(parts.items(), layout):
    for i, layer in enumerate(layers):
      for leaf, source in _block_sources(cfg, pattern.format(layer), fmt).items():
        result[f'model/{part}/layer_{i}/{leaf}'] = source
  return result


class Reader:
  """The checkpoint's tensors by name, memory-mapped: `read(source, shape, index)` reads one
  shard of a parameter and nothing else."""

  def __init__(self, path: str | pathlib.Path):
    from safetensors import safe_open  # the `llm` extra: pip install -e '.[llm]'
    path = pathlib.Path(path)
    index = path / 'model.safetensors.index.json'
    if index.exists():
      files = json.loads(index.read_text())['weight_map']
    else:
      files = {}
      for file in sorted(path.glob('*.safetensors')):
        with safe_open(file, framework='np') as f:
          files.update({name: file.name for name in f.keys()})
    if not files:
      raise ConfigError(f'config.pretrained.path={str(path)!r} holds no *.safetensors')
    self._files = files
    self._open = functools.lru_cache(maxsize=None)(
        lambda name: safe_open(path / name, framework='np'))

  def shape(self, tensor: str) -> tuple[int, ...]:
    return tuple(self._slice(tensor).get_shape())

  def _slice(self, tensor: str):
    if tensor not in self._files:
      raise ConfigError(f'the checkpoint has no tensor {tensor!r}')
    return self._open(self._files[tensor]).get_slice(tensor)

  def read(self, source: Source, shape: tuple[int, ...], index: tuple[slice, ...]) -> np.ndarray:
    """Our leaf of `shape` at `index` (a tuple of slices), float32."""
    box = [(s.start or 0, n if s.stop is None else s.stop) for s, n in zip(index, shape)]
    stored, stored_shape = self._slice(source.tensor), self.shape(source.tensor)
    if len(stored_shape) == 1:  # a vector (norm scale): M = W[None]
      split = 0
    else:  # M's rows: W's row length when transposed, else W's rows that make up the leaf
      row_length = math.prod(stored_shape[1:])
      split = _split(shape, row_length if source.transposed else math.prod(shape) // row_length)
    (r0, r1), rows_exact = _flat_range(box[:split], shape[:split])
    (c0, c1), cols_exact = _flat_range(box[split:], shape[split:])
    if len(stored_shape) == 1:
      block = stored[source.offset + c0:source.offset + c1][None]
    elif source.transposed:  # M = W^T: M's rows are W's columns
      block = stored[source.offset + c0:source.offset + c1, r0:r1].T
    else:
      block = stored[source.offset + r0:source.offset + r1, c0:c1]
    dims = [(b - a if rows_exact else n) for (a, b), n in zip(box[:split], shape[:split])]
    dims += [(b - a if cols_exact else n) for (a, b), n in zip(box[split:], shape[split:])]
    block = np.asarray(block, np.float32).reshape(dims)
    keep = [slice(None) if exact else slice(a, b) for exact, (a, b) in
            zip([rows_exact] * split + [cols_exact] * (len(shape) - split), box)]
    return np.ascontiguousarray(block[tuple(keep)])


def _split(shape: tuple[int, ...], rows: int) -> int:
  """How many leading axes of `shape` make up `rows`."""
  product, axes = 1, 0
  while product < rows:
    product *= shape[axes]
    axes += 1
  if product != rows:
    raise ValueError(f'parameter shape {shape} does not split into {rows} rows')
  return axes


def _flat_range(box, dims) -> tuple[tuple[int, int], bool]:
  """[lo, hi) of the row-major flat indices covering `box` over `dims`, and whether it is the
  box exactly (one partial axis preceded by size-1 axes); else the whole range."""
  partial = [i for i, ((a, b), n) in enumerate(zip(box, dims)) if (a, b) != (0, n)]
  total = int(np.prod(dims)) if dims else 1
  if not partial:
    return (0, total), True
  i = partial[0]
  if len(partial) == 1 and math.prod(dims[:i]) == 1:
    stride = math.prod(dims[i + 1:])
    return (box[i][0] * stride, box[i][1] * stride), True
  return (0, total), False


def _paths(tree) -> dict[str, jax.ShapeDtypeStruct]:
  flat = jax.tree_util.tree_flatten_with_path(tree)[0]
  return {'/'.join(str(getattr(k, 'key', k)) for k in path): leaf for path, leaf in flat}


def load_params(anira: Anira, opts: Options, key: jax.Array, shardings=None) -> dict:
  """`anira.init`'s parameter tree with every leaf the checkpoint holds read from it, each
  device reading only its shard; `shardings` (a tree like the params, e.g. a train state's
  `.params` shardings) places them, default one device."""
  check(anira.model_cfg, opts)
  abstract = jax.eval_shape(anira.init, key)
  if shardings is None:
    device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    shardings = jax.tree.map(lambda _: device, abstract)
  mapped = sources(anira.model_cfg, opts)
  leaves, shard_of = _paths(abstract), _paths(shardings)
  unknown = sorted(set(mapped) - set(leaves))
  if unknown:
    raise ValueError(f'sources for parameters the model lacks: {unknown[:3]}')
  reader = Reader(opts.path)
  vocab = anira.model_cfg.vocab_size - 1
  if reader.shape(mapped['model/embed/embedding'].tensor)[0] != vocab:
    raise ConfigError(f'config.model.vocab_size={vocab + 1} but the checkpoint\'s embedding has '
                      f'{reader.shape(mapped["model/embed/embedding"].tensor)[0]} rows (+1)')
  missing = [p for p in leaves if p not in mapped]
  fresh = jax.jit(lambda k: [_paths(anira.init(k))[p] for p in missing],
                  out_shardings=[shard_of[p] for p in missing])(key)
  values = dict(zip(missing, fresh))
  for path, source in mapped.items():
    shape = leaves[path].shape
    values[path] = jax.make_array_from_callback(
        shape, shard_of[path],
        lambda index, source=source, shape=shape: reader.read(source, shape, index))
  treedef = jax.tree.structure(abstract)
  return jax.tree.unflatten(treedef, [values[p] for p in _paths(abstract)])


def train_state(anira: Anira, tx, opts: Options, key: jax.Array, state_sharding) -> TrainState:
  """A fresh train state (step 0, zero optimizer moments) on the checkpoint's parameters, born
  with `state_sharding` (from `sharding.state_shardings`)."""
  params = load_params(anira, opts, key, state_sharding.params)
  create = lambda p: TrainState(step=jnp.int32(0), params=p, opt_state=tx.init(p),
                                skipped_steps=jnp.int32(0))
  return jax.jit(create, out_shardings=state_sharding, donate_argnums=0)(params)


def write_llama(directory: str | pathlib.Path, *, vocab_size: int, hidden_size: int = 32,
                num_layers: int = 4, num_heads: int = 4, num_kv_heads: int = 2,
                intermediate_size: int = 64, rope_theta: float = 500_000.0,
                rope_scaling: dict | None = None, tie_word_embeddings: bool = False,
                bos_token_id: int = 1, eos_token_id: int = 2, seed: int = 0) -> pathlib.Path:
  """A random Llama checkpoint in Hugging Face's format (config.json, model.safetensors in
  float32), for tests and the `:tiny` experiment: no weights can be downloaded here."""
  from safetensors.numpy import save_file
  directory = pathlib.Path(directory)
  directory.mkdir(parents=True, exist_ok=True)
  rng = np.random.default_rng(seed)
  dim = hidden_size // num_heads
  normal = lambda *shape: (0.02 * rng.standard_normal(shape)).astype(np.float32)
  norm = lambda: (1 + 0.1 * rng.standard_normal(hidden_size)).astype(np.float32)
  tensors = {'model.embed_tokens.weight': normal(vocab_size, hidden_size),
             'model.norm.weight': norm()}
  if not tie_word_embeddings:
    tensors['lm_head.weight'] = normal(vocab_size, hidden_size)
  for i in range(num_layers):
    p = f'model.layers.{i}'
    tensors.update({
        f'{p}.input_layernorm.weight': norm(), f'{p}.post_attention_layernorm.weight': norm(),
        f'{p}.self_attn.q_proj.weight': normal(num_heads * dim, hidden_size),
        f'{p}.self_attn.k_proj.weight': normal(num_kv_heads * dim, hidden_size),
        f'{p}.self_attn.v_proj.weight': normal(num_kv_heads * dim, hidden_size),
        f'{p}.self_attn.o_proj.weight': normal(hidden_size, num_heads * dim),
        f'{p}.mlp.gate_proj.weight': normal(intermediate_size, hidden_size),
        f'{p}.mlp.up_proj.weight': normal(intermediate_size, hidden_size),
        f'{p}.mlp.down_proj.weight': normal(hidden_size, intermediate_size)})
  save_file(tensors, str(directory / 'model.safetensors'))
  config = {'architectures': ['LlamaForCausalLM'], 'model_type': 'llama',
            'vocab_size': vocab_size, 'hidden_size': hidden_size,
            'intermediate_size': intermediate_size, 'num_hidden_layers': num_layers,
            'num_attention_heads': num_heads, 'num_key_value_heads': num_kv_heads,
            'head_dim': dim, 'hidden_act': 'silu', 'rms_norm_eps': 1e-5,
            'rope_theta': rope_theta, 'rope_scaling': rope_scaling,
            'max_position_embeddings': 2048, 'tie_word_embeddings': tie_word_embeddings,
            'attention_bias': False, 'mlp_bias': False, 'bos_token_id': bos_token_id,
            'eos_token_id': eos_token_id, 'torch_dtype': 'float32'}
  (directory / 'config.json').write_text(json.dumps(config, indent=2) + '\n')
  return directory
