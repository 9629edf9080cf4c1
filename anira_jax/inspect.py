"""Checkpoint inspection: load a finished (or running) run and look inside its decisions.

    run = inspect.load('workdirs/brevo')  # a workdir, its checkpoints/ or checkpoints/<step>
    tr = run.trace(run.batches('in_distribution')[0])
    tr.depth[0], tr.q[0, 5], tr.halting[0, 5], tr.readout_confidence[:, 0, 5]
    run.evaluate('longer', rule='threshold', threshold=0.3, max_depth=12)   # a results.json split

`load` needs no config from the caller: it reads the one stored with the checkpoint (falling
back to the workdir's config.json), rebuilds task and model with `training.loop.build`, and
restores the parameters against `jax.eval_shape` of a fresh train state, placed on one device
(CPU is enough). Every failure to find or read a checkpoint is a `CheckpointError` whose one-line
message names the path and what was expected there.

Traces run the inference loop (`path='loop'`), exactly as evaluation does, so a trace's executed
depths are evaluation's depths for the same batch and rule.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import json
import logging
import pathlib
from collections.abc import Iterable, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

import tasks
from anira_jax import config as config_lib
from anira_jax import evaluation
from anira_jax.anira import Anira
from anira_jax.deciders import base as deciders_base
from anira_jax.deciders.act import Act
from anira_jax.deciders.online import Online
from anira_jax.training import checkpoint, loop
from anira_jax.training import state as state_lib
from anira_jax.training.checkpoint import CheckpointError

RULE_DECIDERS = ('online', 'ponder')  # deciders whose inference rule can be changed
CUSTOM_SIZES_SEED_OFFSET = 7_919  # stream of sizes that are not a configured evaluation split
_EXPECTED = (f'expected a training workdir (holding {checkpoint.CHECKPOINT_DIR}/), its '
             f'{checkpoint.CHECKPOINT_DIR}/ directory or one {checkpoint.CHECKPOINT_DIR}/<step> '
             'directory')


@dataclasses.dataclass
class Trace:
  """Per-token record of one inference pass (numpy arrays; B sequences, L positions, T = D).

  Fields that need the batch's annotations (`targets`, `correct`, `loss_mask`, `complexity`,
  `size`, `features`) are None when only tokens were traced.
  """

  tokens: np.ndarray  # [B, L] int32, 0 = padding
  depth: np.ndarray  # [B, L] int32: iterations executed (the inference loop's depth)
  q: np.ndarray  # [B, L, T] float32: the decider's distribution over depths 1..T
  expected_depth: np.ndarray  # [B, L] float32: E_q[d]
  halting: np.ndarray  # [B, L, T] float32: λ_t after iteration t (online/ponder/act), else NaN
  readout_prediction: np.ndarray  # [T, B, L] int32: argmax of the coda on the state after t
  readout_confidence: np.ndarray  # [T, B, L] float32: its softmax probability
  logits: np.ndarray  # [B, L, V] float32: the model's output (what evaluation scores)
  prediction: np.ndarray  # [B, L] int32: argmax of logits
  max_depth: int  # T the pass ran with
  rule: str | None  # online/ponder rule: 'median', 'mode' or 'threshold=p'; else None
  targets: np.ndarray | None = None  # [B, L] int32
  correct: np.ndarray | None = None  # [B, L] bool: prediction == targets
  loss_mask: np.ndarray | None = None  # [B, L] bool: answer tokens
  complexity: np.ndarray | None = None  # [B, L] float32
  size: np.ndarray | None = None  # [B] int32: each sequence's size (difficulty knob)
  features: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)  # name -> [B, L]
  states: np.ndarray | None = None  # [T, B, L, D] state after every iteration (on request)

  @property
  def real(self) -> np.ndarray:
    """[B, L] bool: non-padding tokens."""
    return self.tokens != tasks.PAD

  @property
  def answer_mask(self) -> np.ndarray:
    """[B, L] bool: scored (answer) tokens; every real token when no loss_mask is known."""
    return self.real if self.loss_mask is None else self.loss_mask & self.real

  @property
  def sequence_correct(self) -> np.ndarray:
    """[B] bool: every answer token of the sequence is correct (and it has one)."""
    if self.correct is None:
      raise ValueError('this trace has no targets; trace a batch to know what is correct')
    mask = self.answer_mask
    return mask.any(-1) & ~(mask & ~self.correct).any(-1)

  @property
  def batch_size(self) -> int:
    return self.tokens.shape[0]


# Where each array field keeps its batch and length axes (for concatenation).
_AXES = {'tokens': (0, 1), 'depth': (0, 1), 'q': (0, 1), 'expected_depth': (0, 1),
         'halting': (0, 1), 'readout_prediction': (1, 2), 'readout_confidence': (1, 2),
         'logits': (0, 1), 'prediction': (0, 1), 'targets': (0, 1), 'correct': (0, 1),
         'loss_mask': (0, 1), 'complexity': (0, 1), 'size': (0, None), 'states': (1, 2)}


def _pad_length(x: np.ndarray, axis: int | None, length: int) -> np.ndarray:
  if axis is None or x.shape[axis] == length:
    return x
  pad = [(0, 0)] * x.ndim
  pad[axis] = (0, length - x.shape[axis])
  return np.pad(x, pad)


def concatenate(traces: Sequence[Trace]) -> Trace:
  """One trace of all sequences; shorter sequences are right-padded (token 0, masks False)."""
  if not traces:
    raise ValueError('concatenate needs at least one trace')
  if len({(t.max_depth, t.rule) for t in traces}) > 1:
    raise ValueError('traces of different max_depth or rule cannot be concatenated')
  length = max(t.tokens.shape[1] for t in traces)
  fields = {}
  for name, (b_axis, l_axis) in _AXES.items():
    parts = [getattr(t, name) for t in traces]
    if any(p is None for p in parts):
      fields[name] = None
      continue
    fields[name] = np.concatenate([_pad_length(p, l_axis, length) for p in parts], b_axis)
  names = set.intersection(*(set(t.features) for t in traces))
  fields['features'] = {n: np.concatenate([_pad_length(t.features[n], 1, length)
                                           for t in traces]) for n in sorted(names)}
  return Trace(max_depth=traces[0].max_depth, rule=traces[0].rule, **fields)


def _halting_TxBxL(anira: Anira, params: dict, states_TxBxLxD, depth_BxL) -> jax.Array:
  """λ after every iteration from the decider's own head; NaN for deciders without one."""
  decider = anira.decider
  shape = states_TxBxLxD.shape[:3]
  if isinstance(decider, Online):  # online and ponder: λ_T ≡ 1, as the decider sets it
    lam = jax.vmap(lambda h: decider.halting_probability(params['decider'], h))(states_TxBxLxD)
    return lam.at[-1].set(1.0)
  if isinstance(decider, Act):  # ACT's halting unit; it is never evaluated after N
    lam = jax.vmap(lambda h: decider.halting_probability(params['decider'], h))(states_TxBxLxD)
    steps_T = jnp.arange(1, shape[0] + 1)
    return jnp.where(steps_T[:, None, None] <= depth_BxL[None], lam, jnp.nan)
  return jnp.full(shape, jnp.nan, jnp.float32)


