"""Readout convergence (zero-shot): a token stops once its readout stops changing.

After iteration t the coda and LM head read every token's current state (`reads_readout`), and a
running token halts when the change from the previous iteration's readout is below ε
(`threshold`), measured as (`measure`):
- `kl` (default): KL(p_{t-1} ‖ p_t) = Σ_v p_{t-1}(v) (log p_{t-1}(v) − log p_t(v)) < ε;
- `entropy`: |H(p_t) − H(p_{t-1})| < ε.
p_0 is uniform over the vocabulary, so iteration 1 compares with "knowing nothing". These are
the `kl` and `entropy-diff` exits of Huginn (Geiping et al. 2025, `raven_modeling_minimal.py`,
default ε = 1e-3), there per sequence at the last position, here per token.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from anira_jax import options
from anira_jax.deciders import stopping

MEASURES = ('kl', 'entropy')


@dataclasses.dataclass(frozen=True)
class ConvergenceOptions(stopping.StoppingOptions):
  threshold: float = 1e-3  # ε: stop once the readout changed less than this
  measure: str = 'kl'  # 'kl': KL(p_{t-1} ‖ p_t) | 'entropy': |H(p_t) − H(p_{t-1})|

  def check(self, path: str) -> None:
    super().check(path)
    options.choice(f'{path}.measure', self.measure, MEASURES)


def entropy(log_p_BxLxV: jax.Array) -> jax.Array:
  return -jnp.sum(jnp.exp(log_p_BxLxV) * log_p_BxLxV, -1)


class Convergence(stopping.Stopping):
  name = 'convergence'
  Options = ConvergenceOptions
  reads_readout = True
  sweep = (1e-2, 1e-3, 1e-4)

  def initial(self, h0_BxLxD, ctx):
    vocab = self.model.vocab_size
    return jnp.full((*h0_BxLxD.shape[:2], vocab), -jnp.log(jnp.float32(vocab)))

  def done(self, previous, h_BxLxD, logits_BxLxV):
    log_p_BxLxV = stopping.log_probs(logits_BxLxV)
    if self.options.measure == 'kl':
      change_BxL = jnp.sum(jnp.exp(previous) * (previous - log_p_BxLxV), -1)
    else:
      change_BxL = jnp.abs(entropy(log_p_BxLxV) - entropy(previous))
    return change_BxL < self.options.threshold, log_p_BxLxV
