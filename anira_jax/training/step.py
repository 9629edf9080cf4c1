"""The jitted train and evaluation steps: pure functions of (state, batch)."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import optax

from anira_jax.anira import Anira
from anira_jax.deciders import base
from anira_jax.training import objective
from anira_jax.training.state import TrainState


def train_step(state: TrainState, batch: dict, *, anira: Anira, tx: optax.GradientTransformation,
               key: jax.Array) -> tuple[TrainState, dict]:
  """One optimizer update. A non-finite loss or gradient leaves params untouched and is counted
  in `skipped_steps`, which the loop checks before it saves anything."""
  step_key = jax.random.fold_in(key, state.step)
  grad_fn = jax.value_and_grad(functools.partial(objective.loss_and_metrics, anira),
                               has_aux=True)
  (loss, metrics), grads = grad_fn(state.params, batch, step_key)
  grad_norm = optax.tree.norm(grads)
  finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  keep = lambda new, old: jax.tree.map(lambda n, o: jnp.where(finite, n, o), new, old)
  new_state = TrainState(step=state.step + 1, params=keep(params, state.params),
                         opt_state=keep(opt_state, state.opt_state),
                         skipped_steps=state.skipped_steps + (~finite).astype(jnp.int32))
  return new_state, {**metrics, 'grad_norm': grad_norm}


def eval_step(params: dict, batch: dict, *, anira: Anira, max_depth: int | None = None) -> dict:
  """Per-token outcomes of the inference loop on one batch, for host-side aggregation."""
  out = anira.apply(params, batch['tokens'], train=False, complexity_BxL=batch['complexity'],
                    path='loop', max_depth=max_depth)
  q_BxLxT = out.trajectory.decision.q_BxLxT
  return {
      'correct': jnp.argmax(out.logits_BxLxV, -1) == batch['targets'],
      'depth': out.trajectory.depth_BxL,
      'expected_depth': base.expected_depth(q_BxLxT),
      'head_calls': out.trajectory.decision.head_calls_BxL,
      'iterations': out.trajectory.iterations,
  }
