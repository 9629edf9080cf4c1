"""Checkpoint inspection: load a finished (or running) run and look inside its decisions.

    run = inspect.load('workdirs/brevo')  # a workdir, its checkpoints/ or checkpoints/<step>
    tr = run.trace(run.batches('in_distribution')[0])
    tr.depth[0], tr.q[0, 5], tr.halting[0, 5], tr.readout_confidence[:, 0, 5]
    run.evaluate('longer', rule='threshold', threshold=0.3, max_depth=12)   # a results.json split
    run.evaluate('longer', decider='confidence', threshold=0.99)  # a zero-shot exit instead

`load` needs no config from the caller: it reads the one stored with the checkpoint (falling
back to the workdir's config.json), rebuilds task and model with `experiment.build`, and
restores the parameters against `jax.eval_shape` of a fresh train state, placed on one device
(CPU is enough), verified against the checksums saved with them. Every failure to find, read or
verify a checkpoint is a `CheckpointError` whose one-line message names the path and what was
expected there (for a checkpoint that fails, also the newest one that passes). Nothing here
imports the training loop.

Bad arguments raise ValueError with one line saying what is allowed: token ids outside the
vocabulary, an empty batch, a depth, batch count or batch size below 1, sizes the task cannot
generate, and batches whose largest arrays would exceed `MEMORY_BUDGET_BYTES` (a rough count of
what one pass holds at once: attention scores, every iteration's readout and states).

Traces run the inference loop (`path='loop'`), exactly as evaluation does, so a trace's executed
depths are evaluation's depths for the same batch and rule; a `Trace` is the per-token record
that evaluation and the analyses compute their figures from (`anira_jax.trace`).
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import json
import logging
import pathlib
from collections.abc import Iterable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

import tasks
from anira_jax import checkpoint, deciders, evaluation, experiment, options
from anira_jax import train_state as state_lib
from anira_jax.anira import Anira
from anira_jax.checkpoint import CheckpointError
from anira_jax.config import parse_sizes, with_defaults
from anira_jax.deciders import base as deciders_base
from anira_jax.options import ConfigError
from anira_jax.trace import Trace, concatenate

MEMORY_BUDGET_BYTES = 4 * 2**30  # the most one traced or evaluated batch may need

_EXPECTED = (f'expected a training workdir (holding {checkpoint.CHECKPOINT_DIR}/), its '
             f'{checkpoint.CHECKPOINT_DIR}/ directory or one {checkpoint.CHECKPOINT_DIR}/<step> '
             'directory')


def _trace_arrays(params, tokens_BxL, complexity_BxL, vectors_BxLxF, key, *, anira: Anira,
                  max_depth: int, states: bool) -> dict:
  out = anira.apply(params, tokens_BxL, train=False, key=key, complexity_BxL=complexity_BxL,
                    path='loop', max_depth=max_depth, collect_states=True,
                    vectors_BxLxF=vectors_BxLxF)
  traj = out.trajectory
  step_logits_TxBxLxV = anira.readout_every_iteration(params, traj.states_TxBxLxD)
  probs_TxBxLxV = jax.nn.softmax(step_logits_TxBxLxV.astype(jnp.float32), -1)
  q_BxLxT = traj.decision.q_BxLxT
  halting_TxBxL = anira.decider.halting_TxBxL(params['decider'], traj.states_TxBxLxD,
                                              traj.depth_BxL)
  return {
      'depth': traj.depth_BxL, 'q': q_BxLxT,
      'expected_depth': deciders_base.expected_depth(q_BxLxT),
      'head_calls': traj.decision.head_calls_BxL,
      'halting': jnp.moveaxis(halting_TxBxL, 0, -1),
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


def _positive(name: str, value) -> int:
  if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 1:
    raise ValueError(f'{name}={value!r} must be an integer >= 1')
  return int(value)


def _batch_bytes(model_cfg, rows: int, length: int, max_depth: int) -> int:
  """A rough count of the largest arrays one pass over a [rows, length] batch holds at once:
  attention scores, every iteration's readout (logits and probabilities) and states, and one
  layer's activations, in float32."""
  per_token = (model_cfg.num_heads * length
               + max_depth * (2 * model_cfg.vocab_size + model_cfg.width)
               + model_cfg.width * (4 + model_cfg.mlp_ratio))
  return 4 * rows * length * per_token


