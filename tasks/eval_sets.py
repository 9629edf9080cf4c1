"""Fixed evaluation sets: a task's examples at chosen sizes, frozen as TFDS array_record datasets.

One builder, `AniraEvalSet`, whose config carries everything that decides the data: the task name
and options, the splits {name: sizes}, the seed and the number of examples per split. Example j of
split s is drawn from `np.random.default_rng([seed, crc32(s), j])`: its size uniformly from the
split's sizes, then `task.sample(rng, size)` with `task.annotate`'s analysis-only features — so
every example is reproducible on its own, and adding, removing or reordering splits never
changes another split's data.

The config name is `<task>-<12 hex digits>`, a hash of the canonical JSON of those parameters, so
two different sets never share a directory under one data_dir:

    <data_dir>/anira_eval_set/parity-3f2a9c0e1b7d/1.0.0/anira_eval_set-longer.array_record-00000-of-00001

Reading needs neither TensorFlow nor this module: `tfds.data_source('anira_eval_set/<config>',
data_dir=..., download=False)` rebuilds a read-only builder from the files, whose
`info.metadata` holds the parameters. Examples are stored in generation order (no shuffling).

TFDS without TensorFlow needs `importlib_resources` installed explicitly on Python 3.11, and its
builder classes must live in an importable module (not `__main__`), hence this file.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import re
import tempfile
import zlib
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import tensorflow_datasets as tfds

import tasks
from tasks import base

_NAME = 'anira_eval_set'
_VERSION = '1.0.0'
# Bump when the stored layout or the drawing rule changes: it is part of the config hash.
_FORMAT = 2  # 2: the `annotated` mask and `Task.annotate`'s features


def _split_key(split: str) -> int:
  """A stable 32-bit key per split name (Python's `hash` is salted per process)."""
  return zlib.crc32(split.encode('utf-8'))


def _canonical(task_name: str, task_options: Mapping[str, Any],
               splits: Mapping[str, Sequence[int]], seed: int,
               examples_per_split: int) -> dict[str, Any]:
  """The parameters as plain JSON types; sizes keep their order (it decides the draws).

  Options go through JSON, so a tuple option and the equal list hash alike and read back as the
  stored metadata does; options that are not JSON data raise here.
  """
  options = json.loads(json.dumps(dict(task_options), sort_keys=True))
  return dict(format=_FORMAT, task=task_name, options=options,
              splits={name: [int(s) for s in sizes] for name, sizes in splits.items()},
              seed=int(seed), examples_per_split=int(examples_per_split))


def config_name(task_name: str, task_options: Mapping[str, Any],
                splits: Mapping[str, Sequence[int]], seed: int, examples_per_split: int) -> str:
  """`<task>-<hash>`: equal exactly when the parameters are (sizes in order, keys in any order)."""
  params = _canonical(task_name, task_options, splits, seed, examples_per_split)
  text = json.dumps(params, sort_keys=True, separators=(',', ':'))
  return f'{task_name}-{hashlib.sha256(text.encode("utf-8")).hexdigest()[:12]}'


@dataclasses.dataclass(eq=False)
class EvalSetConfig(tfds.core.BuilderConfig):
  """One evaluation set; build with `EvalSetConfig.create`, which derives the name."""

  task_name: str = ''
  task_options: dict[str, Any] = dataclasses.field(default_factory=dict)
  splits: dict[str, tuple[int, ...]] = dataclasses.field(default_factory=dict)
  seed: int = 0
  examples_per_split: int = 0

  @classmethod
  def create(cls, task_name: str, task_options: Mapping[str, Any],
             splits: Mapping[str, Sequence[int]], seed: int,
             examples_per_split: int) -> EvalSetConfig:
    task = tasks.make(task_name, **task_options)  # unknown task or bad options raise here
    if not splits:
      raise ValueError('an evaluation set needs at least one split')
    if examples_per_split < 1:
      raise ValueError(f'examples_per_split must be >= 1, got {examples_per_split}')
    lo, hi = task.valid_sizes()
    for split, sizes in splits.items():
      if not re.fullmatch(r'\w+', split):
        raise ValueError(f'split name {split!r} must be letters, digits and underscores')
      if not sizes:
        raise ValueError(f'split {split!r} has no sizes')
      bad = [s for s in sizes if not lo <= s <= hi]
      if bad:
        raise ValueError(f'task {task_name!r} cannot generate sizes {bad} (split {split!r}); '
                         f'valid: {lo}..{hi}')
    params = _canonical(task_name, task_options, splits, seed, examples_per_split)
    return cls(name=config_name(task_name, task_options, splits, seed, examples_per_split),
               description=json.dumps(params, sort_keys=True),
               task_name=task_name, task_options=params['options'],
               splits={k: tuple(v) for k, v in params['splits'].items()},
               seed=params['seed'], examples_per_split=params['examples_per_split'])


def draw(task: base.Task, sizes: Sequence[int], seed: int, split: str,
         index: int) -> tuple[int, base.Example]:
  """Example `index` of `split`: (its size, the example), from its own generator."""
  rng = np.random.default_rng([seed, _split_key(split), index])
  size = int(rng.choice(np.asarray(sizes)))
  return size, task.annotate(task.sample(rng, size), sizes)


def _sequence(dtype) -> tfds.features.Tensor:
  return tfds.features.Tensor(shape=(None,), dtype=dtype)


class AniraEvalSet(tfds.core.GeneratorBasedBuilder):
  """Fixed examples of one anira task per split; configs come only from `EvalSetConfig.create`."""

  name = _NAME
  VERSION = tfds.core.Version(_VERSION)
  RELEASE_NOTES = {_VERSION: 'First release.'}
  BUILDER_CONFIGS = []  # every config is custom: its name is a hash of its parameters

  def _info(self) -> tfds.core.DatasetInfo:
    config = self.builder_config
    task = tasks.make(config.task_name, **config.task_options)
    vectors = ({'vectors': tfds.features.Tensor(shape=(None, task.vector_size), dtype=np.float32)}
               if task.vector_size else {})
    features = tfds.features.FeaturesDict({
        'tokens': _sequence(np.int32),
        'targets': _sequence(np.int32),
        'loss_mask': _sequence(np.bool_),
        'annotated': _sequence(np.bool_),
        'complexity': _sequence(np.float32),
        'size': tfds.features.Scalar(dtype=np.int32),
        'features': tfds.features.FeaturesDict(
            {name: _sequence(np.float32) for name in task.feature_names}),
        **vectors,
    })
    params = _canonical(config.task_name, config.task_options, config.splits, config.seed,
                        config.examples_per_split)
    return self.dataset_info_from_configs(
        description=f'anira_jax evaluation set of task {config.task_name!r}.',
        features=features,
        metadata=tfds.core.MetadataDict(params),
        disable_shuffling=True,  # stored order is generation order
    )

  def _split_generators(self, dl_manager):
    del dl_manager  # nothing to download
    return {split: self._generate_examples(split) for split in self.builder_config.splits}

  def _generate_examples(self, split: str):
    config = self.builder_config
    task = tasks.make(config.task_name, **config.task_options)
    for j in range(config.examples_per_split):
      size, ex = draw(task, config.splits[split], config.seed, split, j)
      record = dict(tokens=ex.tokens, targets=ex.targets, loss_mask=ex.loss_mask,
                    annotated=ex.annotated, complexity=ex.complexity, size=size,
                    features={name: ex.features[name] for name in task.feature_names})
      if task.vector_size:
        record['vectors'] = ex.vectors
      yield j, record


class _DropCustomConfigWarning(logging.Filter):
  """TFDS warns, with the whole config, whenever a config is not in BUILDER_CONFIGS: ours never are."""

  def filter(self, record: logging.LogRecord) -> bool:
    return not str(record.msg).startswith('Using custom data configuration')


@contextlib.contextmanager
def _quiet_custom_config():
  logger, drop = logging.getLogger('absl'), _DropCustomConfigWarning()
  logger.addFilter(drop)
  try:
    yield
  finally:
    logger.removeFilter(drop)


def build(task_name: str, task_options: Mapping[str, Any], splits: Mapping[str, Sequence[int]],
          seed: int, examples_per_split: int, data_dir: str) -> AniraEvalSet:
  """The builder of this evaluation set under `data_dir`, prepared (written only if absent).

  Nothing is downloaded and GCS is never asked; TFDS's scratch download folder is a temporary
  one, so `data_dir` holds only `anira_eval_set/`. Build from one process before many read it:
  TFDS writes into a temporary folder and renames it, but two concurrent writers may collide.
  """
  config = EvalSetConfig.create(task_name, task_options, splits, seed, examples_per_split)
  with _quiet_custom_config():
    builder = AniraEvalSet(config=config, data_dir=data_dir, file_format='array_record')
  with tempfile.TemporaryDirectory() as download_dir:
    builder.download_and_prepare(download_dir=download_dir,
                                 download_config=tfds.download.DownloadConfig(
                                     try_download_gcs=False,
                                     compute_stats=tfds.download.ComputeStatsMode.SKIP))
  return builder


def _examples(records: Sequence[Mapping[str, Any]],
              feature_names: Sequence[str]) -> list[base.Example]:
  return [base.Example(tokens=np.asarray(r['tokens'], np.int32),
                       targets=np.asarray(r['targets'], np.int32),
                       loss_mask=np.asarray(r['loss_mask'], bool),
                       annotated=np.asarray(r['annotated'], bool),
                       complexity=np.asarray(r['complexity'], np.float32),
                       features={n: np.asarray(r['features'][n], np.float32)
                                 for n in feature_names},
                       vectors=(np.asarray(r['vectors'], np.float32) if 'vectors' in r
                                else None))
          for r in records]


def load_batches(builder: tfds.core.DatasetBuilder, split: str, batch_size: int,
                 seq_len: int | None = None) -> Iterator[dict[str, Any]]:
  """The split's examples in stored order, as `tasks.base.make_batch` batches.

  Works on a builder from `build` or a read-only one (`tfds.builder(..., data_dir=...)`): the
  parameters are read from `builder.info.metadata`. `seq_len` defaults to
  `task.seq_len(max(split sizes))`. The final batch holds the remaining examples: it is smaller
  than `batch_size` (no padding rows) when the split size is not a multiple of it.
  """
  if batch_size < 1:
    raise ValueError(f'batch_size must be >= 1, got {batch_size}')
  params = builder.info.metadata
  task = tasks.make(params['task'], **params['options'])
  if seq_len is None:
    seq_len = task.seq_len(max(params['splits'][split]))
  source = builder.as_data_source(split=split)
  for start in range(0, len(source), batch_size):
    records = source.__getitems__(range(start, min(start + batch_size, len(source))))
    sizes = [int(r['size']) for r in records]
    yield base.make_batch(_examples(records, task.feature_names), sizes, seq_len,
                          task.feature_names)


def reference_examples(task_name: str, task_options: Mapping[str, Any],
                       splits: Mapping[str, Sequence[int]], seed: int, examples_per_split: int,
                       split: str) -> list[base.Example]:
  """The examples `build` stores in `split`, generated directly from the task (no TFDS)."""
  task = tasks.make(task_name, **task_options)
  return [draw(task, splits[split], seed, split, j)[1] for j in range(examples_per_split)]
