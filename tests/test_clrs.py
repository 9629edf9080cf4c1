"""CLRS labels against separate Python references, parsed back from the tokens."""

import bisect
import functools
import itertools

import numpy as np
import pytest

from tasks import base
from tasks.clrs import ALGORITHMS, ClrsTask

SIZES = (2, 3, 5, 8, 13, 32)
TASK = ClrsTask()


def _split(words):
  """[name, inputs..., '=', outputs..., '<eos>'] -> (name, inputs, outputs as words)."""
  equals = words.index('=')
  assert words[-1] == '<eos>' and words.count('<eos>') == 1, words
  return words[0], words[1:equals], words[equals + 1:-1]


def _numbers(words):
  return [int(w) for w in words]


def _query(inputs):
  """Splits `... ? q` into (words before '?', q)."""
  assert inputs[-2] == '?'
  return inputs[:-2], int(inputs[-1])


def _edges(inputs, link):
  """`u link v [: w] | ...` -> list of (u, v, w), w = 1 when unweighted."""
  edges = []
  for group in ' '.join(inputs).split(' | '):
    u, arrow, v, *weight = group.split()
    assert arrow == link
    edges.append((int(u), int(v), int(weight[1]) if weight else 1))
  return edges


def _nodes(edges):
  return 1 + max(max(u, v) for u, v, _ in edges)


def _adjacency(edges):
  n = _nodes(edges)
  adjacent = {u: set() for u in range(n)}
  for u, v, _ in edges:
    adjacent[u].add(v)
    adjacent[v].add(u)
  return adjacent


def _ref_bfs(inputs):
  words, source = _query(inputs)
  adjacent = _adjacency(_edges(words, '-'))
  order, level = [source], [source]
  while level:  # level by level, each node's new neighbours in increasing id order
    following = []
    for u in level:
      for v in sorted(adjacent[u]):
        if v not in order and v not in following:
          following.append(v)
    order += following
    level = following
  return order


def _ref_dfs(inputs):
  words, source = _query(inputs)
  adjacent = _adjacency(_edges(words, '-'))
  order = []

  def visit(u):
    order.append(u)
    for v in sorted(adjacent[u]):
      if v not in order:
        visit(v)

  visit(source)
  return order


def _ref_topological(inputs):
  edges = _edges(inputs, '->')
  remaining, order = set(range(_nodes(edges))), []
  while remaining:
    ready = [v for v in remaining
             if not any(b == v and a in remaining for a, b, _ in edges)]
    order.append(min(ready))
    remaining.remove(min(ready))
  return order


def _ref_distances(inputs):
  words, source = _query(inputs)
  edges = _edges(words, '-')
  n = _nodes(edges)
  d = [[0 if i == j else float('inf') for j in range(n)] for i in range(n)]
  for u, v, w in edges:
    d[u][v] = d[v][u] = min(d[u][v], w)
  for k, i, j in itertools.product(range(n), repeat=3):  # Floyd–Warshall
    d[i][j] = min(d[i][j], d[i][k] + d[k][j])
  return d[source]


def _ref_mst(inputs):
  edges = _edges(inputs, '-')
  tree, total = {0}, 0
  while len(tree) < _nodes(edges):  # Prim: the lightest edge leaving the tree
    w, v = min((w, b) for u, v, w in edges for a, b in ((u, v), (v, u))
               if a in tree and b not in tree)
    tree.add(v)
    total += w
  return [total]


def _ref_activities(inputs):
  intervals = [tuple(map(int, g.split())) for g in ' '.join(inputs).split(' | ')]
  chosen, now = [], 0
  while True:
    after = [(e, i) for i, (s, e) in enumerate(intervals) if s >= now]
    if not after:
      return sorted(chosen)
    now, i = min(after)
    chosen.append(i)


def _max_disjoint(intervals):
  """The size of a largest set of disjoint half-open intervals, by dynamic programming."""
  intervals = sorted(intervals, key=lambda se: se[1])
  ends = [e for _, e in intervals]
  best = [0]
  for k, (s, _) in enumerate(intervals):
    best.append(max(best[-1], best[bisect.bisect_right(ends, s, 0, k)] + 1))
  return best[-1]


def _ref_lcs(inputs):
  bar = inputs.index('|')
  a, b = inputs[:bar], inputs[bar + 1:]

  @functools.lru_cache(maxsize=None)
  def lcs(i, j):
    if i == len(a) or j == len(b):
      return 0
    return lcs(i + 1, j + 1) + 1 if a[i] == b[j] else max(lcs(i + 1, j), lcs(i, j + 1))

  return [lcs(0, 0)]


REFERENCES = {
    'insertion_sort': lambda inputs: sorted(_numbers(inputs)),
    'binary_search': lambda inputs: [bisect.bisect_left(_numbers(_query(inputs)[0]),
                                                        _query(inputs)[1])],
    'minimum': lambda inputs: [_numbers(inputs).index(min(_numbers(inputs)))],
    'count_inversions': lambda inputs: [sum(a > b for a, b in
                                            itertools.combinations(_numbers(inputs), 2))],
    'activity_selection': _ref_activities,
    'lcs_length': _ref_lcs,
    'bfs_order': _ref_bfs,
    'dfs_order': _ref_dfs,
    'topological_sort': _ref_topological,
    'dijkstra': _ref_distances,
    'mst_weight': _ref_mst,
}