def _trace_arrays(params, tokens_BxL, complexity_BxL, key, *, anira: Anira, max_depth: int,
                  states: bool) -> dict:
  out = anira.apply(params, tokens_BxL, train=False, key=key, complexity_BxL=complexity_BxL,
                    path='loop', max_depth=max_depth, collect_states=True)
  traj = out.trajectory
  step_logits_TxBxLxV = anira.readout_every_iteration(params, traj.states_TxBxLxD)
  probs_TxBxLxV = jax.nn.softmax(step_logits_TxBxLxV.astype(jnp.float32), -1)
  q_BxLxT = traj.decision.q_BxLxT
  return {
      'depth': traj.depth_BxL, 'q': q_BxLxT,
      'expected_depth': deciders_base.expected_depth(q_BxLxT),
      'halting': jnp.moveaxis(_halting_TxBxL(anira, params, traj.states_TxBxLxD, traj.depth_BxL),
                              0, -1),
      'readout_prediction': jnp.argmax(probs_TxBxLxV, -1).astype(jnp.int32),
      'readout_confidence': jnp.max(probs_TxBxLxV, -1),
      'logits': out.logits_BxLxV.astype(jnp.float32),
      'prediction': jnp.argmax(out.logits_BxLxV, -1).astype(jnp.int32),
      **({'states': traj.states_TxBxLxD} if states else {}),
  }


