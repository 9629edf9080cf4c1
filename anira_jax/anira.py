"""The whole model: network + decider + recurrence, as pure functions of one parameter tree.

    params = {'model': network params, 'decider': decision-head params}

`apply` is what training, evaluation and inspection call; `path` picks the training unroll
(`lax.scan`) or the inference loop (`lax.while_loop`).
"""

from __future__ import annotations

from typing import NamedTuple

import jax

from anira_jax import deciders, recurrence
from anira_jax.config import DeciderConfig, ModelConfig
from anira_jax.model import Network

PATHS = ('unroll', 'loop')


class Output(NamedTuple):
  logits_BxLxV: jax.Array  # float32
  trajectory: recurrence.Trajectory


class Anira:
  """One ModelConfig + DeciderConfig; holds no parameters."""

  def __init__(self, model: ModelConfig, decider: DeciderConfig):
    self.model_cfg = model
    self.decider_cfg = decider
    self.network = Network(model)
    self.decider = deciders.make(decider, model)

  def init(self, key: jax.Array) -> dict:
    k_model, k_decider = jax.random.split(key)
    return {'model': self.network.init(k_model), 'decider': self.decider.init(k_decider)}

  def apply(self, params: dict, tokens_BxL: jax.Array, *, train: bool, key: jax.Array | None = None,
            complexity_BxL: jax.Array | None = None, path: str = 'unroll',
            max_depth: int | None = None, collect_states: bool = False) -> Output:
    """Logits and the per-token trajectory for a batch of token ids.

    `max_depth` raises (or lowers) T at evaluation; the trained D is the default. Padding
    (token 0) never keeps the inference loop running.
    """
    if path not in PATHS:
      raise ValueError(f'path={path!r}; choose one of {PATHS}')
    max_depth = max_depth or self.model_cfg.max_depth
    if self.model_cfg.kind == 'standard' and max_depth != self.model_cfg.max_depth:
      raise ValueError('a standard (unshared) model has exactly max_depth layers; '
                       f'it cannot run {max_depth}')
    ctx = deciders.Context(train=train, key=key, max_depth=max_depth,
                           complexity_BxL=complexity_BxL if self.decider.reads_complexity else None)
    h0_BxLxD = self.network.embed(params['model'], tokens_BxL)
    if path == 'unroll':
      trajectory = recurrence.unroll(self.network, self.decider, params, h0_BxLxD, ctx,
                                     collect_states=collect_states, remat=self.model_cfg.remat)
    else:
      trajectory = recurrence.loop(self.network, self.decider, params, h0_BxLxD, ctx,
                                   valid_BxL=tokens_BxL != 0, collect_states=collect_states)
    logits_BxLxV = self.network.readout(params['model'], trajectory.state_BxLxD)
    return Output(logits_BxLxV, trajectory)

  def readout_every_iteration(self, params: dict, states_TxBxLxD: jax.Array) -> jax.Array:
    """Logits [T, B, L, V] of the coda applied to the state after every iteration."""
    return jax.vmap(lambda h: self.network.readout(params['model'], h))(states_TxBxLxD)


def num_params(tree) -> int:
  return sum(x.size for x in jax.tree.leaves(tree))

