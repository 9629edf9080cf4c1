"""The parity stream: labels by brute force, determinism, hosts, layouts."""

import jax
import numpy as np
import pytest

import tasks
from conftest import tiny_anira, tiny_model

ZERO, ONE, MINUS_ONE, BOS = 1, 2, 3, 4


def test_prefix_labels_and_annotations_by_brute_force():
  task = tasks.make('parity')
  rng = np.random.default_rng(0)
  for size in range(1, 20):
    ex = task.sample(rng, size)
    bits = [1 if t == ONE else 0 for t in ex.tokens]
    assert set(ex.tokens.tolist()) <= {ZERO, ONE} and len(bits) == size
    for i in range(size):
      assert ex.targets[i] == (ONE if sum(bits[:i + 1]) % 2 else ZERO)
      assert ex.features['ones_so_far'][i] == sum(bits[:i + 1])
      assert ex.complexity[i] == ex.features['position'][i] == i + 1
    assert ex.loss_mask.all()


def test_ponder_layout_by_brute_force():
  task = tasks.make('parity', layout='ponder')
  rng = np.random.default_rng(1)
  for size in (1, 17, 48, 96):
    ex = task.sample(rng, size)
    assert len(ex.tokens) == 96 and np.sum(ex.tokens != ZERO) == size
    assert ex.loss_mask.tolist() == [False] * 95 + [True]
    assert ex.targets[-1] == (ONE if np.sum(ex.tokens == ONE) % 2 else ZERO)
    assert ex.complexity[-1] == size and ex.complexity[0] == (ex.tokens[0] != ZERO)


def test_vector_layout_is_the_ponder_layouts_vector_at_one_position():
  """The same draws give the same entries: the vector layout's one position reads them all and
  carries the ponder layout's last target, complexity and count (brute force on the vector)."""
  ponder, vector = (tasks.make('parity', layout=layout) for layout in ('ponder', 'vector'))
  assert vector.vector_size == 96 and ponder.vector_size == 0 and vector.seq_len(48) == 1
  assert vector.vocab[BOS] == '<s>'
  for size in (1, 17, 48, 96):
    ex_p, ex_v = (task.sample(np.random.default_rng(size), size) for task in (ponder, vector))
    entries = ex_v.vectors[0]
    assert ex_v.vectors.shape == (1, 96) and ex_v.vectors.dtype == np.float32
    np.testing.assert_array_equal(entries, np.select([ex_p.tokens == ONE, ex_p.tokens == MINUS_ONE],
                                                     [1, -1], 0))
    assert np.sum(entries != 0) == size
    assert ex_v.tokens.tolist() == [BOS] and ex_v.loss_mask.tolist() == [True]
    assert ex_v.targets[0] == ex_p.targets[-1] == (ONE if np.sum(entries == 1) % 2 else ZERO)
    assert ex_v.complexity[0] == ex_p.complexity[-1] == size
    assert ex_v.features['ones_so_far'][0] == np.sum(entries == 1)


def test_a_batch_of_vector_examples_pads_the_vectors_with_zeros():
  task = tasks.make('parity', layout='vector', ponder_length=8)
  rng = np.random.default_rng(0)
  examples = [task.sample(rng, size) for size in (2, 7)]
  batch = tasks.make_batch(examples, [2, 7], seq_len=3, feature_names=task.feature_names)
  assert batch['vectors'].shape == (2, 3, 8) and batch['vectors'].dtype == np.float32
  for b, ex in enumerate(examples):
    np.testing.assert_array_equal(batch['vectors'][b, 0], ex.vectors[0])
    assert not batch['vectors'][b, 1:].any()
  assert 'vectors' not in tasks.make_batch([tasks.make('parity').sample(rng, 3)], [3], 3,
                                           ('ones_so_far', 'position'))
  with pytest.raises(ValueError, match='some examples carry vectors'):
    tasks.make_batch([examples[0], tasks.make('parity').sample(rng, 1)], [2, 1], 3, ())
  with pytest.raises(ValueError, match=r'vectors has shape \(8,\)'):
    tasks.Example(tokens=np.ones(1, np.int32), targets=np.ones(1, np.int32),
                  loss_mask=np.ones(1, bool), complexity=np.ones(1, np.float32), features={},
                  vectors=np.zeros(8, np.float32))


