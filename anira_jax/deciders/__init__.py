"""Compute-allocation deciders by name (DESIGN §3). Adding one: its module, and a line below."""

from anira_jax import options
from anira_jax.deciders import (act, confidence, convergence, early, fixed_point, online, ponder,
                                scheduled, supervised, tied)
from anira_jax.deciders.base import Context, Decider, Decision
from anira_jax.model.config import ModelConfig

DECIDERS: dict[str, type[Decider]] = {cls.name: cls for cls in (
    scheduled.Fixed, early.Early, online.Online, act.Act, ponder.Ponder, scheduled.Oracle,
    confidence.Confidence, convergence.Convergence, fixed_point.FixedPoint,
    supervised.Supervised, tied.Tied)}


def make(name: str, model: ModelConfig, opts: options.Options | None = None) -> Decider:
  """The decider registered as `name`, with `opts` (its `Options`; default: their defaults)."""
  if name not in DECIDERS:
    raise ValueError(f'unknown decider {name!r}; known: {", ".join(sorted(DECIDERS))}')
  cls = DECIDERS[name]
  return cls(cls.Options() if opts is None else opts, model)


__all__ = ['Context', 'DECIDERS', 'Decider', 'Decision', 'make']
