"""Zero-shot exits: a token stops once a score it computes after each iteration, with no learned
parameters, crosses a threshold (the base of `confidence`, `convergence` and `fixed_point`).

After iteration t a running token halts when t >= `min_depth` and its score says it is done, or
at t = T. Nothing is trained, so the rule is the same in training and at inference, and it
applies to any trained checkpoint (`inspect.Run.evaluate(..., decider=NAME, threshold=τ)`);
sweeping the threshold traces an accuracy–compute curve (`analysis.tradeoff`). q is the one-hot
of the executed depth (a hard rule has no other distribution over depths).
"""

from __future__ import annotations

import abc
import dataclasses

import jax
import jax.numpy as jnp

from anira_jax import options
from anira_jax.deciders import base


@dataclasses.dataclass(frozen=True)
class StoppingOptions(options.Options):
  threshold: float = 0.9  # where the score says "done" (its meaning is the decider's)
  min_depth: int = 1  # no token stops before this many iterations

  def check(self, path: str) -> None:
    super().check(path)
    options.number(f'{path}.threshold', self.threshold)
    options.integer(f'{path}.min_depth', self.min_depth, 1)


class Stopping(base.Decider):
  """Subclasses define `done` (and `initial` for what it compares against at t = 1)."""

  Options = StoppingOptions
  head_calls_per_iteration = 1  # readout (or score) evaluations per executed iteration

  @property
  def rule_label(self) -> str:
    return f'threshold={self.options.threshold:g}'

  def initial(self, h0_BxLxD: jax.Array, ctx: base.Context) -> jax.Array | None:
    """What the score of iteration 1 compares with (the previous readout or state); None if
    the score needs no memory."""
    del h0_BxLxD, ctx
    return None

  @abc.abstractmethod
  def done(self, previous, h_BxLxD: jax.Array, logits_BxLxV: jax.Array | None):
    """(bool [B, L]: the token is done after this iteration, what the next iteration compares
    with)."""

  def start(self, params, h0_BxLxD, ctx):
    shape = h0_BxLxD.shape[:2]
    return {'halted': jnp.zeros(shape, bool),
            'q': jnp.zeros((*shape, ctx.max_depth), jnp.float32),
            'previous': self.initial(h0_BxLxD, ctx)}

  def runs(self, state, t):
    return (~state['halted']).astype(jnp.float32)

  def observe(self, params, state, h_BxLxD, t, logits_BxLxV=None):
    max_depth = state['q'].shape[-1]
    done_BxL, previous = self.done(state['previous'], h_BxLxD, logits_BxLxV)
    halt_BxL = ~state['halted'] & ((done_BxL & (t >= self.options.min_depth)) | (t == max_depth))
    return {'halted': state['halted'] | halt_BxL,
            'q': base.set_step(state['q'], t, halt_BxL.astype(jnp.float32)),
            'previous': previous}

  def finish(self, params, state, h_BxLxD, t_end, depth_BxL):
    calls_BxL = (self.head_calls_per_iteration * depth_BxL).astype(jnp.int32)
    return base.Decision(q_BxLxT=state['q'], head_calls_BxL=calls_BxL, readout_BxLxD=None)


def log_probs(logits_BxLxV: jax.Array) -> jax.Array:
  return jax.nn.log_softmax(logits_BxLxV.astype(jnp.float32), -1)
