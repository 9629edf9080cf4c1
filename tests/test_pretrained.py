"""Pretrained checkpoints (`anira_jax.pretrained`): a tiny random Llama written by `transformers`
gives transformers' own logits through our model (every layer in place, no recurrence); with a
looped core, the training unroll, inference loop, compaction and KV decoding agree on it; the
recurrent (Raven) format loads the same weights; every shard is read as a slice; sharded loading
on an 8-device mesh equals one device's."""

import json
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import test_compaction
import test_decoding
from conftest import eight_device_env, tiny_anira
from test_recurrence import _spread_halting

from anira_jax import pretrained
from anira_jax.anira import Anira
from anira_jax.model.config import ModelConfig
from anira_jax.options import ConfigError

safetensors_numpy = pytest.importorskip('safetensors.numpy')
REPO = __import__('pathlib').Path(__file__).resolve().parents[1]
SCALING = {'rope_type': 'llama3', 'factor': 8.0, 'low_freq_factor': 1.0, 'high_freq_factor': 4.0,
           'original_max_position_embeddings': 16}


def _model(path, prelude, core, coda, max_depth=1, decider='fixed', **decider_options):
  opts = pretrained.Options(path=str(path), prelude=prelude, core=core, coda=coda)
  fields = pretrained.model_fields(opts)
  anira = (tiny_anira(decider, ModelConfig(max_depth=max_depth, **fields), **decider_options)
           if decider != 'fixed' else Anira(ModelConfig(max_depth=max_depth, **fields), 'fixed'))
  return anira, pretrained.load_params(anira, opts, jax.random.key(0)), opts


@pytest.mark.parametrize('tied', [False, True], ids=['untied', 'tied'])
def test_logits_equal_transformers(tmp_path, tied):
  """Every layer in place (prelude 0, core 1, coda 2-3 at D = 1, or prelude 0-1, core 2, coda
  3): our logits are transformers' LlamaForCausalLM's to float32 rounding (seen: at most
  2e-7 on logits up to 0.8). Head dim 16: attention runs in the CPU kernel where it is built."""
  torch = pytest.importorskip('torch')
  transformers = pytest.importorskip('transformers')
  torch.manual_seed(0)
  config = transformers.LlamaConfig(
      vocab_size=97, hidden_size=64, intermediate_size=96, num_hidden_layers=4,
      num_attention_heads=4, num_key_value_heads=2, rope_theta=500_000.0, rope_scaling=SCALING,
      max_position_embeddings=256, rms_norm_eps=1e-5, tie_word_embeddings=tied)
  hf_model = transformers.LlamaForCausalLM(config).eval()
  with torch.no_grad():  # random norm scales, so the norms' weights are tested too
    for name, p in hf_model.named_parameters():
      if 'norm' in name:
        p.copy_(1 + 0.2 * torch.randn_like(p))
  hf_model.save_pretrained(tmp_path, safe_serialization=True)
  ids = np.random.default_rng(0).integers(0, 97, size=(2, 40))
  with torch.no_grad():
    expected = hf_model(torch.tensor(ids)).logits.numpy()
  for layout in (('0', '1', '2-3'), ('0-1', '2', '3')):
    anira, params, _ = _model(tmp_path, *layout)
    logits = np.asarray(anira.apply(params, jnp.asarray(ids + 1), train=False).logits_BxLxV)
    np.testing.assert_allclose(logits[..., 1:], expected, atol=2e-6, rtol=0,
                               err_msg=str(layout))
    assert np.all(logits[..., 0] < -1e8)  # padding is never predicted


def _tiny_checkpoint(tmp_path, **kw):
  return pretrained.write_llama(tmp_path / 'llama', vocab_size=31, hidden_size=32,
                                num_layers=4, num_heads=4, num_kv_heads=2,
                                intermediate_size=48, rope_scaling=SCALING, **kw)


@pytest.mark.parametrize('name', ['online', 'early'])
def test_looped_core_agrees_across_executors(tmp_path, name):
  """Core = layers 1-2 looped up to D = 3 on a loaded checkpoint: unroll == loop == compaction
  == decoding."""
  path = _tiny_checkpoint(tmp_path)
  anira, params, _ = _model(path, '0', '1-2', '3', max_depth=3, decider=name)
  params = _spread_halting(anira, params)
  tokens, complexity = test_compaction._batch()
  a = anira.apply(params, tokens, train=False, path='unroll')
  b = anira.apply(params, tokens, train=False, path='loop')
  np.testing.assert_allclose(a.logits_BxLxV, b.logits_BxLxV, atol=1e-5)
  np.testing.assert_array_equal(a.trajectory.depth_BxL, b.trajectory.depth_BxL)
  test_compaction._compare(anira, params, tokens, complexity)
  out = test_decoding._compare(anira, params, *test_decoding._batch())
  assert len(np.unique(out.trajectory.depth_BxL)) > 1, 'depths do not vary: test too weak'