def _samples(task, seeds, sizes=SIZES):
  for seed in seeds:
    rng = np.random.default_rng(seed)
    for size in sizes:
      yield size, task.sample(rng, size)


def test_every_algorithm_has_a_reference():
  assert set(REFERENCES) == set(ALGORITHMS) and len(ALGORITHMS) >= 8


@pytest.mark.parametrize('name', list(ALGORITHMS))
def test_outputs_match_reference(name):
  task = ClrsTask(algorithms=(name,))
  for size, ex in _samples(task, seeds=range(12)):
    algo, inputs, outputs = _split(task.decode(ex.tokens))
    assert algo == name
    assert _numbers(outputs) == REFERENCES[name](inputs), (size, ' '.join(task.decode(ex.tokens)))


def test_inputs_have_the_stated_size_and_graphs_are_connected():
  for name in ALGORITHMS:
    task = ClrsTask(algorithms=(name,))
    for size, ex in _samples(task, seeds=range(3)):
      _, inputs, outputs = _split(task.decode(ex.tokens))
      if name in ('bfs_order', 'dfs_order', 'dijkstra'):
        assert _nodes(_edges(_query(inputs)[0], '-')) == size
        assert len(outputs) == size  # connected: every node is reached
      elif name == 'topological_sort':
        assert sorted(_numbers(outputs)) == list(range(size))
      elif name == 'mst_weight':
        assert _nodes(_edges(inputs, '-')) == size
      elif name in ('insertion_sort', 'minimum', 'count_inversions'):
        assert len(inputs) == size
      elif name == 'activity_selection':
        intervals = [tuple(map(int, g.split())) for g in ' '.join(inputs).split(' | ')]
        assert len(intervals) == size
        assert len(outputs) == _max_disjoint(intervals)  # the greedy choice is optimal


def test_topological_order_respects_every_edge():
  task = ClrsTask(algorithms=('topological_sort',))
  for _, ex in _samples(task, seeds=range(5)):
    _, inputs, outputs = _split(task.decode(ex.tokens))
    position = {v: i for i, v in enumerate(_numbers(outputs))}
    assert all(position[u] < position[v] for u, v, _ in _edges(inputs, '->'))


def test_layout_targets_mask_and_features():
  for size, ex in _samples(TASK, seeds=range(30), sizes=(2, 9, 32)):
    words = TASK.decode(ex.tokens)
    name, _, outputs = _split(words)
    np.testing.assert_array_equal(ex.targets[:-1], ex.tokens[1:])
    assert ex.targets[-1] == base.PAD
    scored = np.flatnonzero(ex.loss_mask)
    assert words[scored[0]] == '=' and np.all(np.diff(scored) == 1)
    assert TASK.decode(ex.targets[scored]) == outputs + ['<eos>']
    np.testing.assert_array_equal(ex.complexity, size)
    np.testing.assert_array_equal(ex.features['input_size'], size)
    np.testing.assert_array_equal(ex.features['algorithm_id'], list(ALGORITHMS).index(name))
    for array in (ex.complexity, *ex.features.values()):
      assert array.dtype == np.float32 and array.shape == ex.tokens.shape


def test_bounds_hold_at_every_size():
  largest = TASK.valid_sizes()[1]
  for name, algo in ALGORITHMS.items():
    task = ClrsTask(algorithms=(name,))
    for size, ex in _samples(task, seeds=range(20), sizes=(2, 3, largest - 1, largest)):
      assert len(ex.tokens) <= algo.max_tokens(size) + 3 <= TASK.seq_len(largest)
      numbers = [int(w) for w in task.decode(ex.tokens) if w.isdigit()]
      assert max(numbers) <= algo.max_number(size), name
  batch = base.Stream(TASK, sizes=(2, largest), batch_size=64, seed=0).batch(0)
  assert batch['tokens'].shape == (64, TASK.seq_len(largest))


def test_vocab_layout():
  assert TASK.vocab[0] == '<pad>' and len(set(TASK.vocab)) == len(TASK.vocab)
  assert set(ALGORITHMS) <= set(TASK.vocab)
  # A subset shares the full vocabulary, so its token ids mean the same thing.
  assert ClrsTask(algorithms=('minimum',)).vocab == TASK.vocab


def test_algorithms_are_drawn_uniformly():
  rng = np.random.default_rng(0)
  ids = [TASK.sample(rng, 4).features['algorithm_id'][0] for _ in range(1100)]
  counts = np.bincount(np.asarray(ids, int), minlength=len(ALGORITHMS))
  assert counts.min() > 60  # 100 expected each


def test_deterministic_by_seed():
  a = TASK.sample(np.random.default_rng(3), 16)
  b = TASK.sample(np.random.default_rng(3), 16)
  np.testing.assert_array_equal(a.tokens, b.tokens)
  streams = [base.Stream(TASK, sizes=(4, 16), batch_size=8, seed=s).batch(5) for s in (1, 1, 2)]
  np.testing.assert_array_equal(streams[0]['tokens'], streams[1]['tokens'])
  assert not np.array_equal(streams[0]['tokens'], streams[2]['tokens'])


def test_rejects_unknown_algorithms_and_sizes():
  with pytest.raises(ValueError, match='known: insertion_sort'):
    ClrsTask(algorithms=('insertion_sort', 'quantum_sort'))
  with pytest.raises(ValueError):
    ClrsTask(algorithms=())
  with pytest.raises(ValueError, match='not in'):
    TASK.sample(np.random.default_rng(0), 33)
