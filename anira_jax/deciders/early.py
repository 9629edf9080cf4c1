"""ANIRA-E: each token's depth is decided once, from its shallow representation h0 [paper].

A head on h0 gives logits over depths 1..D. Training draws a hard depth with straight-through
Gumbel-softmax: the forward pass uses the one-hot sample y, the backward pass the relaxed sample.
The sample reaches the recurrence as the continue mask cont[t] = Σ_{d>=t} y_d, so the gradient
tells the head what one more (or one less) iteration of the core would have changed — the
training unroll computes the core for every token anyway. Inference takes the mode.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from anira_jax import options
from anira_jax.deciders import base, scheduled


@dataclasses.dataclass(frozen=True)
class EarlyOptions(base.HeadOptions, base.DepthPriorOptions):
  gumbel_temperature: float = 1.0  # temperature of the training-time Gumbel-softmax

  def check(self, path: str) -> None:
    super().check(path)
    options.number(f'{path}.gumbel_temperature', self.gumbel_temperature)


class Early(scheduled.Scheduled):
  name = 'early'
  Options = EarlyOptions
  head_calls_per_token = 1

  def head(self) -> base.Head:
    # Deep start: logits rise linearly to +init_depth_bias at depth D, so the untrained decider
    # runs deep rather than collapsing to depth 1.
    depths = self.model.max_depth
    bias = self.options.init_depth_bias * jnp.linspace(0.0, 1.0, depths)
    return base.Head(self.options.head_hidden, depths, bias)

  def start(self, params, h0_BxLxD, ctx):
    logits_BxLxD = self.head().apply({'params': params}, h0_BxLxD)
    # Only trained depths can be chosen; a raised T at evaluation pads q with zeros.
    pad = [(0, 0), (0, 0), (0, ctx.max_depth - self.model.max_depth)]
    q_BxLxT = jnp.pad(jax.nn.softmax(logits_BxLxD), pad)
    if ctx.train:
      gumbel = jax.random.gumbel(ctx.key, logits_BxLxD.shape, jnp.float32)
      soft = jax.nn.softmax((logits_BxLxD + gumbel) / self.options.gumbel_temperature)
      hard = jax.nn.one_hot(jnp.argmax(soft, -1), soft.shape[-1], dtype=jnp.float32)
      y_BxLxD = hard + (soft - jax.lax.stop_gradient(soft))  # forward: exactly `hard`
    else:
      y_BxLxD = jax.nn.one_hot(jnp.argmax(logits_BxLxD, -1), logits_BxLxD.shape[-1])
    return {'cont': scheduled.continue_mask(jnp.pad(y_BxLxD, pad)), 'q': q_BxLxT}

  def regularizer(self, decision, depth_BxL, weight_BxL):
    return kl_regularizer(self.options, decision, weight_BxL)


def kl_regularizer(opts: base.DepthPriorOptions, decision: base.Decision, weight_BxL: jax.Array):
  """The paper's depth term for ANIRA-E and ANIRA-O: γ · mean_i KL(q_i ‖ p_b)."""
  log_prior_T = base.log_geometric_prior(opts.prior_base, decision.q_BxLxT.shape[-1])
  kl = base.weighted_mean(base.kl(decision.q_BxLxT, log_prior_T), weight_BxL)
  return opts.gamma * kl, {'kl': kl}
