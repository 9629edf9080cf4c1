"""What experiment files share: the `--config=FILE:ARG` variant parser, the task experiment
they start from, and the scale presets.

An experiment file builds its config with `task_experiment` (the defaults of
`anira_jax.config.default_config()` with the task, its sizes and the decider set), overrides
what its study needs, and reads its variant string with `parse_arg`, e.g.
`--config=experiments/parity.py:decider=online,quick`. Evaluation splits follow from the sizes
(in_distribution, held_out, longer) unless the file names its own.
"""

from __future__ import annotations

import importlib.util
import pathlib

import ml_collections

from anira_jax import config as config_lib
from anira_jax import deciders
from anira_jax.deciders import base as deciders_base


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


def task_experiment(task: str, *, train: str, holdout: str = '', longer: str = '',
                    options: dict | None = None, decider: str = 'early'
                    ) -> ml_collections.ConfigDict:
  """The default config for `task` trained on sizes `train` minus `holdout`, evaluated on the
  training sizes, the held-out ones and `longer`, with `decider`."""
  config = config_lib.default_config()
  config.task.update(name=task, options=options or {}, train_sizes=train, holdout_sizes=holdout,
                     longer_sizes=longer)
  config.decider.name = decider
  return config


def share_depth_prior(config: ml_collections.ConfigDict, *, gamma: float,
                      prior_base: float) -> None:
  """γ and b for both ANIRA-E and ANIRA-O: the paper tunes them on E and reuses them for O."""
  for name in ('early', 'online'):
    config.decider[name].update(gamma=gamma, prior_base=prior_base)


def prior_run_dir(out: pathlib.Path, task: str, scale: str, *, gamma: float,
                  prior_base: float) -> pathlib.Path:
  """Where `experiments.select_prior` trains ANIRA-E at one (γ, b) of its grid; the study looks
  there for a run it need not train again."""
  return out / task / scale / f'g{gamma:g}_b{prior_base:g}'


SCALES = ('cpu', 'study', 'paper', 'paper_large')
# The paper's two synthetic model sizes: 5.1 M and 13.7 M parameters (besides the embedding and
# LM head, which grow with the task's vocabulary), of which the decision head is ~8%. One layer
# each for prelude, shared core and coda: with one core layer a halted token's keys and values
# are the same at every later iteration, so decoding reads them at level min(d, d*) and saves
# the work of its skipped iterations, as the paper describes.
PAPER_MODELS = {
    'paper': dict(width=360, num_heads=6, head_hidden=1150),
    'paper_large': dict(width=592, num_heads=8, head_hidden=1850),
}


def check_scale(scale: str, scales: tuple[str, ...] = SCALES) -> None:
  if scale not in scales:
    raise ValueError(f'scale={scale!r}; choose one of {", ".join(scales)}')


def use_paper_scale(config: ml_collections.ConfigDict, max_depth: int,
                    scale: str = 'paper') -> None:
  """The paper's model (`PAPER_MODELS[scale]`, bfloat16 matmuls, for accelerators) and schedule:
  250k AdamW steps."""
  model = PAPER_MODELS[scale]
  config.model.update(width=model['width'], num_heads=model['num_heads'], mlp_ratio=4,
                      prelude_layers=1, core_layers=1, coda_layers=1, max_depth=max_depth,
                      dtype='bfloat16')
  for name, cls in deciders.DECIDERS.items():
    if issubclass(cls.Options, deciders_base.HeadOptions):
      config.decider[name].head_hidden = model['head_hidden']
  config.train.update(steps=250_000, batch_size=256, warmup_steps=2000, log_every=500,
                      checkpoint_every=5000)
  config.eval.update(batch_size=256, num_batches=8, every_steps=10_000)


def make_quick(config: ml_collections.ConfigDict) -> None:
  """A few steps and a tiny evaluation: a smoke test of the whole path. No size curriculum: over
  20 steps a preset's would never open past the smallest size."""
  config.train.update(steps=20, warmup_steps=2, log_every=5, checkpoint_every=10,
                      curriculum_steps=0)
  config.eval.update(every_steps=10, num_batches=1, batch_size=32)


# The study's cells (experiments/study.py): cell -> (experiment, variant). MANO twice, with and
# without the marker that names L before the answer (a static cue ANIRA-E can read).
STUDY_CELLS = {'lano': ('lano', ''), 'mano': ('mano', ''),
               'mano_no_marker': ('mano', 'marker=false'), 'brevo': ('brevo', '')}
STUDY_DECIDERS = ('early', 'online')


def study_config(cell: str, decider: str, seed: int,
                 scale: str = 'study') -> ml_collections.ConfigDict:
  """The config of one study run: the cell's experiment at `scale` (the study preset unless
  asked otherwise), with the decider and seed."""
  experiment, variant = STUDY_CELLS[cell]
  module = load_module(pathlib.Path(__file__).parent / f'{experiment}.py')
  config = module.get_config(','.join(filter(None, [f'scale={scale}', f'decider={decider}',
                                                     variant])))
  config.seed = seed
  return config


def load_module(path: str):
  """The experiment module at `path` (a config file), for tools that call its get_config."""
  spec = importlib.util.spec_from_file_location(pathlib.Path(path).stem, path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module
