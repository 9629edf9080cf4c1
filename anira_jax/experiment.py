"""From a config to what it describes: the checks a run depends on, and the task and model.

    experiment = build(config)   # checks the config first; ConfigError names the bad field
    experiment.task, experiment.anira, experiment.train_sizes, experiment.splits

This module owns the registries' checks (task and decider names, their options) and the sizes:
the training sizes are the training range minus the held-out sizes, and the evaluation splits
are `config.eval.splits` or, when that is empty, derived from the task's sizes.
"""

from __future__ import annotations

import dataclasses

import ml_collections

import tasks
from anira_jax import deciders, gsm_symbolic, options, pretrained
from anira_jax.anira import Anira
from anira_jax.config import EVAL_SOURCES, parse_size_weights, parse_sizes
from anira_jax.ingredients import Ingredients
from anira_jax.model.config import ModelConfig
from anira_jax.options import ConfigError


@dataclasses.dataclass(frozen=True)
class Experiment:
  """A checked config and the task, model and sizes it describes."""

  config: ml_collections.ConfigDict
  task: tasks.Task
  anira: Anira
  train_sizes: tuple[int, ...]  # the sizes training draws from
  splits: dict[str, tuple[int, ...]]  # evaluation split name -> sizes
  pretrained: pretrained.Options = pretrained.Options()  # the checkpoint training starts from
  gsm_symbolic: gsm_symbolic.Options = gsm_symbolic.Options()  # the benchmark after training
  ingredients: Ingredients = Ingredients()  # what the training step adds (config.train)
  # How often training draws each of train_sizes (aligned with it); None = uniformly.
  train_size_weights: tuple[float, ...] | None = None


def _sizes(config: ml_collections.ConfigDict, field: str) -> tuple[int, ...]:
  spec = config.task[field]
  return parse_sizes(spec, f'task.{field}') if spec else ()


def train_sizes(config: ml_collections.ConfigDict) -> tuple[int, ...]:
  """The training range minus the held-out sizes, which must lie inside it."""
  trained = parse_sizes(config.task.train_sizes, 'task.train_sizes')
  held_out = _sizes(config, 'holdout_sizes')
  outside = [s for s in held_out if s not in trained]
  if outside:
    raise ConfigError(f'config.task.holdout_sizes has {outside} outside the training sizes '
                      f'({config.task.train_sizes}); held-out sizes are removed from training, '
                      'so they must be training sizes (evaluate other sizes with '
                      'task.longer_sizes or eval.splits)')
  sizes = tuple(s for s in trained if s not in held_out)
  if not sizes:
    raise ConfigError('config.task.holdout_sizes removes every training size')
  return sizes


def eval_splits(config: ml_collections.ConfigDict) -> dict[str, tuple[int, ...]]:
  """{split name: sizes}: `config.eval.splits`, or in_distribution / held_out / longer from the
  task's training, held-out and longer sizes."""
  if config.eval.splits:
    return {name: parse_sizes(spec, f'eval.splits.{name}')
            for name, spec in config.eval.splits.items()}
  splits = {'in_distribution': train_sizes(config),
            'held_out': _sizes(config, 'holdout_sizes'),
            'longer': _sizes(config, 'longer_sizes')}
  return {name: sizes for name, sizes in splits.items() if sizes}


def model_config(config: ml_collections.ConfigDict, task: tasks.Task) -> ModelConfig:
  return ModelConfig.from_section(config.model, 'model', vocab_size=task.vocab_size,
                                  vector_size=task.vector_size)


def decider_options(config: ml_collections.ConfigDict,
                    sizes: tuple[int, ...]) -> options.Options:
  """The named decider's options, with experiment-dependent defaults filled in. Every decider's
  section is checked, so a bad value fails at start-up whichever decider runs."""
  name = config.decider.name
  options.choice('decider.name', name, sorted(deciders.DECIDERS))
  unknown = sorted(set(config.decider) - {'name', *deciders.DECIDERS})
  if unknown:
    raise ConfigError(f'config.decider has no field {unknown[0]!r}: a decider\'s options live in '
                      f'config.decider.<its name> (e.g. config.decider.{name})')
  checked = {n: cls.Options.from_section(config.decider[n], f'decider.{n}')
             for n, cls in deciders.DECIDERS.items() if n in config.decider}
  if name not in checked:
    raise ConfigError(f'config.decider.{name} is missing; it holds the {name} decider\'s options')
  return deciders.DECIDERS[name].resolve(checked[name], sizes)


def _make_task(config: ml_collections.ConfigDict) -> tasks.Task:
  options.choice('task.name', config.task.name, sorted(tasks.TASKS))
  try:
    return tasks.make(config.task.name, **config.task.options.to_dict())
  except (TypeError, ValueError) as e:
    raise ConfigError(f'config.task.options are invalid for task {config.task.name!r}: {e}')


