"""Procedural tasks with per-token difficulty annotations, by name."""

from tasks.base import PAD, Example, Generative, Stream, Task, make_batch
from tasks.brevo import BrevoTask
from tasks.clrs import ClrsTask
from tasks.lano import LanoTask
from tasks.mano import ManoTask
from tasks.parity import ParityTask
from tasks.text import TextTask

TASKS: dict[str, type[Task]] = {
    cls.name: cls for cls in (ParityTask, ManoTask, BrevoTask, ClrsTask, LanoTask, TextTask)
}


def make(name: str, **options) -> Task:
  """The task registered as `name`, built with its options (from `config.task.options`)."""
  if name not in TASKS:
    raise ValueError(f'unknown task {name!r}; known tasks: {", ".join(sorted(TASKS))}')
  return TASKS[name](**options)


__all__ = ['PAD', 'Example', 'Generative', 'Stream', 'Task', 'TASKS', 'TextTask', 'make',
           'make_batch']
