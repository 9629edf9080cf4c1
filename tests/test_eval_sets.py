"""Evaluation sets round-trip through TFDS array_record exactly, without TensorFlow."""

import os

import numpy as np
import pytest
import tensorflow_datasets as tfds

import tasks
from tasks import base, eval_sets

SPLITS = {'train_range': (1, 2, 3, 4), 'longer': (6, 7, 8)}
COUNT = 20
SEED = 0
FIELDS = ('tokens', 'targets', 'loss_mask', 'annotated', 'complexity')


def _size_from_example(task_name, options, ex):
  """Each example's size, recovered from its tokens independently of the sampler."""
  if task_name == 'mano':  # <bos>, a marker, 2L + 1 prefix tokens, a marker, the answer
    return (len(ex['tokens']) - 5) // 2
  if task_name == 'lano':  # terminals between <bos> and <eos>: 2-3, 6-9, 12-27, 30+ by height
    return int(np.searchsorted([3, 9, 27], len(ex['tokens']) - 2) + 1)
  if options.get('layout') == 'ponder':
    return int(np.sum(ex['tokens'] != 1))  # entries set to +1 or -1 (token 1 is '0')
  if options.get('layout') == 'vector':
    return int(np.sum(ex['vectors'] != 0))  # the same entries, read as one vector
  return len(ex['tokens'])


CASES = [
    ('parity', {}, SPLITS),
    ('parity', {'layout': 'ponder', 'ponder_length': 16}, SPLITS),
    ('parity', {'layout': 'vector', 'ponder_length': 16}, SPLITS),
    ('mano', {}, {'train_range': (1, 2, 3, 5), 'longer': (9, 12)}),
    # LANO's parse and Bayes features come from `Task.annotate`.
    ('lano', {}, {'train_range': (1, 2), 'longer': (2, 3)}),
]


@pytest.mark.parametrize('task_name,options,splits', CASES)
def test_stored_examples_equal_reference(tmp_path, task_name, options, splits):
  builder = eval_sets.build(task_name, options, splits, SEED, COUNT, str(tmp_path))
  task = tasks.make(task_name, **options)
  name = f'anira_eval_set/{builder.builder_config.name}'
  # Read from the files alone (a read-only builder), as a consumer without this module would.
  sources = tfds.data_source(name, data_dir=str(tmp_path), download=False)
  assert set(sources) == set(splits)
  assert builder.info.metadata['splits'] == {k: list(v) for k, v in splits.items()}
  for split, sizes in splits.items():
    reference = eval_sets.reference_examples(task_name, options, splits, SEED, COUNT, split)
    stored = list(sources[split])  # stored order must be generation order
    assert len(stored) == len(reference) == COUNT
    for record, ex in zip(stored, reference):
      assert ('vectors' in record) == (ex.vectors is not None)
      for field in FIELDS + (('vectors',) if ex.vectors is not None else ()):
        expected = getattr(ex, field)
        assert record[field].dtype == expected.dtype, field
        np.testing.assert_array_equal(record[field], expected, err_msg=field)
      assert set(record['features']) == set(task.feature_names)
      for feature in task.feature_names:
        assert record['features'][feature].dtype == np.float32
        np.testing.assert_array_equal(record['features'][feature], ex.features[feature])
      assert record['size'] in sizes
      assert record['size'] == _size_from_example(task_name, options, record)
    assert len({int(r['size']) for r in stored}) > 1  # sizes are drawn, not fixed


@pytest.mark.parametrize('task_name,options,splits', CASES)
def test_load_batches_equal_make_batch(tmp_path, task_name, options, splits):
  builder = eval_sets.build(task_name, options, splits, SEED, COUNT, str(tmp_path))
  task = tasks.make(task_name, **options)
  read_only = tfds.builder(f'anira_eval_set/{builder.builder_config.name}',
                           data_dir=str(tmp_path))
  for split, sizes in splits.items():
    reference = eval_sets.reference_examples(task_name, options, splits, SEED, COUNT, split)
    ref_sizes = [_size_from_example(task_name, options, dict(tokens=ex.tokens,
                                                             vectors=ex.vectors))
                 for ex in reference]
    for source, seq_len in [(builder, None), (read_only, None), (builder, 40)]:
      batches = list(eval_sets.load_batches(source, split, batch_size=8, seq_len=seq_len))
      assert [len(b['size']) for b in batches] == [8, 8, 4]  # last batch smaller, not padded
      length = seq_len or task.seq_len(max(sizes))
      for i, batch in enumerate(batches):
        chunk = slice(8 * i, 8 * i + 8)
        expected = base.make_batch(reference[chunk], ref_sizes[chunk], length,
                                   task.feature_names)
        assert batch.keys() == expected.keys()
        assert batch['features'].keys() == expected['features'].keys()
        for key in (*FIELDS, 'size', *(('vectors',) if 'vectors' in expected else ())):
          assert batch[key].dtype == expected[key].dtype, key
          np.testing.assert_array_equal(batch[key], expected[key], err_msg=key)
        for feature in task.feature_names:
          assert batch['features'][feature].dtype == expected['features'][feature].dtype
          np.testing.assert_array_equal(batch['features'][feature],
                                        expected['features'][feature])