@functools.lru_cache(maxsize=None)
def _jitted_trace(anira: Anira, max_depth: int, states: bool):
  return jax.jit(functools.partial(_trace_arrays, anira=anira, max_depth=max_depth,
                                   states=states))


@dataclasses.dataclass
class Run:
  """A restored run: its resolved config, task, model and parameters at `step`."""

  config: ml_collections.ConfigDict
  task: tasks.Task
  anira: Anira
  params: dict
  step: int
  workdir: pathlib.Path
  _models: dict = dataclasses.field(default_factory=dict, repr=False)
  _sets: dict | None = dataclasses.field(default=None, repr=False)

  @property
  def max_depth(self) -> int:
    """The trained D."""
    return self.anira.model_cfg.max_depth

  @property
  def rule(self) -> str | None:
    """The trained inference rule ('median', 'mode', 'threshold=p'); None without one."""
    return self._rule_label(self.anira)

  @staticmethod
  def _rule_label(anira: Anira) -> str | None:
    cfg = anira.decider_cfg
    if cfg.name not in RULE_DECIDERS:
      return None
    return f'threshold={cfg.threshold:g}' if cfg.rule == 'threshold' else cfg.rule

  def model(self, rule: str | None = None, threshold: float | None = None) -> Anira:
    """The model with its inference rule changed (online/ponder); the trained one by default."""
    if rule is None and threshold is None:
      return self.anira
    cfg = self.anira.decider_cfg
    if cfg.name not in RULE_DECIDERS:
      raise ValueError(f'decider {cfg.name!r} has no inference rule to change; rules apply to '
                       f'{", ".join(RULE_DECIDERS)}')
    rule = rule or ('threshold' if threshold is not None else cfg.rule)
    if rule not in config_lib.INFERENCE_RULES:
      raise ValueError(f'rule={rule!r}; choose one of {", ".join(config_lib.INFERENCE_RULES)}')
    threshold = cfg.threshold if threshold is None else float(threshold)
    if not 0 < threshold < 1:
      raise ValueError(f'threshold={threshold} must lie in (0, 1)')
    key = (rule, threshold if rule == 'threshold' else None)
    if key not in self._models:
      new_cfg = dataclasses.replace(cfg, rule=rule, threshold=threshold)
      self._models[key] = Anira(self.anira.model_cfg, new_cfg)
    return self._models[key]

  def decode(self, tokens: Iterable[int]) -> list[str]:
    return self.task.decode(tokens)

  def encode(self, text: str) -> np.ndarray:
    """Whitespace-separated token strings -> ids [L]."""
    ids = {s: i for i, s in enumerate(self.task.vocab)}
    unknown = [s for s in text.split() if s not in ids]
    if unknown:
      raise ValueError(f'tokens {unknown} are not in the {self.task.name} vocabulary')
    return np.asarray([ids[s] for s in text.split()], np.int32)

  # --- data ------------------------------------------------------------------------------
  def _eval_sets(self) -> dict:
    if self._sets is None:
      self._sets = loop.eval_sets(self.config, self.task, self.workdir)
    return self._sets

  def batches(self, split_or_sizes, num_batches: int | None = None,
              batch_size: int | None = None) -> list[dict]:
    """Host batches of a configured evaluation split (the exact examples of results.json when
    the counts are the configured ones) or of any sizes ('1-8,12', an int or a tuple)."""
    num_batches = num_batches or self.config.eval.num_batches
    splits = config_lib.eval_splits(self.config)
    if isinstance(split_or_sizes, str) and split_or_sizes in splits:
      name = split_or_sizes
      if batch_size in (None, self.config.eval.batch_size):
        return list(itertools.islice(self._eval_sets()[name][1](), num_batches))
      sizes = splits[name]
      seed = self.config.seed + loop.EVAL_SEED_OFFSET + list(splits).index(name)
    else:
      sizes = self.sizes(split_or_sizes)
      seed = self.config.seed + loop.EVAL_SEED_OFFSET + CUSTOM_SIZES_SEED_OFFSET
    stream = tasks.Stream(self.task, tuple(sizes), batch_size or self.config.eval.batch_size,
                          seed=seed)
    return [stream.batch(i) for i in range(num_batches)]

  def sizes(self, split_or_sizes) -> tuple[int, ...]:
    splits = config_lib.eval_splits(self.config)
    if isinstance(split_or_sizes, str) and split_or_sizes in splits:
      return splits[split_or_sizes]
    try:
      return config_lib.parse_sizes(split_or_sizes, 'sizes')
    except config_lib.ConfigError:
      raise ValueError(f'{split_or_sizes!r} is neither an evaluation split ({", ".join(splits)}) '
                       'nor sizes like "1-8,12"') from None

  # --- inspection --------------------------------------------------------------------------
  def trace(self, batch_or_tokens, rule: str | None = None, threshold: float | None = None,
            max_depth: int | None = None, states: bool = False, batch_index: int = 0) -> Trace:
    """Per-token decisions of the inference loop on one batch.

    Args:
      batch_or_tokens: a host batch (dict from `batches` / `tasks.make_batch`), token ids [B, L]
        or [L], or a string of whitespace-separated tokens.
      rule, threshold: inference rule for online/ponder (default: the trained one).
      max_depth: T for this pass (default: the trained D).
      states: also return the state after every iteration, [T, B, L, D].
      batch_index: which evaluation batch's key rule='sample' draws with (as `evaluate` does).
    """
    anira = self.model(rule, threshold)
    max_depth = max_depth or self.max_depth
    if isinstance(batch_or_tokens, dict):
      batch = batch_or_tokens
    else:
      tokens = (self.encode(batch_or_tokens) if isinstance(batch_or_tokens, str)
                else np.asarray(batch_or_tokens, np.int32))
      batch = {'tokens': np.atleast_2d(tokens)}
    tokens_BxL = np.asarray(batch['tokens'], np.int32)
    if anira.decider.reads_complexity and 'complexity' not in batch:
      raise ValueError('the oracle decider reads the complexity annotation: trace a batch, '
                       'not bare tokens')
    complexity_BxL = np.asarray(batch.get('complexity', np.zeros(tokens_BxL.shape)), np.float32)
    out = jax.device_get(_jitted_trace(anira, max_depth, states)(
        self.params, tokens_BxL, complexity_BxL, evaluation.sampling_key(batch_index)))
    targets = batch.get('targets')
    return Trace(
        tokens=tokens_BxL, max_depth=max_depth,
        rule=self._rule_label(anira), **{k: np.asarray(v) for k, v in out.items()},
        targets=None if targets is None else np.asarray(targets),
        correct=None if targets is None else out['prediction'] == np.asarray(targets),
        loss_mask=batch.get('loss_mask'),
        complexity=batch.get('complexity'), size=batch.get('size'),
        features=dict(batch.get('features', {})))

  def trace_split(self, split_or_sizes, rule: str | None = None, threshold: float | None = None,
                  max_depth: int | None = None, num_batches: int | None = None,
                  batch_size: int | None = None, states: bool = False) -> Trace:
    """`trace` over every batch of a split (or sizes), concatenated."""
    return concatenate([self.trace(b, rule, threshold, max_depth, states, batch_index=i)
                        for i, b in enumerate(self.batches(split_or_sizes, num_batches,
                                                           batch_size))])

  def evaluate(self, split_or_sizes, rule: str | None = None, threshold: float | None = None,
               max_depth: int | None = None, num_batches: int | None = None,
               batch_size: int | None = None) -> dict:
    """One split's entry of results.json (`sizes` + `evaluation.evaluate_batches`)."""
    batches = self.batches(split_or_sizes, num_batches, batch_size)
    return {'sizes': list(self.sizes(split_or_sizes)),
            **evaluation.evaluate_batches(self.model(rule, threshold), self.params, batches,
                                          max_depth)}

  def results(self, rule: str | None = None, threshold: float | None = None,
              max_depth: int | None = None) -> dict:
    """The whole results.json content over the configured evaluation splits."""
    return loop.evaluate(self.config, self.model(rule, threshold), self.params,
                         self._eval_sets(), self.step, max_depth)