def _write_raven(llama_path, path, prelude, core, coda, rng):
  """The same weights in the retrofitted-recurrence (Raven) layout: fused Wqkv and fc, parts
  numbered from 0, plus an adapter (McLeish et al.'s convert_llama.py mapping)."""
  from safetensors.numpy import load_file
  src = load_file(str(llama_path / 'model.safetensors'))
  hf = json.loads((llama_path / 'config.json').read_text())
  width = hf['hidden_size']
  out = {'transformer.wte.weight': src['model.embed_tokens.weight'],
         'transformer.ln_f.weight': src['model.norm.weight'],
         'lm_head.weight': src['lm_head.weight'],
         'transformer.adapter.weight': rng.standard_normal((width, 2 * width)).astype(np.float32)}
  for part, layers in (('prelude', prelude), ('core_block', core), ('coda', coda)):
    for j, i in enumerate(layers):
      s, d = f'model.layers.{i}', f'transformer.{part}.{j}'
      out[f'{d}.attn.Wqkv.weight'] = np.concatenate(
          [src[f'{s}.self_attn.{x}_proj.weight'] for x in 'qkv'])
      out[f'{d}.attn.proj.weight'] = src[f'{s}.self_attn.o_proj.weight']
      out[f'{d}.mlp.fc.weight'] = np.concatenate(
          [src[f'{s}.mlp.gate_proj.weight'], src[f'{s}.mlp.up_proj.weight']])
      out[f'{d}.mlp.proj.weight'] = src[f'{s}.mlp.down_proj.weight']
      out[f'{d}.norm_1.weight'] = src[f'{s}.input_layernorm.weight']
      out[f'{d}.norm_2.weight'] = src[f'{s}.post_attention_layernorm.weight']
  path.mkdir()
  safetensors_numpy.save_file(out, str(path / 'model.safetensors'))
  config = {'model_type': 'huginn_raven', 'n_embd': width, 'n_heads': hf['num_attention_heads'],
            'num_attention_heads': hf['num_attention_heads'],
            'num_key_value_heads': hf['num_key_value_heads'], 'intermediate_size':
            hf['intermediate_size'], 'vocab_size': hf['vocab_size'], 'norm_eps': 1e-5,
            'n_layers_in_prelude': len(prelude), 'n_layers_in_recurrent_block': len(core),
            'n_layers_in_coda': len(coda), 'rope_theta': hf['rope_theta'],
            'rope_scaling': hf['rope_scaling'], 'tie_embeddings': False, 'qk_bias': False,
            'block_class_name': 'SandwichBlock', 'bias': False}
  (path / 'config.json').write_text(json.dumps(config))
  return out['transformer.adapter.weight']


def test_recurrent_raven_checkpoint_loads_its_own_parts(tmp_path):
  path = _tiny_checkpoint(tmp_path)
  adapter = _write_raven(path, tmp_path / 'raven', [0], [1, 2], [3], np.random.default_rng(0))
  llama_model, llama_params, _ = _model(path, '0', '1-2', '3', max_depth=3)
  raven_model, raven_params, opts = _model(tmp_path / 'raven', '', '', '', max_depth=3)
  assert raven_model.model_cfg.state_init == 'zero' and raven_model.model_cfg.injection == 'linear'
  np.testing.assert_array_equal(raven_params['model']['adapter']['kernel'], adapter.T)
  same = jax.tree.map(np.testing.assert_array_equal,
                      {k: v for k, v in llama_params['model'].items() if k != 'adapter'},
                      {k: v for k, v in raven_params['model'].items() if k != 'adapter'})
  del same
  with pytest.raises(ConfigError, match='Raven'):
    pretrained.model_fields(pretrained.Options(path=opts.path, core='1'))