def _files(root):
  return {os.path.relpath(os.path.join(d, f), root): os.stat(os.path.join(d, f)).st_mtime_ns
          for d, _, files in os.walk(root) for f in files}


def test_building_again_reuses_the_files(tmp_path):
  first = eval_sets.build('parity', {}, SPLITS, SEED, COUNT, str(tmp_path))
  before = _files(tmp_path)
  assert any(f.endswith('.array_record-00000-of-00001') for f in before)
  assert not (tmp_path / 'downloads').exists()  # TFDS's scratch folder stays out of data_dir
  again = eval_sets.build('parity', {}, dict(reversed(SPLITS.items())), SEED, COUNT,
                          str(tmp_path))  # same parameters, keys in another order
  assert again.builder_config.name == first.builder_config.name
  assert _files(tmp_path) == before  # nothing written, nothing touched


def test_parameters_name_the_set(tmp_path):
  base_args = ('parity', {}, SPLITS, SEED, COUNT)
  name = eval_sets.config_name(*base_args)
  assert name.startswith('parity-')
  variants = [
      ('parity', {'layout': 'ponder'}, SPLITS, SEED, COUNT),
      ('parity', {}, {**SPLITS, 'longer': (6, 7, 9)}, SEED, COUNT),
      ('parity', {}, {**SPLITS, 'longer': (8, 7, 6)}, SEED, COUNT),  # order decides the draws
      ('parity', {}, SPLITS, SEED + 1, COUNT),
      ('parity', {}, SPLITS, SEED, COUNT + 1),
      ('mano', {}, SPLITS, SEED, COUNT),
  ]
  names = {eval_sets.config_name(*args) for args in variants}
  assert name not in names and len(names) == len(variants)

  first = eval_sets.build(*base_args, str(tmp_path))
  other = eval_sets.build('parity', {}, SPLITS, SEED + 1, COUNT, str(tmp_path))
  assert other.builder_config.name != first.builder_config.name
  for split in SPLITS:  # both sets live side by side; their data differ
    a = first.as_data_source(split)
    b = other.as_data_source(split)
    assert any(len(a[j]['tokens']) != len(b[j]['tokens'])
               or np.any(a[j]['tokens'] != b[j]['tokens']) for j in range(COUNT))
    # ... and each still matches its own reference
    ref = eval_sets.reference_examples('parity', {}, SPLITS, SEED + 1, COUNT, split)
    for j in range(COUNT):
      np.testing.assert_array_equal(b[j]['tokens'], ref[j].tokens)


def test_splits_are_independent_of_each_other():
  alone = eval_sets.reference_examples('parity', {}, {'longer': SPLITS['longer']}, SEED, COUNT,
                                       'longer')
  together = eval_sets.reference_examples('parity', {}, SPLITS, SEED, COUNT, 'longer')
  for a, b in zip(alone, together):
    np.testing.assert_array_equal(a.tokens, b.tokens)


def test_bad_parameters_raise():
  with pytest.raises(ValueError, match='cannot generate sizes'):
    eval_sets.EvalSetConfig.create('parity', {'layout': 'ponder', 'ponder_length': 8},
                                   {'longer': (6, 9)}, SEED, COUNT)
  with pytest.raises(ValueError, match='split name'):
    eval_sets.EvalSetConfig.create('parity', {}, {'held-out': (3,)}, SEED, COUNT)
  with pytest.raises(ValueError, match='unknown task'):
    eval_sets.EvalSetConfig.create('nope', {}, SPLITS, SEED, COUNT)
