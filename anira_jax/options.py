"""Typed option records, and the one-line checks every config section shares.

The experiment config is an `ml_collections.ConfigDict`; nothing under jit reads it. The model
and each decider read a frozen dataclass derived from `Options` instead, whose fields and
defaults *are* their config section's (`config.default_config` builds the sections from them),
and which checks its own values: a bad one raises `ConfigError`, one line naming the field and
what is allowed.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from typing import Any


class ConfigError(ValueError):
  """An invalid config value; the message names the field and what is allowed."""


def choice(path: str, value: Any, allowed: Sequence[Any]) -> None:
  if value not in allowed:
    raise ConfigError(f'config.{path}={value!r} is not allowed; choose one of {list(allowed)}')


def number(path: str, value: Any, *, minimum: float = 0.0, allow_minimum: bool = False) -> None:
  """A finite int or float above `minimum` (or equal to it, with `allow_minimum`)."""
  ok = (isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
        and (value >= minimum if allow_minimum else value > minimum))
  if not ok:
    bound = f'>= {minimum:g}' if allow_minimum else f'> {minimum:g}'
    raise ConfigError(f'config.{path}={value!r} must be a finite number {bound}')


def integer(path: str, value: Any, minimum: int) -> None:
  if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
    raise ConfigError(f'config.{path}={value!r} must be an integer >= {minimum}')


def open_unit(path: str, value: Any) -> None:
  """A probability strictly between 0 and 1."""
  if not isinstance(value, (int, float)) or not 0 < value < 1:
    raise ConfigError(f'config.{path}={value!r} must lie in (0, 1)')


@dataclasses.dataclass(frozen=True)
class Options:
  """Base of the typed views of config sections (see the module docstring)."""

  def check(self, path: str) -> None:
    """Raises ConfigError naming `config.<path>.<field>` for the first bad value."""
    del path

  @classmethod
  def defaults(cls) -> dict[str, Any]:
    """The fields that have a default, with it: the config section's defaults."""
    return {f.name: f.default for f in dataclasses.fields(cls)
            if f.default is not dataclasses.MISSING}

  @classmethod
  def from_section(cls, section: Mapping[str, Any], path: str, **given: Any) -> 'Options':
    """The options of config section `path` (plus fields the config does not hold, `given`),
    checked; an unknown field is a ConfigError naming it."""
    known = {f.name for f in dataclasses.fields(cls)} - set(given)
    unknown = sorted(set(section) - known)
    if unknown:
      raise ConfigError(f'config.{path} has no field {unknown[0]!r}; its fields are '
                        f'{sorted(known)}')
    options = cls(**dict(section), **given)
    options.check(path)
    return options