def _locate(path) -> tuple[pathlib.Path, int | None]:
  """(workdir, the step the path names or None)."""
  p = pathlib.Path(path).expanduser().absolute()
  if not p.exists():
    raise CheckpointError(f'{p} does not exist; {_EXPECTED}')
  if not p.is_dir():
    raise CheckpointError(f'{p} is a file, not a directory; {_EXPECTED}')
  if (p / checkpoint.CHECKPOINT_DIR).is_dir():
    return p, None
  if p.name == checkpoint.CHECKPOINT_DIR:
    return p.parent, None
  if p.name.isdigit() and p.parent.name == checkpoint.CHECKPOINT_DIR:
    return p.parent.parent, int(p.name)
  raise CheckpointError(f'{p} is not a workdir (it has no {checkpoint.CHECKPOINT_DIR}/ '
                        f'directory); {_EXPECTED}')


def _with_defaults(stored: dict, defaults: dict) -> dict:
  """`stored` plus any field it lacks from the shared defaults, so a checkpoint written before
  a config field existed still loads. Task options and evaluation splits are taken whole."""
  merged = dict(stored)
  for key, value in defaults.items():
    if key not in merged:
      merged[key] = value
    elif (isinstance(value, dict) and isinstance(merged[key], dict)
          and key not in ('options', 'splits')):
      merged[key] = _with_defaults(merged[key], value)
  return merged


