"""The train step: a pure function of (state, batch), jitted by the loop with shardings."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from anira_jax.anira import Anira
from anira_jax.ingredients import Ingredients
from anira_jax.train_state import TrainState
from anira_jax.training import objective


def gradients(params: dict, batch: dict, key: jax.Array, *, anira: Anira,
              accumulation_steps: int = 1,
              ingredients: Ingredients = Ingredients()) -> tuple[dict, dict]:
  """(grads, metrics) of the batch's loss, summed over `accumulation_steps` microbatches.

  Microbatch i takes rows i, i + A, i + 2A, ... (A = accumulation_steps): with the batch split
  over devices in contiguous blocks, every device keeps its own rows. Each microbatch's
  cross-entropy and regularizer are weighted by its share of the batch's answer and real tokens,
  so the sum is the whole batch's loss: the same gradient as one step on the whole batch (up to
  float rounding; stochastic deciders draw a different key per microbatch; the per-iteration
  loss of `ingredients` is weighted by real tokens, exact only without accumulation). Memory
  holds one microbatch's activations.
  """
  answers = jnp.maximum(jnp.sum(batch['loss_mask'].astype(jnp.float32)), 1.0)
  real = jnp.maximum(jnp.sum((batch['tokens'] != 0).astype(jnp.float32)), 1.0)

  def loss_fn(p, micro, micro_key):
    ce, reg, reg_metrics, sums = objective.loss_terms(anira, p, micro, micro_key,
                                                      ingredients)
    ce_share = jax.lax.stop_gradient(sums['answer_tokens'] / answers)
    reg_share = jax.lax.stop_gradient(sums['real_tokens'] / real)
    terms = (ce_share * ce, reg_share * reg,
             {name: reg_share * value for name, value in reg_metrics.items()})
    return terms[0] + terms[1], (terms, sums)

  grad_fn = jax.grad(loss_fn, has_aux=True)
  if accumulation_steps == 1:
    grads, (terms, sums) = grad_fn(params, batch, key)
  else:
    split = lambda x: jnp.swapaxes(
        x.reshape(x.shape[0] // accumulation_steps, accumulation_steps, *x.shape[1:]), 0, 1)
    micro_batches = jax.tree.map(split, batch)

    def accumulate(total, inputs):
      i, micro = inputs
      return jax.tree.map(jnp.add, total, grad_fn(params, micro, jax.random.fold_in(key, i))), None

    first = jax.tree.map(lambda x: x[0], micro_batches)
    zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype),
                         jax.eval_shape(grad_fn, params, first, key))
    (grads, (terms, sums)), _ = jax.lax.scan(
        accumulate, zeros, (jnp.arange(accumulation_steps), micro_batches))
  return grads, objective.report(*terms, sums)


def train_step(state: TrainState, batch: dict, *, anira: Anira, tx: optax.GradientTransformation,
               key: jax.Array, accumulation_steps: int = 1,
               ingredients: Ingredients = Ingredients()) -> tuple[TrainState, dict]:
  """One optimizer update. A non-finite loss or gradient leaves params and optimizer state
  untouched and is counted in `skipped_steps`, which is also returned with the metrics: the loop
  reads it a few steps later, without waiting for the step, and stops."""
  step_key = jax.random.fold_in(key, state.step)
  grads, metrics = gradients(state.params, batch, step_key, anira=anira,
                             accumulation_steps=accumulation_steps,
                             ingredients=ingredients)
  grad_norm = optax.tree.norm(grads)
  finite = jnp.isfinite(metrics['loss']) & jnp.isfinite(grad_norm)
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  keep = lambda new, old: jax.tree.map(lambda n, o: jnp.where(finite, n, o), new, old)
  new_state = TrainState(step=state.step + 1, params=keep(params, state.params),
                         opt_state=keep(opt_state, state.opt_state),
                         skipped_steps=state.skipped_steps + (~finite).astype(jnp.int32))
  return new_state, {**metrics, 'grad_norm': grad_norm, 'skipped_steps': new_state.skipped_steps}


def train_steps(state: TrainState, batches: dict, **step_options) -> tuple[TrainState, dict]:
  """`train_step` on each of k batches in turn (every leaf [k, B, ...]) within one `lax.scan`:
  k optimizer updates for one dispatch, so an accelerator is not left waiting for the host
  between small steps. The same updates as k calls (each step folds its own step number into the
  key). Returns the last step's metrics, as the loop reads them at the last step, with
  `skipped_steps_each` [k], the skip counter after each step, which names the first non-finite
  step of the k."""
  state, metrics = jax.lax.scan(
      lambda s, batch: train_step(s, batch, **step_options), state, batches)
  return state, {**jax.tree.map(lambda m: m[-1], metrics),
                 'skipped_steps_each': metrics['skipped_steps']}
