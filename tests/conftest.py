"""Test-wide settings: fail on implicit rank promotion, and tiny shared model configs."""

import jax
import pytest

jax.config.update('jax_numpy_rank_promotion', 'raise')

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


@pytest.fixture(scope='session')
def all_deciders():
  return ALL_DECIDERS
