"""Test-wide settings: fail on implicit rank promotion, reuse freed host memory as launch.py does,
share compiled programs across the run, and tiny shared models. Tests that cover every decider
parametrise over `deciders.DECIDERS`."""

import os
import shutil
import tempfile

import jax
import numpy as np

from anira_jax import host_memory

jax.config.update('jax_numpy_rank_promotion', 'raise')
# The tests' programs are small and mostly run a few times: LLVM's optimisations would take half
# of their compile time and save less than they cost (a tiny train step: 7 s to compile at the
# default level, 3.5 s here, 10 ms -> 24 ms a step). Results differ from the default level's by
# float rounding at most (no fast-math either way), which the tolerances allow.
_FAST_COMPILE = '--xla_backend_optimization_level=0'
if _FAST_COMPILE not in os.environ.get('XLA_FLAGS', ''):  # xdist workers inherit it
  os.environ['XLA_FLAGS'] = f"{os.environ.get('XLA_FLAGS', '')} {_FAST_COMPILE}".strip()
host_memory.reuse_freed_memory()  # before the first computation creates JAX's CPU client

from anira_jax import deciders, options  # noqa: E402
from anira_jax.anira import Anira  # noqa: E402
from anira_jax.deciders import base, stopping  # noqa: E402
from anira_jax.model.config import ModelConfig  # noqa: E402

# One on-disk compilation cache for the whole run. Both xdist workers and every process a test
# starts (launch.py runs, the eight-device scripts) inherit it through the environment, so a program
# compiled once (the parity train step, the small configs' evaluation steps) is read back elsewhere
# instead of compiled again (an entry read while another process still writes it is, at worst, a
# JAX warning and a fresh compile). Each run starts with an empty cache and removes it at the end;
# a cache the caller set up is used as it is.
_CACHE_DIR = 'JAX_COMPILATION_CACHE_DIR'
_OWN_CACHE = '_ANIRA_TEST_OWNS_XLA_CACHE'
_CACHE_MIN_SECONDS = 0.2  # programs that compile faster are not worth a file


def pytest_configure(config):
  if hasattr(config, 'workerinput') or os.environ.get(_CACHE_DIR):
    return  # an xdist worker (its controller set the cache up), or the caller's own cache
  cache = tempfile.mkdtemp(prefix='anira_jax_test_xla_')
  os.environ.update({_CACHE_DIR: cache, _OWN_CACHE: cache,
                     'JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS': str(_CACHE_MIN_SECONDS)})
  jax.config.update('jax_compilation_cache_dir', cache)
  jax.config.update('jax_persistent_cache_min_compile_time_secs', _CACHE_MIN_SECONDS)


def pytest_unconfigure(config):
  if not hasattr(config, 'workerinput') and os.environ.get(_OWN_CACHE):
    shutil.rmtree(os.environ.pop(_OWN_CACHE), ignore_errors=True)


def eight_device_env(**extra: str) -> dict[str, str]:
  """The environment of a test's subprocess that simulates 8 CPU devices, with this run's XLA
  flags and compilation cache."""
  flags = f"{os.environ.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count=8".strip()
  return {**os.environ, 'XLA_FLAGS': flags, **extra}


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
