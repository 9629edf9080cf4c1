"""State convergence (zero-shot): a token stops at a fixed point of the core.

A running token halts after iteration t when ‖h_t − h_{t−1}‖ / ‖h_t‖ < ε (`threshold`), norms
over the width, h_0 the prelude output: the `latent-diff` exit of Huginn (Geiping et al. 2025,
default ε = 0.03), there per sequence, here per token. It reads no readout, so it costs one norm
per iteration and no head call.
"""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp

from anira_jax.deciders import stopping


@dataclasses.dataclass(frozen=True)
class FixedPointOptions(stopping.StoppingOptions):
  threshold: float = 0.03  # ε: stop once the state moved less than this, relative to its norm


class FixedPoint(stopping.Stopping):
  name = 'fixed_point'
  Options = FixedPointOptions
  head_calls_per_iteration = 0
  sweep = (0.1, 0.03, 0.01)

  def initial(self, h0_BxLxD, ctx):
    return h0_BxLxD.astype(jnp.float32)

  def done(self, previous, h_BxLxD, logits_BxLxV):
    h_BxLxD = h_BxLxD.astype(jnp.float32)
    step_BxL = jnp.linalg.norm(h_BxLxD - previous, axis=-1)
    norm_BxL = jnp.maximum(jnp.linalg.norm(h_BxLxD, axis=-1), 1e-12)
    return step_BxL / norm_BxL < self.options.threshold, h_BxLxD