@dataclasses.dataclass
class Run:
  """A restored run: its experiment (config, task, model) and parameters at `step`."""

  experiment: experiment.Experiment
  params: dict
  step: int
  workdir: pathlib.Path
  _models: dict = dataclasses.field(default_factory=dict, repr=False)
  _sets: dict | None = dataclasses.field(default=None, repr=False)

  @property
  def config(self) -> ml_collections.ConfigDict:
    return self.experiment.config

  @property
  def task(self) -> tasks.Task:
    return self.experiment.task

  @property
  def anira(self) -> Anira:
    return self.experiment.anira

  @property
  def max_depth(self) -> int:
    """The trained D."""
    return self.anira.model_cfg.max_depth

  @property
  def rule(self) -> str | None:
    """The trained inference rule ('median', 'mode', 'threshold=p'); None without one."""
    return self.anira.decider.rule_label

  def model(self, rule: str | None = None, threshold: float | None = None,
            decider: str | None = None) -> Anira:
    """The model with its inference rule or threshold changed (deciders with one), or with
    another decider that has no parameters (a zero-shot exit, fixed, oracle, tied) in place of
    the trained one; the trained model by default."""
    trained = self.anira.decider
    name = decider or trained.name
    if name == trained.name and rule is None and threshold is None:
      return self.anira
    options.choice('decider', name, sorted(deciders.DECIDERS))
    cls = deciders.DECIDERS[name]
    if name != trained.name and cls(cls.Options(), self.anira.model_cfg).head() is not None:
      raise ValueError(f'decider {name!r} has a decision head the checkpoint (trained with '
                       f'{trained.name!r}) does not hold; only deciders without parameters '
                       'can replace the trained one')
    current = (trained.options if name == trained.name
               else cls.Options.from_section(self.config.decider.get(name, {}),
                                             f'decider.{name}'))
    fields = dataclasses.asdict(current)
    if rule is not None or (threshold is not None and cls.has_rule):
      if not cls.has_rule:
        with_rules = sorted(n for n, c in deciders.DECIDERS.items() if c.has_rule)
        raise ValueError(f'decider {name!r} has no inference rule to change; rules apply '
                         f'to {", ".join(with_rules)}')
      fields['rule'] = rule or ('threshold' if threshold is not None else current.rule)
    if threshold is not None:
      if 'threshold' not in fields:
        raise ValueError(f'decider {name!r} has no threshold')
      fields['threshold'] = float(threshold)
    try:
      opts = cls.resolve(cls.Options.from_section(fields, f'decider.{name}'),
                         self.experiment.train_sizes)
    except ConfigError as e:
      raise ValueError(str(e).removeprefix(f'config.decider.{name}.')) from None
    key = (name, opts)
    if key not in self._models:
      self._models[key] = Anira(self.anira.model_cfg, name, opts)
    return self._models[key]

  def params_for(self, anira: Anira) -> dict:
    """The parameters `anira` (from `model`) reads: the trained ones, without the decision
    head when another decider replaces the trained one."""
    if anira.decider.name == self.anira.decider.name:
      return self.params
    return {'model': self.params['model'], 'decider': {}}

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
      self._sets = evaluation.eval_sets(self.experiment, self.workdir)
    return self._sets

  def batches(self, split_or_sizes, num_batches: int | None = None,
              batch_size: int | None = None, *, max_depth: int | None = None) -> list[dict]:
    """Host batches of a configured evaluation split (the exact examples of results.json when
    the counts are the configured ones) or of any sizes ('1-8,12', an int or a tuple);
    `max_depth`, the depth they will run at, only sizes the memory check."""
    num_batches = _positive('num_batches', self.config.eval.num_batches
                            if num_batches is None else num_batches)
    batch_size = _positive('batch_size', self.config.eval.batch_size
                           if batch_size is None else batch_size)
    sizes = self.sizes(split_or_sizes)
    self._check_memory(batch_size, self.task.seq_len(max(sizes)), self._depth(max_depth),
                       f'sizes up to {max(sizes)}')
    splits = self.experiment.splits
    if isinstance(split_or_sizes, str) and split_or_sizes in splits:
      name = split_or_sizes
      if batch_size == self.config.eval.batch_size:
        return list(itertools.islice(self._eval_sets()[name][1](), num_batches))
    else:
      # A set of sizes is its own named stream: the same sizes give the same examples.
      name = 'sizes:' + ','.join(map(str, sizes))
    stream = evaluation.split_stream(self.experiment, name, sizes, batch_size)
    return [stream.batch(i) for i in range(num_batches)]

  def sizes(self, split_or_sizes) -> tuple[int, ...]:
    splits = self.experiment.splits
    if isinstance(split_or_sizes, str) and split_or_sizes in splits:
      return splits[split_or_sizes]
    try:
      sizes = parse_sizes(split_or_sizes, 'sizes')
    except (ConfigError, TypeError, ValueError):
      raise ValueError(f'{split_or_sizes!r} is neither an evaluation split ({", ".join(splits)}) '
                       'nor sizes like "1-8,12"') from None
    lo, hi = self.task.valid_sizes()
    outside = [s for s in sizes if not lo <= s <= hi]
    if outside:
      raise ValueError(f'sizes {outside[:5]} are outside what task {self.task.name!r} generates '
                       f'({lo}..{hi})')
    return sizes

  def _depth(self, max_depth) -> int:
    """`max_depth` checked (None: the trained D)."""
    if max_depth is None:
      return self.max_depth
    max_depth = _positive('max_depth', max_depth)
    if self.anira.model_cfg.kind == 'standard' and max_depth != self.max_depth:
      raise ValueError(f'max_depth={max_depth}: a standard (unshared) model has exactly its '
                       f'{self.max_depth} layers')
    return max_depth

  def _check_memory(self, rows: int, length: int, max_depth: int, what: str) -> None:
    need = _batch_bytes(self.anira.model_cfg, rows, length, max_depth)
    if need > MEMORY_BUDGET_BYTES:
      raise ValueError(
          f'{what} make sequences of {length} tokens: a batch of {rows} needs about '
          f'{need / 2**30:,.1f} GiB, over inspect.MEMORY_BUDGET_BYTES '
          f'({MEMORY_BUDGET_BYTES / 2**30:g} GiB); use smaller sizes or a smaller batch_size')

  def _check_tokens(self, tokens_BxL: np.ndarray) -> None:
    if tokens_BxL.ndim != 2 or tokens_BxL.size == 0:
      raise ValueError(f'empty or misshapen batch: tokens have shape {tokens_BxL.shape}; '
                       'expected [B, L] with B, L >= 1')
    vocab = self.anira.model_cfg.vocab_size
    bad = np.argwhere((tokens_BxL < 0) | (tokens_BxL >= vocab))
    if len(bad):
      where = tuple(int(i) for i in bad[0])
      raise ValueError(f'token id {int(tokens_BxL[where])} at {list(where)} is outside the '
                       f'{self.task.name} vocabulary (ids 0..{vocab - 1})')

  # --- inspection --------------------------------------------------------------------------
  def trace(self, batch_or_tokens, rule: str | None = None, threshold: float | None = None,
            max_depth: int | None = None, states: bool = False, batch_index: int = 0,
            decider: str | None = None) -> Trace:
    """Per-token decisions of the inference loop on one batch.

    Args:
      batch_or_tokens: a host batch (dict from `batches` / `tasks.make_batch`), token ids [B, L]
        or [L], or a string of whitespace-separated tokens.
      rule, threshold: inference rule or threshold for deciders with one (default: the
        trained one).
      max_depth: T for this pass (default: the trained D).
      states: also return the state after every iteration, [T, B, L, D].
      batch_index: which evaluation batch's key rule='sample' draws with (as `evaluate` does).
      decider: a decider without parameters to run instead of the trained one (`model`).
    """
    anira = self.model(rule, threshold, decider)
    max_depth = self._depth(max_depth)
    if isinstance(batch_or_tokens, dict):
      batch = batch_or_tokens
    else:
      tokens = (self.encode(batch_or_tokens) if isinstance(batch_or_tokens, str)
                else np.asarray(batch_or_tokens))
      batch = {'tokens': np.atleast_2d(tokens)}
    tokens_BxL = np.asarray(batch['tokens'])
    if tokens_BxL.dtype.kind not in 'iu' and not (
        tokens_BxL.dtype.kind in 'fb' and np.array_equal(tokens_BxL, np.round(tokens_BxL))):
      raise ValueError(f'token ids must be integers, not {tokens_BxL.dtype}')
    self._check_tokens(tokens_BxL)
    tokens_BxL = tokens_BxL.astype(np.int32)
    self._check_memory(*tokens_BxL.shape, max_depth, 'these tokens')
    if anira.decider.reads_complexity and 'complexity' not in batch:
      raise ValueError(f'the {anira.decider.name} decider reads the complexity annotation: '
                       'trace a batch, not bare tokens')
    if anira.model_cfg.vector_size and 'vectors' not in batch:
      raise ValueError(f'the {self.task.name} model reads a vector per position besides its '
                       'token: trace a batch (with its "vectors"), not bare tokens')
    complexity_BxL = np.asarray(batch.get('complexity', np.zeros(tokens_BxL.shape)), np.float32)
    vectors_BxLxF = batch.get('vectors')
    out = jax.device_get(_jitted_trace(anira, max_depth, states)(
        self.params_for(anira), tokens_BxL, complexity_BxL,
        None if vectors_BxLxF is None else np.asarray(vectors_BxLxF, np.float32),
        evaluation.sampling_key(batch_index)))
    targets = batch.get('targets')
    return Trace(
        tokens=tokens_BxL, max_depth=max_depth,
        rule=anira.decider.rule_label, **{k: np.asarray(v) for k, v in out.items()},
        targets=None if targets is None else np.asarray(targets),
        correct=None if targets is None else out['prediction'] == np.asarray(targets),
        loss_mask=batch.get('loss_mask'), annotated=batch.get('annotated'),
        complexity=batch.get('complexity'), size=batch.get('size'),
        features=dict(batch.get('features', {})))

  def trace_split(self, split_or_sizes, rule: str | None = None, threshold: float | None = None,
                  max_depth: int | None = None, num_batches: int | None = None,
                  batch_size: int | None = None, states: bool = False,
                  decider: str | None = None) -> Trace:
    """`trace` over every batch of a split (or sizes), concatenated."""
    return concatenate([self.trace(b, rule, threshold, max_depth, states, batch_index=i,
                                   decider=decider)
                        for i, b in enumerate(self.batches(split_or_sizes, num_batches,
                                                           batch_size, max_depth=max_depth))])

  def generate_split(self, split_or_sizes, rule: str | None = None,
                     threshold: float | None = None, max_depth: int | None = None,
                     num_batches: int | None = None, batch_size: int | None = None,
                     decider: str | None = None) -> tuple[Trace, dict[str, np.ndarray]]:
    """For a task graded by generation (BREVO): every row of a split (or sizes) generated
    greedily after its prompt, as a Trace of the generated answers, and the task's verdicts
    per row (`generation.generate_trace`), with the trained decider or another (`model`)."""
    if not isinstance(self.task, tasks.Generative):
      raise ValueError(f'task {self.task.name!r} is scored token by token, not by generation; '
                       'use trace_split')
    anira = self.model(rule, threshold, decider)
    max_depth = None if max_depth is None else self._depth(max_depth)
    batches = self.batches(split_or_sizes, num_batches, batch_size, max_depth=max_depth)
    return evaluation.generation_traces(anira, self.params_for(anira), self.task, batches,
                                        max_depth)

  def evaluate(self, split_or_sizes, rule: str | None = None, threshold: float | None = None,
               max_depth: int | None = None, num_batches: int | None = None,
               batch_size: int | None = None, decider: str | None = None) -> dict:
    """One split's entry of results.json (`sizes` + `evaluation.evaluate_batches`), with the
    trained decider or, on the same parameters, another one (`model`)."""
    anira = self.model(rule, threshold, decider)
    max_depth = None if max_depth is None else self._depth(max_depth)
    batches = self.batches(split_or_sizes, num_batches, batch_size, max_depth=max_depth)
    return {'sizes': list(self.sizes(split_or_sizes)),
            **evaluation.evaluate_batches(anira, self.params_for(anira), batches, max_depth,
                                          task=self.task)}

  def results(self, rule: str | None = None, threshold: float | None = None,
              max_depth: int | None = None, decider: str | None = None) -> dict:
    """The whole results.json content over the configured evaluation splits."""
    max_depth = None if max_depth is None else self._depth(max_depth)
    anira = self.model(rule, threshold, decider)
    return evaluation.evaluate(self.experiment, self.params_for(anira), self._eval_sets(),
                               self.step, max_depth, anira=anira)


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
  return ml_collections.ConfigDict(with_defaults(stored))


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
  try:
    exp = experiment.build(config)
  except ConfigError as e:
    raise CheckpointError(f'the config stored with {mngr.directory} step {step} is not '
                          f'usable: {e}') from e
  anira, tx = exp.anira, state_lib.make_optimizer(config.train)
  sharding = jax.sharding.SingleDeviceSharding(device or jax.local_devices()[0])
  abstract = jax.tree.map(
      lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sharding),
      jax.eval_shape(lambda: state_lib.create(anira, tx, jax.random.key(0))))
  try:
    state = checkpoint.restore_state(mngr, step, abstract)
  except CheckpointError as e:
    good = checkpoint.newest_good_step(mngr, abstract, below=step)
    advice = (f'the newest checkpoint that passes is step {good}: load it with step={good}'
              if good is not None else 'no older checkpoint there passes either')
    raise CheckpointError(f'{e}; {advice}') from e
  finally:
    mngr.close()
  return Run(experiment=exp, params=state.params, step=step, workdir=workdir)