@pytest.mark.parametrize('layout,bos', [('ponder', False), ('ponder', True), ('vector', False)])
def test_a_stream_of_ponder_vectors_draws_whole_batches_right_by_brute_force(layout, bos):
  """The PonderNet layouts draw a batch with array operations (`ParityTask.sample_batch`), not
  through `sample`: every row checked against its own entries, padding to a longer seq_len."""
  task = tasks.make('parity', layout=layout, ponder_length=12, bos=bos)
  length = task.seq_len(12)
  stream = tasks.Stream(task, sizes=(1, 5, 12), batch_size=64, seed=2, seq_len=length + 2)
  batch = stream.batch(3)
  assert batch['tokens'].shape == (64, length + 2) and set(batch['size'].tolist()) == {1, 5, 12}
  for key in ('tokens', 'targets', 'loss_mask', 'annotated', 'complexity'):
    assert not batch[key][:, length:].any(), key
  np.testing.assert_array_equal(batch['annotated'], batch['loss_mask'])
  for b, size in enumerate(batch['size']):
    if layout == 'vector':
      assert 'vectors' in batch and batch['vectors'].shape == (64, length + 2, 12)
      entries, last = batch['vectors'][b, 0], 0
      assert batch['tokens'][b, 0] == BOS and not batch['vectors'][b, 1:].any()
    else:
      assert 'vectors' not in batch
      tokens = batch['tokens'][b, bos:length]
      entries, last = np.select([tokens == ONE, tokens == MINUS_ONE], [1, -1], 0), length - 1
      assert (batch['tokens'][b, 0] == BOS) == bos
      np.testing.assert_array_equal(batch['complexity'][b, bos:length], np.cumsum(entries != 0))
      np.testing.assert_array_equal(batch['features']['position'][b, bos:length],
                                    np.arange(1, 13))
    assert np.sum(entries != 0) == size and set(entries.tolist()) <= {-1, 0, 1}
    assert np.flatnonzero(batch['loss_mask'][b]).tolist() == [last]
    assert batch['targets'][b, last] == (ONE if np.sum(entries == 1) % 2 else ZERO)
    assert batch['complexity'][b, last] == size
    assert batch['features']['ones_so_far'][b, last] == np.sum(entries == 1)
  np.testing.assert_array_equal(stream.batch(3)['tokens'], batch['tokens'])
  with pytest.raises(ValueError, match=f'does not fit seq_len={length - 1}'):
    task.sample_batch(np.random.default_rng(0), np.ones(2, int), seq_len=length - 1)


def test_whole_batch_ponder_vectors_are_uniform_over_places_and_signs():
  """Against the closed form `sample` also draws from: 2 of 4 places, each of the 6 sets with
  probability 1/6, each sign fair and independent of the place."""
  task = tasks.make('parity', layout='vector', ponder_length=4)
  entries = np.concatenate([task.sample_batch(np.random.default_rng(s), np.full(3000, 2), 1)
                            ['vectors'][:, 0] for s in range(4)])  # [12000, 4]
  sets, counts = np.unique(entries != 0, axis=0, return_counts=True)
  assert len(sets) == 6 and (sets.sum(1) == 2).all()
  np.testing.assert_allclose(counts / len(entries), 1 / 6, atol=0.02)  # ~6 binomial sd
  for place in range(4):
    signs = entries[:, place][entries[:, place] != 0]
    np.testing.assert_allclose((signs == 1).mean(), 0.5, atol=0.03)
  both = entries[(entries[:, 0] != 0) & (entries[:, 1] != 0)][:, :2]
  np.testing.assert_allclose((both[:, 0] == both[:, 1]).mean(), 0.5, atol=0.06)


@pytest.mark.parametrize('layout', ['prefix', 'ponder'])
def test_bos_puts_a_marker_without_target_ahead_of_the_same_example(layout):
  plain, marked = (tasks.make('parity', layout=layout, bos=b) for b in (False, True))
  assert marked.vocab == plain.vocab + ('<s>',) and marked.seq_len(16) == plain.seq_len(16) + 1
  ex, ex_bos = plain.sample(np.random.default_rng(4), 9), marked.sample(np.random.default_rng(4), 9)
  assert ex_bos.tokens[0] == BOS and not ex_bos.loss_mask[0] and ex_bos.complexity[0] == 0
  np.testing.assert_array_equal(ex_bos.tokens[1:], ex.tokens)
  np.testing.assert_array_equal(ex_bos.targets[1:], ex.targets)
  np.testing.assert_array_equal(ex_bos.loss_mask[1:], ex.loss_mask)
  np.testing.assert_array_equal(ex_bos.complexity[1:], ex.complexity)
  for name in ex.features:
    np.testing.assert_array_equal(ex_bos.features[name][1:], ex.features[name])


@pytest.mark.parametrize('position', ['rope', 'none'])
def test_without_bos_relative_positions_give_a_leading_run_one_state(position):
  """The symmetry `bos` exists to break: at every iteration each token of a leading run of ones
  attends only to tokens in its own state, so they all end alike — `1` and `11` cannot get
  different parities. After `<s>` they differ."""
  anira = tiny_anira('fixed', tiny_model(position=position))
  params = anira.init(jax.random.key(0))
  run = lambda tokens: np.asarray(anira.apply(params, np.asarray([tokens]), train=False,
                                              collect_states=True).trajectory.states_TxBxLxD)
  states = run([ONE, ONE, ONE, ONE, ZERO, ONE])  # [T, 1, L, D]
  for t in range(states.shape[0]):
    np.testing.assert_allclose(states[t, 0, 1:4], np.broadcast_to(states[t, 0, :1], (3, 16)),
                               atol=1e-5)
  assert not np.allclose(states[-1, 0, 3], states[-1, 0, 5], atol=1e-3)  # not trivially equal
  if position == 'rope':
    marked = run([BOS, ONE, ONE, ONE])
    assert not np.allclose(marked[-1, 0, 1], marked[-1, 0, 2], atol=1e-3)