def _check_sizes(task: tasks.Task, config, sizes: tuple[int, ...],
                 splits: dict[str, tuple[int, ...]]) -> None:
  lo, hi = task.valid_sizes()
  named = {'task.train_sizes': sizes, **{f'eval.splits.{k}': v for k, v in splits.items()}}
  for path, values in named.items():
    bad = [s for s in values if not lo <= s <= hi]
    if bad:
      raise ConfigError(f'config.{path} has sizes {bad} outside what task '
                        f'{config.task.name!r} generates ({lo}..{hi})')


def _check_train(t: ml_collections.ConfigDict) -> None:
  for field in ('steps', 'batch_size', 'grad_accumulation_steps', 'log_every',
                'checkpoint_every', 'keep_checkpoints', 'preemption_check_every'):
    options.integer(f'train.{field}', t[field], 1)
  options.number('train.learning_rate', t.learning_rate)
  options.number('train.warmup_steps', t.warmup_steps, allow_minimum=True)
  options.number('train.weight_decay', t.weight_decay, allow_minimum=True)
  options.number('train.grad_clip', t.grad_clip)
  options.integer('train.curriculum_steps', t.curriculum_steps, 0)
  if t.batch_size % t.grad_accumulation_steps:
    raise ConfigError(f'config.train.batch_size={t.batch_size} must be divisible by '
                      f'train.grad_accumulation_steps={t.grad_accumulation_steps}')
  if t.warmup_steps >= t.steps:
    raise ConfigError(f'config.train.warmup_steps={t.warmup_steps} must be below '
                      f'train.steps={t.steps}')


def _check_dispatch(config: ml_collections.ConfigDict) -> None:
  """The loop acts only at the end of a dispatch: its intervals must fall on one."""
  per_dispatch = config.train.steps_per_dispatch
  options.integer('train.steps_per_dispatch', per_dispatch, 1)
  intervals = {'train.log_every': config.train.log_every,
               'train.checkpoint_every': config.train.checkpoint_every,
               'eval.every_steps': config.eval.every_steps}
  for path, every in intervals.items():
    if every % per_dispatch:
      raise ConfigError(f'config.{path}={every} must be a multiple of '
                        f'train.steps_per_dispatch={per_dispatch}: the loop logs, evaluates and '
                        'saves only after a whole dispatch')


def _check_mesh_and_eval(config: ml_collections.ConfigDict, model: ModelConfig) -> None:
  options.integer('mesh.fsdp', config.mesh.fsdp, 1)
  if not isinstance(config.mesh.data, int) or (config.mesh.data < 1 and config.mesh.data != -1):
    raise ConfigError(f'config.mesh.data={config.mesh.data!r} must be an integer >= 1, or -1 '
                      '(all devices the fsdp axis leaves)')
  e = config.eval
  options.choice('eval.source', e.source, EVAL_SOURCES)
  for field in ('batch_size', 'num_batches', 'every_steps'):
    options.integer(f'eval.{field}', e[field], 1)
  if e.max_depth:
    options.integer('eval.max_depth', e.max_depth, 1)
    if model.kind == 'standard' and e.max_depth != model.max_depth:
      raise ConfigError(f'config.eval.max_depth={e.max_depth}: a standard (unshared) model has '
                        f'exactly model.max_depth={model.max_depth} layers; set eval.max_depth=0')


def build(config: ml_collections.ConfigDict) -> Experiment:
  """Checks every field a run depends on (ConfigError names the first bad one) and builds the
  task and model."""
  task = _make_task(config)
  sizes = train_sizes(config)
  splits = eval_splits(config)
  if not splits:
    raise ConfigError('config.eval.splits is empty and the task names no sizes to derive '
                      'them from')
  _check_sizes(task, config, sizes, splits)
  model = model_config(config, task)
  longest = max(task.seq_len(max(v)) for v in (sizes, *splits.values()))
  if model.position == 'learned' and longest > model.max_len:
    raise ConfigError(f'config.model.max_len={model.max_len} is shorter than the longest '
                      f'sequence ({longest}); raise it or use position="rope"')
  decider_opts = decider_options(config, sizes)
  if model.kind == 'standard' and config.decider.name != 'fixed':
    raise ConfigError(f'config.model.kind="standard" (unshared layers) runs every layer: it '
                      f'needs decider.name="fixed", not {config.decider.name!r}')
  _check_train(config.train)
  size_weights = parse_size_weights(config.train.size_weights, sizes)
  ingredients = Ingredients.from_train(config.train)
  _check_mesh_and_eval(config, model)
  _check_dispatch(config)
  start = pretrained.Options.from_section(config.pretrained, 'pretrained')
  gsm = gsm_symbolic.Options.from_section(config.gsm_symbolic, 'gsm_symbolic')
  if gsm.path and not isinstance(task, tasks.TextTask):
    raise ConfigError('config.gsm_symbolic.path is set: the benchmark needs a text task '
                      f'(task.name="text", for its tokenizer), not {config.task.name!r}')
  return Experiment(config=config, task=task,
                    anira=Anira(model, config.decider.name, decider_opts),
                    train_sizes=sizes, splits=splits, pretrained=start, gsm_symbolic=gsm,
                    ingredients=ingredients, train_size_weights=size_weights)
