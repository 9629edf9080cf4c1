"""Training state and optimizer: everything a resumed run needs, as one pytree."""

from __future__ import annotations

import flax.struct
import jax
import jax.numpy as jnp
import ml_collections
import optax

from anira_jax.anira import Anira


@flax.struct.dataclass
class TrainState:
  step: jax.Array  # int32: optimizer updates applied
  params: dict
  opt_state: optax.OptState
  skipped_steps: jax.Array  # int32: steps whose loss or gradient was not finite (not applied)


def make_optimizer(train: ml_collections.ConfigDict) -> optax.GradientTransformation:
  """AdamW with linear warmup, cosine decay and global-norm clipping."""
  schedule = optax.warmup_cosine_decay_schedule(
      init_value=0.0, peak_value=train.learning_rate, warmup_steps=train.warmup_steps,
      decay_steps=train.steps, end_value=train.learning_rate * train.final_lr_fraction)
  return optax.chain(optax.clip_by_global_norm(train.grad_clip),
                     optax.adamw(schedule, b1=0.9, b2=0.98, weight_decay=train.weight_decay))


def create(anira: Anira, tx: optax.GradientTransformation, key: jax.Array) -> TrainState:
  params = anira.init(key)
  return TrainState(step=jnp.int32(0), params=params, opt_state=tx.init(params),
                    skipped_steps=jnp.int32(0))
