"""Extrapolation ingredients of training: options of `config.train`, each off by default.

- random depth (`random_depth`): a depth cap drawn per batch or per example, uniform on
  `random_depth_min`..D, stops every token there whatever its decider says (Kuo et al. 2026:
  random iteration counts in training remove much of the seed-to-seed variance of
  extrapolation);
- per-iteration supervision (`iteration_loss` = w > 0): w · the mean cross-entropy of the
  readout after every iteration t = 1..T over answer tokens, with `iteration_loss_solvable`
  = r > 0 only over those whose complexity c says they are solvable by then, r · c <= t
  (Altabaa et al. 2025 supervise every iteration with the values of the nodes of that depth).

The others live where they belong: depth tied to input size is the `tied` decider, a raised
test-time depth is `eval.max_depth`, positions are `model.position`. `training.objective` applies
these two; with both off its step is exactly the step without them.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from anira_jax import options

RANDOM_DEPTH = ('none', 'batch', 'example')


@dataclasses.dataclass(frozen=True)
class Ingredients(options.Options):
  """`config.train`'s fields that change what a training step computes (see the module
  docstring); their defaults are the config's."""

  random_depth: str = 'none'  # 'none' | 'batch' | 'example': who shares one random depth cap
  random_depth_min: int = 1  # the cap is uniform on random_depth_min..model.max_depth
  iteration_loss: float = 0.0  # weight of the mean readout cross-entropy over iterations
  iteration_loss_solvable: float = 0.0  # r > 0: iteration t supervises tokens with r·c <= t

  def check(self, path: str) -> None:
    super().check(path)
    options.choice(f'{path}.random_depth', self.random_depth, RANDOM_DEPTH)
    options.integer(f'{path}.random_depth_min', self.random_depth_min, 1)
    options.number(f'{path}.iteration_loss', self.iteration_loss, allow_minimum=True)
    options.number(f'{path}.iteration_loss_solvable', self.iteration_loss_solvable,
                   allow_minimum=True)

  @classmethod
  def from_train(cls, train) -> 'Ingredients':
    """The options held in a `config.train` section (checked)."""
    return cls.from_section({k: train[k] for k in cls.defaults()}, 'train')


def depth_cap(opts: Ingredients, key: jax.Array, shape_BxL: tuple[int, int],
              max_depth: int) -> jax.Array | None:
  """int32 [B, L] random depth caps (one per batch or per row), or None when off."""
  if opts.random_depth == 'none':
    return None
  lo = min(opts.random_depth_min, max_depth)
  rows = 1 if opts.random_depth == 'batch' else shape_BxL[0]
  cap_Rx1 = jax.random.randint(key, (rows, 1), lo, max_depth + 1, jnp.int32)
  return jnp.broadcast_to(cap_Rx1, shape_BxL)


def iteration_mask(opts: Ingredients, answer_BxL: jax.Array, complexity_BxL: jax.Array,
                   max_depth: int) -> jax.Array:
  """float32 [T, B, L]: which answer tokens iteration t's readout is supervised on."""
  steps_Tx1x1 = jnp.arange(1, max_depth + 1, dtype=jnp.float32)[:, None, None]
  if opts.iteration_loss_solvable > 0:
    solvable_TxBxL = opts.iteration_loss_solvable * complexity_BxL[None] <= steps_Tx1x1
  else:
    solvable_TxBxL = jnp.ones((max_depth, *answer_BxL.shape), bool)
  return answer_BxL[None] * solvable_TxBxL.astype(jnp.float32)
