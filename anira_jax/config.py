"""The experiment config: its defaults, typed views of it, and start-up validation.

The launcher gets an `ml_collections.ConfigDict`; nothing inside jit ever reads it. Instead the
model and the deciders read the frozen dataclasses built here once, after `validate` has checked
every field and stopped with one line naming the field and the allowed values.
"""

from __future__ import annotations

import dataclasses
import math
import re

import ml_collections

POSITIONS = ('rope', 'learned', 'sinusoidal', 'none')
INJECTIONS = ('none', 'add')
MODEL_KINDS = ('recurrent', 'standard')
DTYPES = ('float32', 'bfloat16')
INFERENCE_RULES = ('median', 'mode', 'threshold', 'sample')
KL_DIRECTIONS = ('prior_q', 'q_prior')
EVAL_SOURCES = ('stream', 'tfds')


class ConfigError(ValueError):
  """An invalid config value; the message names the field and what is allowed."""


@dataclasses.dataclass(frozen=True)
class ModelConfig:
  """Architecture of the recurrent Transformer (DESIGN §2)."""

  vocab_size: int
  width: int = 64
  num_heads: int = 4
  mlp_ratio: int = 4
  prelude_layers: int = 1
  core_layers: int = 1  # layers inside the shared recurrent block
  coda_layers: int = 1
  max_depth: int = 6  # D: most iterations of the core any token may run
  kind: str = 'recurrent'  # 'recurrent' (shared core) or 'standard' (D unshared cores)
  position: str = 'rope'
  max_len: int = 512  # table size for learned positions
  injection: str = 'add'  # how the prelude output h0 re-enters every iteration
  iteration_embedding: bool = False  # learned embedding of the iteration index, added per step
  dtype: str = 'float32'  # compute dtype of matmuls; norms, softmax and halting stay float32
  remat: bool = False  # rematerialise each iteration in the backward pass

  @property
  def head_dim(self) -> int:
    return self.width // self.num_heads


@dataclasses.dataclass(frozen=True)
class DeciderConfig:
  """Which compute-allocation decider and its hyper-parameters (DESIGN §3)."""

  name: str = 'fixed'
  gamma: float = 0.01  # weight of KL(q ‖ p_b) for early/online
  prior_base: float = 1.0  # b in p_b(d) ∝ b^-d; 1 = uniform prior, no depth penalty
  gumbel_temperature: float = 1.0  # early: temperature of the Gumbel-softmax
  rule: str = 'median'  # online/ponder inference: 'median', 'mode', 'threshold', 'sample'
  threshold: float = 0.5  # halting CDF level for rule='threshold'
  head_hidden: int = 16  # hidden width of the decision head MLP
  init_depth_bias: float = 3.0  # deep start: initial logit margin favouring deep computation
  act_epsilon: float = 0.01
  act_penalty: float = 0.001  # τ, weight of ACT's ponder cost N + R
  ponder_beta: float = 0.01
  ponder_lambda: float = 0.2  # λ_p of PonderNet's geometric prior
  ponder_kl: str = 'prior_q'  # 'prior_q': KL(prior ‖ q) (common reimplementations), 'q_prior'
  oracle_max_complexity: float = 0.0  # complexity mapped to depth D; 0 = from training sizes


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


def _choice(path: str, value, allowed) -> None:
  if value not in allowed:
    raise ConfigError(f'config.{path}={value!r} is not allowed; choose one of {list(allowed)}')


def _positive(path: str, value, *, allow_zero: bool = False) -> None:
  ok = value >= 0 if allow_zero else value > 0
  if not isinstance(value, (int, float)) or not ok or (isinstance(value, float) and
                                                        not math.isfinite(value)):
    bound = '>= 0' if allow_zero else '> 0'
    raise ConfigError(f'config.{path}={value!r} must be a finite number {bound}')


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


def train_sizes(config: ml_collections.ConfigDict) -> tuple[int, ...]:
  """Training sizes: the training range minus the held-out sizes inside it."""
  held_out = set(parse_sizes(config.task.holdout_sizes, 'task.holdout_sizes')
                 if config.task.holdout_sizes else ())
  sizes = tuple(s for s in parse_sizes(config.task.train_sizes, 'task.train_sizes')
                if s not in held_out)
  if not sizes:
    raise ConfigError('config.task.holdout_sizes removes every training size')
  return sizes


def eval_splits(config: ml_collections.ConfigDict) -> dict[str, tuple[int, ...]]:
  return {name: parse_sizes(spec, f'eval.splits.{name}')
          for name, spec in config.eval.splits.items()}


def model_config(config: ml_collections.ConfigDict, vocab_size: int) -> ModelConfig:
  return ModelConfig(vocab_size=vocab_size, **config.model.to_dict())


def decider_config(config: ml_collections.ConfigDict) -> DeciderConfig:
  """The decider's settings; the oracle's c_max defaults to the largest training size."""
  cfg = DeciderConfig(**config.decider.to_dict())
  if not cfg.oracle_max_complexity:
    cfg = dataclasses.replace(cfg, oracle_max_complexity=float(max(train_sizes(config))))
  return cfg


