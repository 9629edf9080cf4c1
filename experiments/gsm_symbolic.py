"""The paper's LLM-scale experiment: ANIRA fine-tuned on a recurrent Llama, then GSM-Symbolic.

    python launch.py --config=experiments/gsm_symbolic.py:checkpoint=CKPT \\
        --config.task.options.files='DATA/*.jsonl' --config.gsm_symbolic.path=GSM_DIR
    python launch.py --config=experiments/gsm_symbolic.py:checkpoint=CKPT,decider=online ...
    python launch.py \\
        --config=experiments/gsm_symbolic.py:checkpoint=LLAMA,prelude=0-3,core=10-17,coda=18-21
    python launch.py --config=experiments/gsm_symbolic.py:tiny     # CPU, a minute

The paper (ANIRA §LLM scale): a pretrained decoder made recurrent (prelude / shared core / coda,
D = 8), fine-tuned with ANIRA-E and ANIRA-O (γ = 0.1, learning rate 2e-5) against a fixed
depth-8 baseline, evaluated on GSM-Symbolic (main, P1, P2). Its recurrent Llama was most
likely one of McLeish et al.'s retrofitted ones (a Raven-format checkpoint: `checkpoint=DIR`
alone); a plain Llama checkpoint is retrofitted by naming its prelude / core / coda layers.

Variants:
- `checkpoint=DIR`: a Hugging Face Llama or recurrent-Llama (Raven) directory (config.json,
  *.safetensors, tokenizer.json); the model's architecture, vocabulary and BOS/EOS ids are
  read from it here, so the resolved config describes the model without the checkpoint.
- `prelude=`, `core=`, `coda=`: a Llama checkpoint's layers (e.g. 0-3, 10-17, 18-21).
- `decider=early|online|fixed|...`: `fixed` trains the paper's fixed-depth baseline.
- `tiny`: a tiny random Llama (4 layers, width 32, a BPE of 100 tokens) and small synthetic
  data in the benchmark's format, written under `assets=DIR` (default
  workdirs/gsm_symbolic_tiny_assets) if not there: the whole path, fine-tuning to
  results.json, on a CPU in about a minute.

Paper settings: D = 8, γ = 0.1 for both deciders (b = 1.5, the project's default: the paper's
b at this scale is not known), AdamW at 2e-5, packed sequences of 4096 tokens, batch 32
(grad accumulation 8), bfloat16 matmuls, rematerialised iterations, parameters and optimizer
state split over 4 devices (`mesh.fsdp`, e.g. 4 × A100; set it to the devices that should hold
one copy). Steps and data are the user's (`--config.train.steps`, `task.options.files`).
"""

import json
import pathlib

import numpy as np

from anira_jax import gsm_symbolic, pretrained
from experiments import common
from tasks import text

TINY_ASSETS = 'workdirs/gsm_symbolic_tiny_assets'


def get_config(arg=None):
  args = common.parse_arg(arg, decider='early', checkpoint='', prelude='', core='', coda='',
                          tiny=False, assets='')
  config = common.task_experiment('text', train='4096', decider=args.decider)
  if args.tiny:
    root = pathlib.Path(args.assets or TINY_ASSETS)
    tiny_assets(root)
    args.update(checkpoint=str(root / 'checkpoint'), prelude='0', core='1-2', coda='3')
    config.task.options.files = str(root / 'train.jsonl')
    config.gsm_symbolic.path = str(root / 'gsm_symbolic')
  config.pretrained.update(path=args.checkpoint, prelude=args.prelude, core=args.core,
                           coda=args.coda)
  if args.checkpoint:
    use_checkpoint(config, args.checkpoint)

  # --- the paper's fine-tuning -----------------------------------------------------------
  config.model.update(max_depth=8, dtype='bfloat16', remat=True)
  common.share_depth_prior(config, gamma=0.1, prior_base=1.5)
  config.train.update(steps=5000, batch_size=32, grad_accumulation_steps=8, learning_rate=2e-5,
                      warmup_steps=100, weight_decay=0.0, log_every=20, checkpoint_every=500)
  config.mesh.fsdp = 4
  config.eval.update(batch_size=8, num_batches=4, every_steps=1000)  # held-in text windows
  config.gsm_symbolic.update(batch_size=64, max_new_tokens=512)

  if args.tiny:  # a minute on a 2-core CPU
    config.task.train_sizes = '64'
    config.model.update(max_depth=3, dtype='float32', remat=False)
    config.train.update(steps=12, batch_size=8, grad_accumulation_steps=1, learning_rate=3e-3,
                        warmup_steps=2, log_every=4, checkpoint_every=12)
    config.mesh.fsdp = 1
    config.eval.update(batch_size=8, num_batches=1, every_steps=1000)
    config.gsm_symbolic.update(shots=1, max_new_tokens=16, batch_size=8, chunk=16)
  return config


def use_checkpoint(config, path: str) -> None:
  """The model fields, vocabulary, tokenizer and BOS/EOS ids of the checkpoint at `path`."""
  fields = pretrained.model_fields(pretrained.Options.from_section(config.pretrained,
                                                                   'pretrained'))
  vocab_size = fields.pop('vocab_size')
  config.model.update(fields)
  hf = pretrained.read_config(path)
  first = lambda x: (x[0] if isinstance(x, list) else x)
  config.task.options.update(tokenizer=path, vocab_size=vocab_size,
                             bos_id=first(hf.get('bos_token_id')) or -1,
                             eos_id=first(hf.get('eos_token_id')) or -1)


def tiny_assets(root: pathlib.Path) -> pathlib.Path:
  """Writes (once) the `tiny` variant's checkpoint, tokenizer, training file and GSM-Symbolic
  files under `root`; the same files every time (fixed seeds)."""
  if (root / 'done').exists():
    return root
  root.mkdir(parents=True, exist_ok=True)
  rng = np.random.default_rng(0)
  problems = [gsm_symbolic.synthetic_problem(rng, steps=1 + i % 3) for i in range(400)]
  shots = [gsm_symbolic.prompt(q, shots=1) + ' ' + a for q, a in problems[:20]]
  checkpoint = root / 'checkpoint'
  checkpoint.mkdir(exist_ok=True)
  tokenizer = text.train_tokenizer([q + ' ' + a for q, a in problems] + shots, 100,
                                   checkpoint / 'tokenizer.json')
  pretrained.write_llama(checkpoint, vocab_size=tokenizer.size - 1, hidden_size=32,
                         num_layers=4, num_heads=4, num_kv_heads=2, intermediate_size=64,
                         bos_token_id=tokenizer.token_id('<s>') - 1,
                         eos_token_id=tokenizer.token_id('</s>') - 1)
  (root / 'train.jsonl').write_text(''.join(
      json.dumps({'question': f'Q: {q}\nA:', 'answer': ' ' + a}) + '\n' for q, a in problems))
  gsm_symbolic.write_synthetic(root / 'gsm_symbolic', templates=4, instances=2)
  (root / 'done').write_text('')
  return root