def _config(mngr, step: int, workdir: pathlib.Path) -> ml_collections.ConfigDict:
  try:
    stored = checkpoint.restore_config(mngr, step)
  except CheckpointError as e:
    fallback = workdir / 'config.json'
    if not fallback.is_file():
      raise CheckpointError(f'{e}; and {fallback} does not exist either') from e
    try:
      stored = json.loads(fallback.read_text())
    except ValueError as e2:
      raise CheckpointError(f'{e}; and {fallback} is not valid JSON') from e2
  config = ml_collections.ConfigDict(_with_defaults(stored, config_lib.default_config().to_dict()))
  try:
    config_lib.validate(config)
  except config_lib.ConfigError as e:
    raise CheckpointError(f'the config stored with {mngr.directory} step {step} is not '
                          f'usable: {e}') from e
  return config


def load(path: str | pathlib.Path, step: int | None = None,
         device: jax.Device | None = None) -> Run:
  """The run in `path` at `step` (default: the step the path names, else the newest).

  `path` is a workdir, its checkpoints/ directory or one checkpoints/<step> directory. The
  parameters are placed on `device` (default: the first local device).
  """
  workdir, path_step = _locate(path)
  if step is not None and path_step is not None and step != path_step:
    raise CheckpointError(f'{path} is checkpoint step {path_step}, but step={step} was asked for')
  step = path_step if step is None else step
  absl_logger = logging.getLogger('absl')
  level = absl_logger.level
  absl_logger.setLevel(logging.ERROR)  # orbax warns that read-only ignores the keep policy
  try:
    mngr = checkpoint.manager(workdir, read_only=True)
  finally:
    absl_logger.setLevel(level)
  steps = sorted(mngr.all_steps())
  if not steps:
    raise CheckpointError(f'{mngr.directory} holds no complete checkpoint; expected step '
                          'directories written by training (train.checkpoint_every)')
  if step is None:
    step = steps[-1]
  elif step not in steps:
    raise CheckpointError(f'{mngr.directory} has no checkpoint step {step}; it has {steps}')
  config = _config(mngr, step, workdir)
  task, anira = loop.build(config)
  tx = state_lib.make_optimizer(config.train)
  sharding = jax.sharding.SingleDeviceSharding(device or jax.local_devices()[0])
  abstract = jax.tree.map(
      lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sharding),
      jax.eval_shape(lambda: state_lib.create(anira, tx, jax.random.key(0))))
  state = checkpoint.restore_state(mngr, step, abstract)
  mngr.close()
  return Run(config=config, task=task, anira=anira, params=state.params, step=step,
             workdir=workdir)
