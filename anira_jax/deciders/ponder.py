"""PonderNet (Banino et al. 2021), for comparison.

The halting head and q are ANIRA-O's. Training runs every token through all T iterations and
minimises the q-weighted loss of the readout after each iteration, Σ_t q(t) L(y, ŷ_t) (the
recurrence collects every iteration's state for it), plus β · KL against a truncated geometric
prior with parameter λ_p. The paper's Eq. (3) is KL(q ‖ p_G), the default (`kl='q_prior'`); the
common reimplementations (labml, mildlyoverfitted: `nn.KLDivLoss(q.log(), p_G)`) compute
KL(p_G ‖ q), `kl='prior_q'`. Inference halts per token with
the online rules, so unlike training it freezes halted tokens: PonderNet's training does not
model the early exit it is evaluated with.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from anira_jax import options
from anira_jax.deciders import base, online

KL_DIRECTIONS = ('prior_q', 'q_prior')


@dataclasses.dataclass(frozen=True)
class PonderOptions(base.HeadOptions, base.RuleOptions):
  beta: float = 0.01  # weight of the KL term
  lambda_p: float = 0.2  # λ_p of the geometric prior
  kl: str = 'q_prior'  # 'q_prior': KL(q ‖ prior), the paper's | 'prior_q': reimplementations'

  def check(self, path: str) -> None:
    super().check(path)
    options.number(f'{path}.beta', self.beta, allow_minimum=True)
    options.open_unit(f'{path}.lambda_p', self.lambda_p)
    options.choice(f'{path}.kl', self.kl, KL_DIRECTIONS)


def geometric_prior(lambda_p: float, max_depth: int) -> jax.Array:
  """p_G(t) = λ_p (1 − λ_p)^{t−1}, renormalised on 1..T."""
  t_T = jnp.arange(max_depth, dtype=jnp.float32)
  p_T = lambda_p * (1.0 - lambda_p) ** t_T
  return p_T / jnp.sum(p_T)


class Ponder(online.Online):
  name = 'ponder'
  Options = PonderOptions
  step_loss = True

  def regularizer(self, decision, depth_BxL, weight_BxL):
    prior_T = geometric_prior(self.options.lambda_p, decision.q_BxLxT.shape[-1])
    if self.options.kl == 'prior_q':
      log_q = jnp.log(jnp.maximum(decision.q_BxLxT, 1e-30))
      prior_11T = prior_T[None, None]
      kl_BxL = jnp.sum(prior_11T * (jnp.log(prior_11T) - log_q), -1)
    else:
      kl_BxL = base.kl(decision.q_BxLxT, jnp.log(prior_T))
    kl = base.weighted_mean(kl_BxL, weight_BxL)
    return self.options.beta * kl, {'kl': kl}
