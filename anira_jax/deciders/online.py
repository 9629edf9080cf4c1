"""ANIRA-O: online halting — each token decides after every iteration whether to stop [paper].

A head on the state h_t gives the conditional halting probability λ_t = P(halt at t | not
before), with λ_T ≡ 1, so q(t) = λ_t ∏_{s<t}(1 − λ_s). Training samples the halting step by
inverse CDF: with u ~ U(0, 1) per token, the token halts at the first t with CDF(t) >= u. The
straight-through estimator puts the survival S_{t-1} = P(depth >= t) behind the hard continue
mask, so the gradient flows into every λ_s that decided whether iteration t ran.

Inference rules (`decider.rule`):
- `median` (default, the paper's method section): halt at the first t with CDF(t) >= 1/2;
- `threshold` (p = `decider.threshold`): the first t with CDF(t) >= p — p trades accuracy for cost;
- `mode`: halt at the first t with q(t) >= S_t, i.e. λ_t >= 1/2: the first step no later step can
  outweigh. The exact argmax of q needs λ at every depth, which needs iterations a halted token
  never runs, so an online decider can only take this greedy form; it equals the argmax
  whenever q decreases after its peak.
- `sample`: the training rule, inverse-CDF sampling.
A halted token's frozen state keeps feeding the head, so q is defined on all of 1..T.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from anira_jax.deciders import base, early


@dataclasses.dataclass(frozen=True)
class OnlineOptions(base.HeadOptions, base.DepthPriorOptions, base.RuleOptions):
  pass


class Online(base.Halting):
  name = 'online'
  Options = OnlineOptions
  has_rule = True

  def _rule(self, train: bool) -> str:
    return 'sample' if train else self.options.rule

  def start(self, params, h0_BxLxD, ctx):
    shape = h0_BxLxD.shape[:2]
    rule = self._rule(ctx.train)
    if rule == 'sample':
      if ctx.key is None:
        raise ValueError(f'the {self.name} decider needs a key to sample halting steps')
      u_BxL = jax.random.uniform(ctx.key, shape, jnp.float32)
    else:
      u_BxL = jnp.full(shape, self.options.threshold if rule == 'threshold' else 0.5,
                       jnp.float32)
    return {'lam': jnp.zeros((*shape, ctx.max_depth), jnp.float32),
            'survival': jnp.ones(shape, jnp.float32),  # S_{t-1}, differentiable
            'halted': jnp.zeros(shape, bool),
            'u': u_BxL,
            # Scalars rather than Python flags, so the state is a pytree of arrays for scan/while.
            'greedy_mode': jnp.asarray(rule == 'mode'),
            'halts': jnp.asarray(not (ctx.train and self.step_loss))}

  def runs(self, state, t):
    survival = state['survival']
    # Parenthesised so the forward value is exactly 0 or 1. Without halting (PonderNet's
    # training) there is no decision to learn through, so no straight-through path either.
    straight_through = jnp.where(state['halts'], survival - jax.lax.stop_gradient(survival), 0.0)
    return (~state['halted']).astype(jnp.float32) + straight_through

  def observe(self, params, state, h_BxLxD, t, logits_BxLxV=None):
    max_depth = state['lam'].shape[-1]
    lam_BxL = jnp.where(t == max_depth, 1.0, self.halting_probability(params, h_BxLxD))
    survival = state['survival'] * (1.0 - lam_BxL)
    halt_BxL = jnp.where(state['greedy_mode'], lam_BxL >= 0.5,
                         1.0 - jax.lax.stop_gradient(survival) >= state['u'])
    halted = state['halted'] | (halt_BxL & state['halts']) | (t == max_depth)
    return {**state, 'lam': base.set_step(state['lam'], t, lam_BxL), 'survival': survival,
            'halted': halted}

  def finish(self, params, state, h_BxLxD, t_end, depth_BxL):
    # Iterations after t_end were not run because every token had halted: the scan would have
    # fed the head the same frozen states, so the rest of λ comes from the final state.
    lam_rest_BxL = self.halting_probability(params, h_BxLxD)
    steps_T = jnp.arange(1, state['lam'].shape[-1] + 1)
    lam_BxLxT = jnp.where(steps_T > t_end, lam_rest_BxL[..., None], state['lam'])
    return base.Decision(q_BxLxT=base.halting_distribution(lam_BxLxT),
                         head_calls_BxL=depth_BxL.astype(jnp.int32), readout_BxLxD=None)

  def regularizer(self, decision, depth_BxL, weight_BxL):
    return early.kl_regularizer(self.options, decision, weight_BxL)
