"""The whole model: network + decider + recurrence, as pure functions of one parameter tree.

    params = {'model': network params, 'decider': decision-head params}

`apply` is what training, evaluation and inspection call; `path` picks the training unroll
(`lax.scan`) or the inference loop (`lax.while_loop`).
"""

from __future__ import annotations

from typing import NamedTuple

import jax

from anira_jax import deciders, options, recurrence
from anira_jax import model as model_lib
from anira_jax.model.config import ModelConfig

PATHS = ('unroll', 'loop')


class Output(NamedTuple):
  logits_BxLxV: jax.Array  # float32
  trajectory: recurrence.Trajectory


class Anira:
  """One ModelConfig and one decider (its registry name and options); holds no parameters."""

  def __init__(self, model: ModelConfig, decider: str,
               decider_options: options.Options | None = None):
    self.model_cfg = model
    self.network = model_lib.make_network(model)
    self.decider = deciders.make(decider, model, decider_options)

  def init(self, key: jax.Array) -> dict:
    k_model, k_decider = jax.random.split(key)
    return {'model': self.network.init(k_model), 'decider': self.decider.init(k_decider)}

  def apply(self, params: dict, tokens_BxL: jax.Array, *, train: bool, key: jax.Array | None = None,
            complexity_BxL: jax.Array | None = None, path: str = 'unroll',
            max_depth: int | None = None, collect_states: bool = False,
            depth_cap_BxL: jax.Array | None = None,
            vectors_BxLxF: jax.Array | None = None) -> Output:
    """Logits and the per-token trajectory for a batch of token ids.

    `max_depth` raises (or lowers) T at evaluation; the trained D is the default. Padding
    (token 0) never keeps the inference loop running. `depth_cap` (training's random depth)
    stops each token after that many iterations whatever the decider says. `vectors` are the
    task's real-valued inputs per position, for a model with `vector_size` > 0.
    """
    if path not in PATHS:
      raise ValueError(f'path={path!r}; choose one of {PATHS}')
    ctx = recurrence.context(self.decider, self.model_cfg, train=train, key=key,
                             complexity_BxL=complexity_BxL, max_depth=max_depth,
                             depth_cap_BxL=depth_cap_BxL)
    h0_BxLxD = self.network.embed(params['model'], tokens_BxL, vectors_BxLxF)
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
