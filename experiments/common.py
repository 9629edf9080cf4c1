"""Defaults every experiment shares, and the parser for `--config=FILE:ARG` variants.

An experiment file calls `base_config()`, overrides what its study needs, and reads its
variant string with `parse_arg`, e.g. `--config=experiments/parity.py:decider=online,quick`.
"""

from __future__ import annotations

import importlib.util
import pathlib

import ml_collections


def parse_arg(arg: str | None, **defaults):
  """'a=1,flag' -> ConfigDict(a=1, flag=True) typed by `defaults`; unknown keys raise.

  Values take the type of their default (int, float, bool, str); a bare key sets a bool to True.
  """
  result = ml_collections.ConfigDict(defaults)
  for part in filter(None, (arg or '').split(',')):
    key, eq, value = part.partition('=')
    if key not in defaults:
      raise ValueError(f'unknown config argument {key!r}; known: {", ".join(sorted(defaults))}')
    kind = type(defaults[key])
    if not eq:
      if kind is not bool:
        raise ValueError(f'config argument {key!r} needs a value: {key}=...')
      result[key] = True
    elif kind is bool:
      if value.lower() not in ('true', 'false', '1', '0'):
        raise ValueError(f'config argument {key}={value!r}: expected true or false')
      result[key] = value.lower() in ('true', '1')
    else:
      result[key] = kind(value)
  return result


SCALES = ('cpu', 'paper')


def check_scale(scale: str) -> None:
  if scale not in SCALES:
    raise ValueError(f'scale={scale!r}; choose one of {", ".join(SCALES)}')


def use_paper_scale(config: ml_collections.ConfigDict, max_depth: int) -> None:
  """The paper's ~5 M-parameter model and an accelerator-sized schedule (bfloat16 matmuls)."""
  config.model.update(width=320, num_heads=8, prelude_layers=1, core_layers=2, coda_layers=1,
                      max_depth=max_depth, dtype='bfloat16')
  config.train.update(steps=50_000, batch_size=256, warmup_steps=1000, log_every=200,
                      checkpoint_every=5000)
  config.eval.update(batch_size=256, num_batches=8, every_steps=5000)


def make_quick(config: ml_collections.ConfigDict) -> None:
  """A few steps and a tiny evaluation: a smoke test of the whole path."""
  config.train.update(steps=20, warmup_steps=2, log_every=5, checkpoint_every=10)
  config.eval.update(every_steps=10, num_batches=1, batch_size=32)


def load_module(path: str):
  """The experiment module at `path` (a config file), for tools that call its get_config."""
  spec = importlib.util.spec_from_file_location(pathlib.Path(path).stem, path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def base_config() -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.seed = 0

  # --- task --------------------------------------------------------------------------------
  config.task = ml_collections.ConfigDict()
  config.task.name = 'parity'
  config.task.options = ml_collections.ConfigDict()  # keyword arguments of the task class
  config.task.train_sizes = '1-8'  # difficulty values seen in training ("lo-hi,extra")
  config.task.holdout_sizes = ''  # sizes inside the training range never trained on

  # --- model -------------------------------------------------------------------------------
  config.model = ml_collections.ConfigDict()
  config.model.width = 64
  config.model.num_heads = 4
  config.model.mlp_ratio = 4
  config.model.prelude_layers = 1
  config.model.core_layers = 1  # layers in the weight-shared block
  config.model.coda_layers = 1
  config.model.max_depth = 6  # D, iterations of the core at most
  config.model.kind = 'recurrent'  # or 'standard': D unshared blocks (fixed decider only)
  config.model.position = 'rope'  # 'rope' | 'learned' | 'sinusoidal' | 'none'
  config.model.max_len = 512  # learned position table size
  config.model.injection = 'add'  # 'add': h0 informs every iteration's update | 'none'
  config.model.iteration_embedding = False
  config.model.dtype = 'float32'  # matmul dtype; 'bfloat16' on accelerators
  config.model.remat = False  # recompute each iteration in the backward pass (saves memory)

  # --- decider -----------------------------------------------------------------------------
  config.decider = ml_collections.ConfigDict()
  config.decider.name = 'early'  # fixed | early | online | act | ponder | oracle
  config.decider.gamma = 0.01  # weight of KL(q ‖ p_b)
  # b; 1 = uniform prior (no depth penalty), >1 charges log b per iteration. 1.5 was chosen on
  # parity with ANIRA-E, and the task study (experiments/study.py) shares it across tasks.
  config.decider.prior_base = 1.5
  config.decider.gumbel_temperature = 1.0
  config.decider.rule = 'median'  # online/ponder inference: median | mode | threshold | sample
  config.decider.threshold = 0.5  # CDF level of rule='threshold'
  config.decider.head_hidden = 64  # decision-head MLP width
  config.decider.init_depth_bias = 3.0  # deep start (logit margin towards deep computation)
  config.decider.act_epsilon = 0.01
  config.decider.act_penalty = 0.001  # τ, ACT's ponder-cost weight
  config.decider.ponder_beta = 0.01
  config.decider.ponder_lambda = 0.2  # λ_p, PonderNet's geometric prior
  config.decider.ponder_kl = 'prior_q'  # KL(prior ‖ q) | 'q_prior'
  config.decider.oracle_max_complexity = 0.0  # complexity mapped to depth D; 0 = largest train size

  # --- training ----------------------------------------------------------------------------
  config.train = ml_collections.ConfigDict()
  config.train.steps = 2000
  config.train.batch_size = 64  # global, across all devices and hosts
  # Microbatches per step (gradients summed): memory of batch_size / this, same update.
  config.train.grad_accumulation_steps = 1
  config.train.learning_rate = 1e-3  # peak, after warmup
  config.train.warmup_steps = 100
  config.train.final_lr_fraction = 0.1  # cosine decay ends at this fraction of the peak
  config.train.weight_decay = 0.01
  config.train.grad_clip = 1.0  # global gradient norm
  config.train.log_every = 50  # steps between metric lines (the only host syncs)
  config.train.checkpoint_every = 500
  config.train.keep_checkpoints = 3
  config.train.preemption_check_every = 10  # steps between multi-host SIGTERM agreements

  # --- devices -----------------------------------------------------------------------------
  config.mesh = ml_collections.ConfigDict()
  config.mesh.data = -1  # batch-parallel axis size; -1 = all devices the fsdp axis leaves
  config.mesh.fsdp = 1  # axis over which params and optimizer state are split (and the batch)

  # --- evaluation --------------------------------------------------------------------------
  config.eval = ml_collections.ConfigDict()
  config.eval.source = 'stream'  # 'stream' (procedural, fixed seed) | 'tfds' (stored sets)
  config.eval.splits = ml_collections.ConfigDict({'in_distribution': '1-8'})  # name -> sizes
  config.eval.data_dir = ''  # where 'tfds' sets live; '' = WORKDIR/eval_sets
  config.eval.batch_size = 128
  config.eval.num_batches = 4
  config.eval.every_steps = 500
  config.eval.max_depth = 0  # T at evaluation; 0 = the trained D
  return config
