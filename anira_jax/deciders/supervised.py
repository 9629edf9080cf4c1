"""A supervised halting decider: taught the oracle's depths, run without them (the learned
counterpart of `oracle`).

The halting head and q are ANIRA-O's: λ_t = sigmoid(head(h_t)), q(t) = λ_t ∏_{s<t}(1 − λ_s).
In training every token runs the oracle's depth d* = 1 + (D−1)·min(c, c_max)/c_max for its
complexity c (the task's annotation, read only in training), and the head is trained by
classification: `weight` · mean over tokens of −log q(d*), i.e. "continue" at every t < d* and
"halt" at d* — a discrete-time survival likelihood. At inference the labels are not read: tokens
halt by the online rules (`rule`, default median), so the depth is what the head predicts from
the states it sees, and with a raised T it may run past D.
"""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp

from anira_jax import options
from anira_jax.deciders import base, online, scheduled


@dataclasses.dataclass(frozen=True)
class SupervisedOptions(base.HeadOptions, base.RuleOptions):
  weight: float = 1.0  # weight of the depth classification loss −log q(d*)
  max_complexity: float = 0.0  # complexity mapped to depth D; 0 = the largest training size

  def check(self, path: str) -> None:
    super().check(path)
    options.number(f'{path}.weight', self.weight, allow_minimum=True)
    options.number(f'{path}.max_complexity', self.max_complexity, allow_minimum=True)


class Supervised(online.Online):
  name = 'supervised'
  Options = SupervisedOptions
  learns_from_complexity = True

  @classmethod
  def resolve(cls, opts, train_sizes):
    return scheduled.Oracle.resolve(opts, train_sizes)

  def _rule(self, train: bool) -> str:
    return self.options.rule  # training runs the targets, never samples

  def start(self, params, h0_BxLxD, ctx):
    state = super().start(params, h0_BxLxD, ctx)
    if ctx.train:
      if ctx.complexity_BxL is None:
        raise ValueError('the supervised decider needs the complexity annotation in training')
      state['target'] = scheduled.complexity_depth(ctx.complexity_BxL,
                                                   self.options.max_complexity,
                                                   self.model.max_depth)
    return state

  def runs(self, state, t):
    if 'target' in state:  # training: the oracle's depth, no decision to learn through
      return (t <= state['target']).astype(jnp.float32)
    return super().runs(state, t)

  def finish(self, params, state, h_BxLxD, t_end, depth_BxL):
    decision = super().finish(params, state, h_BxLxD, t_end, depth_BxL)
    return decision._replace(target_BxL=state.get('target'))

  def regularizer(self, decision, depth_BxL, weight_BxL):
    if decision.target_BxL is None:
      return jnp.zeros((), jnp.float32), {}
    index_BxLx1 = (decision.target_BxL - 1)[..., None]
    q_target_BxL = jnp.take_along_axis(decision.q_BxLxT, index_BxLx1, axis=-1)[..., 0]
    nll = base.weighted_mean(-jnp.log(jnp.maximum(q_target_BxL, 1e-12)), weight_BxL)
    hit = base.weighted_mean((jnp.argmax(decision.q_BxLxT, -1) + 1 == decision.target_BxL)
                             .astype(jnp.float32), weight_BxL)
    return self.options.weight * nll, {'depth_nll': nll, 'depth_target_accuracy': hit}