def test_every_shard_is_read_as_a_slice(tmp_path):
  """`Reader.read` of any box of a leaf equals the box of the whole converted tensor, reading
  (where one axis is split) only the rows or columns it needs."""
  rng = np.random.default_rng(0)
  weights = {'w': rng.standard_normal((24, 16)).astype(np.float32),
             'v': rng.standard_normal(16).astype(np.float32)}
  safetensors_numpy.save_file(weights, str(tmp_path / 'model.safetensors'))
  reader = pretrained.Reader(tmp_path)
  cases = [  # (source, our shape, our leaf from the whole tensor)
      (pretrained.Source('w', True), (16, 4, 6), weights['w'].T.reshape(16, 4, 6)),
      (pretrained.Source('w', True, 8), (16, 2, 8), weights['w'][8:24].T.reshape(16, 2, 8)),
      (pretrained.Source('w', True), (4, 6, 16), None),  # W [24, 16] as out-projection: no
      (pretrained.Source('w'), (24, 16), weights['w']),
      (pretrained.Source('v'), (16,), weights['v'])]
  for source, shape, leaf in cases:
    if leaf is None:
      continue
    for axis in range(len(shape)):
      for start, stop in ((0, shape[axis] // 2), (shape[axis] // 2, shape[axis])):
        index = tuple(slice(start, stop) if a == axis else slice(None)
                      for a in range(len(shape)))
        np.testing.assert_array_equal(reader.read(source, shape, index), leaf[index],
                                      err_msg=f'{source} {shape} axis {axis}')
  # Two split axes (no FSDP rule does this): read whole, then cut.
  index = (slice(0, 8), slice(1, 3), slice(None))
  np.testing.assert_array_equal(reader.read(cases[0][0], (16, 4, 6), index), cases[0][2][index])


def test_model_must_match_the_checkpoint(tmp_path):
  path = _tiny_checkpoint(tmp_path)
  opts = pretrained.Options(path=str(path), prelude='0', core='1-2', coda='3')
  fields = pretrained.model_fields(opts)
  anira = Anira(ModelConfig(**{**fields, 'width': 64, 'num_heads': 8}), 'fixed')
  with pytest.raises(ConfigError, match='width=64'):
    pretrained.load_params(anira, opts, jax.random.key(0))
  with pytest.raises(ConfigError, match='distinct layers'):
    pretrained.model_fields(pretrained.Options(path=str(path), core='1-4'))


_SHARDED = textwrap.dedent('''
    import sys
    import jax, numpy as np
    from anira_jax import generation, pretrained, sharding, train_state as state_lib
    from anira_jax.anira import Anira
    from anira_jax.model.config import ModelConfig
    from experiments import common
    config = common.task_experiment('parity', train='1-4')
    config.mesh.update(data=2, fsdp=4)
    config.train.batch_size = 8
    opts = pretrained.Options(path=sys.argv[1], prelude='0', core='1-2', coda='3')
    anira = Anira(ModelConfig(max_depth=2, **pretrained.model_fields(opts)), 'early')
    mesh = sharding.make_mesh(config)
    tx = state_lib.make_optimizer(config.train)
    abstract = jax.eval_shape(lambda k: state_lib.create(anira, tx, k), jax.random.key(0))
    shardings = sharding.state_shardings(mesh, abstract)
    state = pretrained.train_state(anira, tx, opts, jax.random.key(0), shardings)
    single = pretrained.load_params(anira, opts, jax.random.key(0))
    split = [x for x in jax.tree.leaves(state.params) if not x.sharding.is_fully_replicated]
    jax.tree.map(lambda a, b: np.testing.assert_array_equal(np.asarray(a), np.asarray(b)),
                 state.params, single)
    # Generation with rows split over the mesh and sharded parameters: one device's tokens.
    prompts = [np.array([3, 5, 7]), np.array([4]), np.array([1, 2, 3, 4, 5])]
    on_mesh = generation.generate_batch(anira, state.params, prompts, max_new_tokens=4, chunk=4,
                                        mesh=mesh)
    alone = generation.generate_batch(anira, single, prompts, max_new_tokens=4, chunk=4)
    for a, b in zip(on_mesh, alone):
      np.testing.assert_array_equal(a.tokens, b.tokens)
      np.testing.assert_array_equal(a.depth, b.depth)
    print(len(split))
''')


def test_sharded_loading_and_generation_equal_one_device(tmp_path):
  path = pretrained.write_llama(tmp_path / 'llama', vocab_size=64, hidden_size=64,
                                num_layers=4, num_heads=4, num_kv_heads=2, intermediate_size=128)
  result = subprocess.run([sys.executable, '-c', _SHARDED, str(path)], cwd=REPO,
                          env=eight_device_env(),
                          capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, result.stderr[-3000:]
  assert int(result.stdout.split()[-1]) > 10, result.stdout  # kernels, embeddings, head split
