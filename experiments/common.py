"""What experiment files share: the `--config=FILE:ARG` variant parser and the scale presets.

An experiment file starts from `anira_jax.config.default_config()`, overrides what its study
needs, and reads its variant string with `parse_arg`, e.g.
`--config=experiments/parity.py:decider=online,quick`.
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