def validate(config: ml_collections.ConfigDict) -> None:
  """Checks every field a run depends on; raises ConfigError naming the first bad one."""
  # Imported here: the registries import model code, which needs nothing from this check.
  import tasks
  from anira_jax import deciders

  _choice('task.name', config.task.name, sorted(tasks.TASKS))
  try:
    task = tasks.make(config.task.name, **config.task.options.to_dict())
  except (TypeError, ValueError) as e:
    raise ConfigError(f'config.task.options are invalid for task {config.task.name!r}: {e}')
  lo, hi = task.valid_sizes()
  sizes = {'task.train_sizes': train_sizes(config)}
  sizes.update({f'eval.splits.{k}': v for k, v in eval_splits(config).items()})
  for path, values in sizes.items():
    bad = [s for s in values if not lo <= s <= hi]
    if bad:
      raise ConfigError(f'config.{path} has sizes {bad} outside what task '
                        f'{config.task.name!r} generates ({lo}..{hi})')
  if not config.eval.splits:
    raise ConfigError('config.eval.splits is empty; name at least one split, e.g. {"test": "1-8"}')

  m = config.model
  _choice('model.kind', m.kind, MODEL_KINDS)
  _choice('model.position', m.position, POSITIONS)
  _choice('model.injection', m.injection, INJECTIONS)
  _choice('model.dtype', m.dtype, DTYPES)
  for field in ('width', 'num_heads', 'mlp_ratio', 'core_layers', 'max_depth', 'max_len'):
    if not isinstance(m[field], int) or m[field] < 1:
      raise ConfigError(f'config.model.{field}={m[field]!r} must be an integer >= 1')
  for field in ('prelude_layers', 'coda_layers'):
    if not isinstance(m[field], int) or m[field] < 0:
      raise ConfigError(f'config.model.{field}={m[field]!r} must be an integer >= 0')
  if m.width % m.num_heads or (m.width // m.num_heads) % 2:
    raise ConfigError(f'config.model.width={m.width} must be a multiple of 2 * num_heads '
                      f'(num_heads={m.num_heads}) so every head has an even size')
  longest = max(task.seq_len(max(v)) for v in sizes.values())
  if m.position == 'learned' and longest > m.max_len:
    raise ConfigError(f'config.model.max_len={m.max_len} is shorter than the longest sequence '
                      f'({longest}); raise it or use position="rope"')

  d = config.decider
  _choice('decider.name', d.name, sorted(deciders.DECIDERS))
  _choice('decider.rule', d.rule, INFERENCE_RULES)
  _choice('decider.ponder_kl', d.ponder_kl, KL_DIRECTIONS)
  if m.kind == 'standard' and d.name != 'fixed':
    raise ConfigError(f'config.model.kind="standard" (unshared layers) runs every layer: it needs '
                      f'decider.name="fixed", not {d.name!r}')
  for field in ('gamma', 'act_penalty', 'ponder_beta', 'oracle_max_complexity'):
    _positive(f'decider.{field}', d[field], allow_zero=True)
  for field in ('gumbel_temperature', 'prior_base'):
    _positive(f'decider.{field}', d[field])
  if not 0 < d.threshold < 1:
    raise ConfigError(f'config.decider.threshold={d.threshold} must lie in (0, 1)')
  if not 0 < d.act_epsilon < 1:
    raise ConfigError(f'config.decider.act_epsilon={d.act_epsilon} must lie in (0, 1)')
  if not 0 < d.ponder_lambda < 1:
    raise ConfigError(f'config.decider.ponder_lambda={d.ponder_lambda} must lie in (0, 1)')

  t = config.train
  for field in ('steps', 'batch_size', 'grad_accumulation_steps', 'log_every',
                'checkpoint_every', 'keep_checkpoints', 'preemption_check_every'):
    if not isinstance(t[field], int) or t[field] < 1:
      raise ConfigError(f'config.train.{field}={t[field]!r} must be an integer >= 1')
  _positive('train.learning_rate', t.learning_rate)
  _positive('train.warmup_steps', t.warmup_steps, allow_zero=True)
  _positive('train.weight_decay', t.weight_decay, allow_zero=True)
  _positive('train.grad_clip', t.grad_clip)
  if t.batch_size % t.grad_accumulation_steps:
    raise ConfigError(f'config.train.batch_size={t.batch_size} must be divisible by '
                      f'train.grad_accumulation_steps={t.grad_accumulation_steps}')
  if t.warmup_steps >= t.steps:
    raise ConfigError(f'config.train.warmup_steps={t.warmup_steps} must be below '
                      f'train.steps={t.steps}')

  if not isinstance(config.mesh.fsdp, int) or config.mesh.fsdp < 1:
    raise ConfigError(f'config.mesh.fsdp={config.mesh.fsdp!r} must be an integer >= 1')
  if not isinstance(config.mesh.data, int) or (config.mesh.data < 1 and config.mesh.data != -1):
    raise ConfigError(f'config.mesh.data={config.mesh.data!r} must be an integer >= 1, or -1 '
                      '(all devices the fsdp axis leaves)')

  e = config.eval
  _choice('eval.source', e.source, EVAL_SOURCES)
  for field in ('batch_size', 'num_batches', 'every_steps'):
    if not isinstance(e[field], int) or e[field] < 1:
      raise ConfigError(f'config.eval.{field}={e[field]!r} must be an integer >= 1')
  if e.max_depth and e.max_depth < 1:
    raise ConfigError(f'config.eval.max_depth={e.max_depth} must be >= 1 (or 0: the trained D)')
  if e.max_depth and m.kind == 'standard' and e.max_depth != m.max_depth:
    raise ConfigError(f'config.eval.max_depth={e.max_depth}: a standard (unshared) model has '
                      f'exactly model.max_depth={m.max_depth} layers; set eval.max_depth=0')
