"""Test-wide settings: fail on implicit rank promotion, reuse freed host memory as launch.py does,
and tiny shared models. Tests that cover every decider parametrise over `deciders.DECIDERS`."""

import jax
import numpy as np

from anira_jax import host_memory

jax.config.update('jax_numpy_rank_promotion', 'raise')
host_memory.reuse_freed_memory()  # before the first computation creates JAX's CPU client

from anira_jax import deciders, options  # noqa: E402
from anira_jax.anira import Anira  # noqa: E402
from anira_jax.deciders import base, stopping  # noqa: E402
from anira_jax.model.config import ModelConfig  # noqa: E402

ALL_DECIDERS = tuple(sorted(deciders.DECIDERS))
# One decider per way of running the protocol, for the costlier tests beyond the ANIRA family's
# jitted equivalence tests (which take every decider): a schedule from complexity (oracle; fixed
# and tied are simpler schedules), a learned head decided up front (early), online halting with
# rules (online; supervised runs it at inference), ACT's readout mixture, PonderNet's
# per-iteration loss, and an exit that reads every iteration's readout (confidence;
# convergence and fixed_point take the same path).
PROTOCOL_CASES = ('act', 'confidence', 'early', 'online', 'oracle', 'ponder')


def tiny_model(**overrides) -> ModelConfig:
  fields = dict(vocab_size=5, width=16, num_heads=2, mlp_ratio=2, max_depth=4)
  fields.update(overrides)
  return ModelConfig(**fields)


# Thresholds of the zero-shot exits at which an untrained tiny model's tokens stop at different
# depths (the equivalence tests need depths that vary).
TINY_THRESHOLDS = {'confidence': 0.55, 'convergence': 0.03, 'fixed_point': 0.4}


def tiny_options(name: str, **overrides) -> options.Options:
  """The decider's options with a small head (and the oracle's c_max set to 3); zero-shot exits
  at `TINY_THRESHOLDS`."""
  cls = deciders.DECIDERS[name]
  fields = {'head_hidden': 8} if issubclass(cls.Options, base.HeadOptions) else {}
  if issubclass(cls, stopping.Stopping):
    fields['threshold'] = TINY_THRESHOLDS[name]
  fields.update(overrides)
  return cls.resolve(cls.Options(**fields), train_sizes=(3,))


def decides_per_token(name: str) -> bool:
  """Whether the decider gives tokens different depths in the equivalence tests (a learned head,
  complexity, or a zero-shot exit at `TINY_THRESHOLDS`)."""
  cls = deciders.DECIDERS[name]
  return (issubclass(cls.Options, base.HeadOptions) or cls.reads_complexity
          or issubclass(cls, stopping.Stopping))


def tiny_anira(name: str, model: ModelConfig | None = None, **decider_overrides) -> Anira:
  return Anira(model or tiny_model(), name, tiny_options(name, **decider_overrides))


def assert_same_on_real_tokens(out, ref, tokens, *, atol_logits: float, atol_q: float) -> None:
  """Two paths' logits, depths and q agree on every real (non-padding) token."""
  valid = np.asarray(tokens != 0)
  np.testing.assert_allclose(np.asarray(out.logits_BxLxV)[valid],
                             np.asarray(ref.logits_BxLxV)[valid], atol=atol_logits)
  np.testing.assert_array_equal(np.asarray(out.trajectory.depth_BxL)[valid],
                                np.asarray(ref.trajectory.depth_BxL)[valid])
  np.testing.assert_allclose(np.asarray(out.trajectory.decision.q_BxLxT)[valid],
                             np.asarray(ref.trajectory.decision.q_BxLxT)[valid], atol=atol_q)


def assert_one_line(excinfo, *fragments) -> None:
  """The raised error's message is one line and holds every fragment."""
  message = str(excinfo.value)
  assert '\n' not in message, message
  for fragment in fragments:
    assert str(fragment) in message, message
