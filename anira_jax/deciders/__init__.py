"""Compute-allocation deciders by name (DESIGN §3). Adding one: a module and a line below."""

from anira_jax.config import DeciderConfig, ModelConfig
from anira_jax.deciders.act import Act
from anira_jax.deciders.base import Context, Decider, Decision
from anira_jax.deciders.early import Early
from anira_jax.deciders.online import Online
from anira_jax.deciders.ponder import Ponder
from anira_jax.deciders.scheduled import Fixed, Oracle

DECIDERS: dict[str, type[Decider]] = {
    cls.name: cls for cls in (Fixed, Early, Online, Act, Ponder, Oracle)
}


def make(cfg: DeciderConfig, model: ModelConfig) -> Decider:
  if cfg.name not in DECIDERS:
    raise ValueError(f'unknown decider {cfg.name!r}; known: {", ".join(sorted(DECIDERS))}')
  return DECIDERS[cfg.name](cfg, model)


__all__ = ['Context', 'DECIDERS', 'Decider', 'Decision', 'make']
