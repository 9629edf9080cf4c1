"""SIGTERM as a request to checkpoint and stop at the next step boundary (preemptible jobs)."""

from __future__ import annotations

import signal

import jax
import numpy as np
from jax.experimental import multihost_utils


class Preempted(Exception):
  """SIGTERM arrived; a checkpoint of the step reached was saved."""


class PreemptionWatch:
  """Turns SIGTERM into a request the training loop checks at every step.

  With several processes, the request is shared every `every` steps (a tiny all-gather), so all
  processes stop — and save — at the same step.
  """

  def __init__(self, every: int):
    self.every = every
    self.requested = False
    self._previous = signal.signal(signal.SIGTERM, self._handle)

  def _handle(self, signum, frame):
    del signum, frame
    self.requested = True

  def should_stop(self, step: int) -> bool:
    if jax.process_count() == 1:
      return self.requested
    if step % self.every:
      return False
    return bool(np.any(multihost_utils.process_allgather(np.array(self.requested))))

  def close(self):
    signal.signal(signal.SIGTERM, self._previous)
