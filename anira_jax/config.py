"""The experiment config as data: every field the library reads, at its default.

The launcher gets an `ml_collections.ConfigDict`; nothing inside jit ever reads it. Sections with
a typed view take their fields and defaults from it — `config.model` from
`model.config.ModelConfig`, `config.decider.<name>` from each registered decider's `Options` —
so a default is declared once. `anira_jax.experiment` checks a config and builds what it
describes.
"""

from __future__ import annotations

import re

import ml_collections

from anira_jax import deciders, gsm_symbolic, pretrained
from anira_jax.ingredients import Ingredients
from anira_jax.model.config import ModelConfig
from anira_jax.options import ConfigError

EVAL_SOURCES = ('stream', 'tfds')


def default_config() -> ml_collections.ConfigDict:
  """Every field the library reads, at its default; experiment files override what they study,
  and `inspect.load` fills fields missing from older checkpoints' configs from here."""
  config = ml_collections.ConfigDict()
  config.seed = 0

  # --- task --------------------------------------------------------------------------------
  config.task = ml_collections.ConfigDict()
  config.task.name = 'parity'
  config.task.options = ml_collections.ConfigDict()  # keyword arguments of the task class
  config.task.train_sizes = '1-8'  # difficulty values seen in training ("lo-hi,extra")
  config.task.holdout_sizes = ''  # sizes inside the training range never trained on
  config.task.longer_sizes = ''  # sizes beyond the training range, evaluated as 'longer'

  # --- model: `ModelConfig`'s fields -------------------------------------------------------
  config.model = ml_collections.ConfigDict(ModelConfig.defaults())

  # --- decider: the one named, and every decider's options ----------------------------------
  config.decider = ml_collections.ConfigDict()
  config.decider.name = 'early'  # a key of `deciders.DECIDERS`
  for name, cls in deciders.DECIDERS.items():
    config.decider[name] = ml_collections.ConfigDict(cls.Options.defaults())

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
  # Optimizer steps per jitted call (one lax.scan): the same updates, the host's per-step work
  # (dispatch, bookkeeping) paid once for k steps, for small models on an accelerator.
  # log_every, checkpoint_every and eval.every_steps must be multiples of it; several hosts
  # agree on SIGTERM at dispatch ends that are multiples of preemption_check_every.
  config.train.steps_per_dispatch = 1
  config.train.curriculum_steps = 0  # sizes open smallest first over these steps (tasks.Stream)
  # 'SIZE:WEIGHT,...': training draws a size in proportion to its weight (unlisted training
  # sizes weigh 1); '' = uniformly. E.g. '4:4' spends most of the batch on the hardest size.
  config.train.size_weights = ''
  # Extrapolation ingredients, off by default: `ingredients.Ingredients`' fields.
  config.train.update(Ingredients.defaults())

  # --- devices -----------------------------------------------------------------------------
  config.mesh = ml_collections.ConfigDict()
  config.mesh.data = -1  # batch-parallel axis size; -1 = all devices the fsdp axis leaves
  config.mesh.fsdp = 1  # axis over which params and optimizer state are split (and the batch)

  # --- evaluation --------------------------------------------------------------------------
  config.eval = ml_collections.ConfigDict()
  config.eval.source = 'stream'  # 'stream' (procedural, fixed seed) | 'tfds' (stored sets)
  # {name: sizes}; empty = derived from the task's sizes: in_distribution (the training sizes),
  # held_out (task.holdout_sizes) and longer (task.longer_sizes), those that are set.
  config.eval.splits = ml_collections.ConfigDict()
  config.eval.data_dir = ''  # where 'tfds' sets live; '' = WORKDIR/eval_sets
  config.eval.batch_size = 128
  config.eval.num_batches = 4
  config.eval.every_steps = 500
  config.eval.max_depth = 0  # T at evaluation; 0 = the trained D

  # --- LLM scale: the checkpoint a run starts from, and the GSM-Symbolic benchmark after it --
  config.pretrained = ml_collections.ConfigDict(pretrained.Options.defaults())
  config.gsm_symbolic = ml_collections.ConfigDict(gsm_symbolic.Options.defaults())
  return config


def with_defaults(stored: dict, defaults: dict | None = None) -> dict:
  """A stored config (dict) plus every field it lacks, at its default, so a config written before
  a field existed still loads and compares. Task options and evaluation splits are taken whole."""
  defaults = default_config().to_dict() if defaults is None else defaults
  merged = dict(stored)
  for key, value in defaults.items():
    if key not in merged:
      merged[key] = value
    elif (isinstance(value, dict) and isinstance(merged[key], dict)
          and key not in ('options', 'splits')):
      merged[key] = with_defaults(merged[key], value)
  return merged


def parse_sizes(spec: str | int | tuple, path: str = 'sizes') -> tuple[int, ...]:
  """'1-12,15' -> (1, ..., 12, 15). Also accepts an int or a tuple of ints."""
  if isinstance(spec, int):
    return (spec,)
  if isinstance(spec, (tuple, list)):
    return tuple(int(s) for s in spec)
  sizes: list[int] = []
  for part in str(spec).replace(' ', '').split(','):
    if not part:
      continue
    match = re.fullmatch(r'(\d+)(?:-(\d+))?', part)
    if not match:
      raise ConfigError(f'config.{path}={spec!r}: expected sizes like "1-12,15"')
    lo, hi = int(match[1]), int(match[2] or match[1])
    if hi < lo:
      raise ConfigError(f'config.{path}={spec!r}: range {part} is empty (end before start)')
    sizes.extend(range(lo, hi + 1))
  if not sizes:
    raise ConfigError(f'config.{path}={spec!r} names no sizes')
  return tuple(sorted(set(sizes)))


def parse_size_weights(spec: str, sizes: tuple[int, ...],
                       path: str = 'train.size_weights') -> tuple[float, ...] | None:
  """'4:4,2:0.5' -> one weight per size of `sizes` (unlisted ones 1); '' -> None (uniform)."""
  if not str(spec).strip():
    return None
  weights, named = dict.fromkeys(sizes, 1.0), set()
  for part in str(spec).replace(' ', '').split(','):
    match = re.fullmatch(r'(\d+):(\d+(?:\.\d*)?|\.\d+)', part)
    if not match:
      raise ConfigError(f'config.{path}={spec!r}: expected SIZE:WEIGHT pairs like "4:4,2:0.5" '
                        f'with weights > 0')
    size, weight = int(match[1]), float(match[2])
    if size in named:
      raise ConfigError(f'config.{path}={spec!r} weighs size {size} twice')
    named.add(size)
    if size not in weights:
      raise ConfigError(f'config.{path}={spec!r} weighs size {size}, which training does not '
                        f'draw (its sizes: {sizes})')
    if weight <= 0:
      raise ConfigError(f'config.{path}={spec!r}: the weight of size {size} must be > 0 (leave '
                        'a size out of training with task.train_sizes or task.holdout_sizes)')
    weights[size] = weight
  return tuple(weights[s] for s in sizes)
