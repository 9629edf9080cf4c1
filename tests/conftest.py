"""Test-wide settings: fail on implicit rank promotion, reuse freed host memory as launch.py does,
and tiny shared model configs."""

import jax
import numpy as np
import pytest

from anira_jax import host_memory

jax.config.update('jax_numpy_rank_promotion', 'raise')
host_memory.reuse_freed_memory()  # before the first computation creates JAX's CPU client

from anira_jax.config import DeciderConfig, ModelConfig  # noqa: E402

ALL_DECIDERS = ('fixed', 'early', 'online', 'act', 'ponder', 'oracle')


def tiny_model(**overrides) -> ModelConfig:
  fields = dict(vocab_size=5, width=16, num_heads=2, mlp_ratio=2, max_depth=4)
  fields.update(overrides)
  return ModelConfig(**fields)


def tiny_decider(name: str, **overrides) -> DeciderConfig:
  fields = dict(name=name, head_hidden=8, oracle_max_complexity=3.0)
  fields.update(overrides)
  return DeciderConfig(**fields)


def assert_same_on_real_tokens(out, ref, tokens, *, atol_logits: float, atol_q: float) -> None:
  """Two paths' logits, depths and q agree on every real (non-padding) token."""
  valid = np.asarray(tokens != 0)
  np.testing.assert_allclose(np.asarray(out.logits_BxLxV)[valid],
                             np.asarray(ref.logits_BxLxV)[valid], atol=atol_logits)
  np.testing.assert_array_equal(np.asarray(out.trajectory.depth_BxL)[valid],
                                np.asarray(ref.trajectory.depth_BxL)[valid])
  np.testing.assert_allclose(np.asarray(out.trajectory.decision.q_BxLxT)[valid],
                             np.asarray(ref.trajectory.decision.q_BxLxT)[valid], atol=atol_q)


@pytest.fixture(scope='session')
def all_deciders():
  return ALL_DECIDERS
