"""Max-confidence exit (zero-shot): a token stops once its readout's top probability reaches τ.

After iteration t the coda and LM head read every token's current state (`reads_readout`); a
running token halts when max_v p_t(v) >= τ (`threshold`). The per-token, online form of the
maximum-confidence stop of Fan et al. 2024 ("Looped Transformers for Length Generalization"),
who pick the step whose decoded output has the lowest cross-entropy against itself; theirs needs
every step's output before choosing, so it cannot freeze a token that later tokens then read.
"""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp

from anira_jax import options
from anira_jax.deciders import stopping


@dataclasses.dataclass(frozen=True)
class ConfidenceOptions(stopping.StoppingOptions):
  threshold: float = 0.9  # τ: stop once the readout's top probability is at least this

  def check(self, path: str) -> None:
    super().check(path)
    options.open_unit(f'{path}.threshold', self.threshold)


class Confidence(stopping.Stopping):
  name = 'confidence'
  Options = ConfidenceOptions
  reads_readout = True
  sweep = (0.9, 0.99, 0.999)

  def done(self, previous, h_BxLxD, logits_BxLxV):
    top_BxL = jnp.max(jnp.exp(stopping.log_probs(logits_BxLxV)), -1)
    return top_BxL >= self.options.threshold, previous
