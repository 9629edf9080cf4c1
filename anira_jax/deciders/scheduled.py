"""Deciders that fix every token's depth before iteration 1 (fixed, oracle, early).

Their whole schedule is a continue mask cont[t] = P(depth >= t) known up front, which is also
what lets compacted inference plan its buffers before the recurrence starts.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from anira_jax import options
from anira_jax.deciders import base


def continue_mask(y_BxLxT: jax.Array) -> jax.Array:
  """cont[..., t-1] = Σ_{d >= t} y_d: 1 while a token with depth distribution y still runs."""
  return jnp.flip(jnp.cumsum(jnp.flip(y_BxLxT, -1), -1), -1)


class Scheduled(base.Decider):
  """A decider whose state is {'cont': [B, L, T] continue mask, 'q': [B, L, T]}."""

  head_calls_per_token = 0

  def runs(self, state, t):
    return base.at_step(state['cont'], t)

  def finish(self, params, state, h_BxLxD, t_end, depth_BxL):
    calls_BxL = jnp.full(depth_BxL.shape, self.head_calls_per_token, jnp.int32)
    return base.Decision(q_BxLxT=state['q'], head_calls_BxL=calls_BxL, readout_BxLxD=None)

  @staticmethod
  def schedule(depth_BxL: jax.Array, max_depth: int) -> base.State:
    y_BxLxT = base.one_hot_depth(depth_BxL, max_depth)
    return {'cont': continue_mask(y_BxLxT), 'q': y_BxLxT}


class Fixed(Scheduled):
  """Every token runs all T iterations: the fixed-depth baseline."""

  name = 'fixed'

  def start(self, params, h0_BxLxD, ctx):
    depth_BxL = jnp.full(h0_BxLxD.shape[:2], ctx.max_depth, jnp.int32)
    return self.schedule(depth_BxL, ctx.max_depth)


@dataclasses.dataclass(frozen=True)
class OracleOptions(options.Options):
  max_complexity: float = 0.0  # complexity mapped to depth D; 0 = the largest training size

  def check(self, path: str) -> None:
    super().check(path)
    options.number(f'{path}.max_complexity', self.max_complexity, allow_minimum=True)


class Oracle(Scheduled):
  """Depth from the task's complexity annotation: 1 + (D-1)·min(c, c_max)/c_max, rounded down.

  An analysis tool, not a learned decider: it shows what allocation that tracks ground-truth
  difficulty buys. c_max is `max_complexity` (by default the largest training size, filled in
  by `resolve`). Depths never exceed the trained D.
  """

  name = 'oracle'
  Options = OracleOptions
  reads_complexity = True

  @classmethod
  def resolve(cls, opts, train_sizes):
    if opts.max_complexity:
      return opts
    return dataclasses.replace(opts, max_complexity=float(max(train_sizes)))

  def start(self, params, h0_BxLxD, ctx):
    if ctx.complexity_BxL is None:
      raise ValueError('the oracle decider needs the batch complexity annotation')
    depth_BxL = complexity_depth(ctx.complexity_BxL, self.options.max_complexity,
                                 self.model.max_depth)
    return self.schedule(depth_BxL, ctx.max_depth)


def complexity_depth(complexity_BxL: jax.Array, max_complexity: float,
                     max_depth: int) -> jax.Array:
  """The oracle's depth for a complexity: 1 + (D-1)·min(c, c_max)/c_max, rounded down (int32;
  also the supervised decider's target)."""
  frac_BxL = jnp.clip(complexity_BxL / max_complexity, 0.0, 1.0)
  return 1 + jnp.floor((max_depth - 1) * frac_BxL).astype(jnp.int32)
