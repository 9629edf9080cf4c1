"""Depth tied to input size, T(n) (Fan et al. 2024, "Looped Transformers for Length
Generalization"): a baseline whose depth is given from outside, not decided.

Every token runs T(c) = ⌈slope · c + offset⌉ iterations (at least 1, at most the run's T), c its
complexity annotation: the number of inputs its answer combines (parity: the bits so far, so
slope 1 is Fan's T(n) = n per prefix; MANO: the tree's L). Unlike the oracle it is not scaled to
the trained D: with a raised T at evaluation, larger inputs get more iterations, as in Fan et
al.'s training and oracle stop. Training with it and evaluating with a zero-shot exit
(`confidence`, `fixed_point`) through `inspect` is their recipe without the oracle.
"""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp

from anira_jax import options
from anira_jax.deciders import scheduled


@dataclasses.dataclass(frozen=True)
class TiedOptions(options.Options):
  slope: float = 1.0  # iterations per unit of complexity
  offset: float = 0.0  # iterations added to every token

  def check(self, path: str) -> None:
    super().check(path)
    options.number(f'{path}.slope', self.slope, allow_minimum=True)
    options.number(f'{path}.offset', self.offset, minimum=float('-inf'))


class Tied(scheduled.Scheduled):
  name = 'tied'
  Options = TiedOptions
  reads_complexity = True

  def start(self, params, h0_BxLxD, ctx):
    if ctx.complexity_BxL is None:
      raise ValueError('the tied decider needs the batch complexity annotation')
    depth_BxL = jnp.ceil(self.options.slope * ctx.complexity_BxL + self.options.offset)
    depth_BxL = jnp.clip(depth_BxL, 1, ctx.max_depth).astype(jnp.int32)
    return self.schedule(depth_BxL, ctx.max_depth)
