"""Adaptive Computation Time (Graves 2016), per token, for comparison.

After iteration n a token's halting unit is λ_n = sigmoid(head(h_n)); it stops at the first N
with Σ_{n<=N} λ_n >= 1 − ε (or at T). Its readout is the mean-field mixture Σ_n p_n h_n with
p_n = λ_n for n < N and the remainder R = 1 − Σ_{n<N} λ_n at N; the ponder cost N + R (gradient
through R) is added with weight τ = `decider.act_penalty`. ACT is deterministic, so training
and inference are the same computation. Other tokens see a halted token's last state h_N.
q is the halting distribution p.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from anira_jax import options
from anira_jax.deciders import base


@dataclasses.dataclass(frozen=True)
class ActOptions(base.HeadOptions):
  epsilon: float = 0.01  # halt once the cumulative halting probability reaches 1 - ε
  penalty: float = 0.001  # τ, the weight of the ponder cost N + R

  def check(self, path: str) -> None:
    super().check(path)
    options.open_unit(f'{path}.epsilon', self.epsilon)
    options.number(f'{path}.penalty', self.penalty, allow_minimum=True)


class Act(base.Halting):
  name = 'act'
  Options = ActOptions

  def start(self, params, h0_BxLxD, ctx):
    shape = h0_BxLxD.shape[:2]
    return {'cumulative': jnp.zeros(shape, jnp.float32),
            'halted': jnp.zeros(shape, bool),
            'p': jnp.zeros((*shape, ctx.max_depth), jnp.float32),
            'mixture': jnp.zeros(h0_BxLxD.shape, jnp.float32)}

  def runs(self, state, t):
    return (~state['halted']).astype(jnp.float32)

  def observe(self, params, state, h_BxLxD, t, logits_BxLxV=None):
    max_depth = state['p'].shape[-1]
    lam_BxL = self.halting_probability(params, h_BxLxD)
    ran_BxL = ~state['halted']
    cumulative = state['cumulative']
    halt_now = ran_BxL & ((cumulative + lam_BxL >= 1.0 - self.options.epsilon) | (t == max_depth))
    remainder_BxL = 1.0 - cumulative
    p_BxL = jnp.where(halt_now, remainder_BxL, jnp.where(ran_BxL, lam_BxL, 0.0))
    return {'cumulative': jnp.where(ran_BxL & ~halt_now, cumulative + lam_BxL, cumulative),
            'halted': state['halted'] | halt_now,
            'p': base.set_step(state['p'], t, p_BxL),
            'mixture': state['mixture'] + p_BxL[..., None] * h_BxLxD.astype(jnp.float32)}

  def finish(self, params, state, h_BxLxD, t_end, depth_BxL):
    return base.Decision(q_BxLxT=state['p'], head_calls_BxL=depth_BxL.astype(jnp.int32),
                         readout_BxLxD=state['mixture'])

  def halting_TxBxL(self, params, states_TxBxLxD, depth_BxL):
    # ACT's halting unit is never evaluated after a token's N.
    lam_TxBxL = jax.vmap(lambda h: self.halting_probability(params, h))(states_TxBxLxD)
    steps_T = jnp.arange(1, lam_TxBxL.shape[0] + 1)
    return jnp.where(steps_T[:, None, None] <= depth_BxL[None], lam_TxBxL, jnp.nan)

  def regularizer(self, decision, depth_BxL, weight_BxL):
    # p at the halting step N is the remainder R, so the ponder cost N + R reads it from q.
    index_BxLx1 = (depth_BxL - 1)[..., None]
    remainder_BxL = jnp.take_along_axis(decision.q_BxLxT, index_BxLx1, axis=-1)[..., 0]
    cost = base.weighted_mean(depth_BxL + remainder_BxL, weight_BxL)
    return self.options.penalty * cost, {'ponder_cost': cost}