def test_stream_is_deterministic_by_seed_step_and_host():
  task = tasks.make('parity')
  stream = lambda **kw: tasks.Stream(task, sizes=(3, 4, 5), batch_size=16, **kw)
  a, b = stream(seed=0).batch(7), stream(seed=0).batch(7)
  for key in ('tokens', 'targets', 'loss_mask', 'complexity', 'size'):
    np.testing.assert_array_equal(a[key], b[key])
  assert not np.array_equal(a['tokens'], stream(seed=1).batch(7)['tokens'])
  assert not np.array_equal(a['tokens'], stream(seed=0).batch(8)['tokens'])
  host0 = stream(seed=0, host_index=0, host_count=2).batch(7)
  host1 = stream(seed=0, host_index=1, host_count=2).batch(7)
  assert not np.array_equal(host0['tokens'], host1['tokens'])


def test_stream_only_uses_its_sizes_and_pads_right():
  batch = tasks.Stream(tasks.make('parity'), sizes=(2, 5), batch_size=64, seed=3).batch(0)
  assert set(batch['size'].tolist()) == {2, 5}
  lengths = (batch['tokens'] != 0).sum(-1)
  np.testing.assert_array_equal(lengths, batch['size'])
  assert batch['tokens'].shape == (64, 5)
  assert not batch['loss_mask'][batch['tokens'] == 0].any()


def test_curriculum_opens_sizes_smallest_first_then_is_the_plain_stream():
  task = tasks.make('parity')
  sizes = (8, 2, 4, 6)  # unsorted on purpose: the curriculum orders them
  stream = tasks.Stream(task, sizes=sizes, batch_size=64, seed=0, curriculum_steps=8)
  assert [stream.open_sizes(s) for s in (0, 1, 2, 3, 4, 7, 8, 100)] == [
      (2,), (2,), (2, 4), (2, 4), (2, 4, 6), (2, 4, 6, 8), sizes, sizes]
  for step in range(8):
    batch = stream.batch(step)
    assert set(batch['size'].tolist()) <= set(stream.open_sizes(step))
    assert batch['tokens'].shape == (64, 8)  # full length from the first step
  plain = tasks.Stream(task, sizes=sizes, batch_size=64, seed=0)
  for step in (8, 9):
    np.testing.assert_array_equal(stream.batch(step)['tokens'], plain.batch(step)['tokens'])
  with pytest.raises(ValueError, match='curriculum_steps=-1'):
    tasks.Stream(task, sizes=sizes, batch_size=1, seed=0, curriculum_steps=-1)


def test_size_weights_draw_sizes_in_proportion():
  task = tasks.make('parity')
  sizes = (2, 4, 8)
  weighted = tasks.Stream(task, sizes=sizes, batch_size=512, seed=0, size_weights=(1.0, 1.0, 6.0))
  drawn = np.concatenate([weighted.batch(s)['size'] for s in range(8)])  # 4096 draws
  shares = [(drawn == s).mean() for s in sizes]
  np.testing.assert_allclose(shares, [0.125, 0.125, 0.75], atol=0.03)  # ~5 binomial sd
  # Under a curriculum only the open sizes are drawn, by their renormalised weights.
  opening = tasks.Stream(task, sizes=sizes, batch_size=2048, seed=0, curriculum_steps=3,
                         size_weights=(1.0, 3.0, 100.0))
  drawn = opening.batch(1)['size']  # sizes 2 and 4 open
  assert set(drawn.tolist()) == {2, 4}
  np.testing.assert_allclose((drawn == 4).mean(), 0.75, atol=0.05)
  for bad in [(1.0, 2.0), (1.0, 0.0, 1.0), (1.0, float('nan'), 1.0)]:
    with pytest.raises(ValueError, match='must be one finite weight > 0 for each of the sizes'):
      tasks.Stream(task, sizes=sizes, batch_size=1, seed=0, size_weights=bad)


def test_bad_inputs():
  with pytest.raises(ValueError, match='unknown task'):
    tasks.make('sudoku')
  with pytest.raises(ValueError, match="layout must be one of .*'vector'"):
    tasks.make('parity', layout='diagonal')
  with pytest.raises(ValueError, match="bos=True has no meaning for layout='vector'"):
    tasks.make('parity', layout='vector', bos=True)
  with pytest.raises(ValueError, match='cannot generate sizes'):
    tasks.Stream(tasks.make('parity', layout='ponder'), sizes=(97,), batch_size=1, seed=0)
