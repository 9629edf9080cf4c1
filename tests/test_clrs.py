"""CLRS-Text: each algorithm against a separate Python reference, parsed back from the text; the
tokens against the text; and, with the `clrs` extra, the text against DeepMind's own generator."""

import ast
import functools
import itertools
import math
import re
from fractions import Fraction

import numpy as np
import pytest

from tasks import base
from tasks.clrs import DEFAULT_ALGORITHMS, NAMES, QUADRATIC_ANSWERS, ClrsTask, clrs_text
from tasks.clrs_algorithms import ALGORITHMS
from tasks.clrs_samplers import DECIMALS

SIZES = (2, 3, 5, 8, 12, 16)
TASK = ClrsTask(algorithms=NAMES)


def _literal(text):
  """A printed value as Python lists and numbers: `[1 2]` -> [1, 2]."""
  return ast.literal_eval(re.sub(r'(?<=[\d\]]) (?=[-\d\[])', ', ', text))


def _parse(question, answer):
  """({input field: value}, [output values]) of one CLRS-Text example."""
  _, inputs, _, _ = question.split('\n')
  inputs = _literal('{' + re.sub(r'(\w+): ', r"'\1': ", inputs) + '}')
  return inputs, _literal('[' + answer[:-2] + ']')


def _examples(name):
  for seed, size in itertools.product(range(8), SIZES):
    if size >= ALGORITHMS[name].min_size:
      yield size, clrs_text(name, np.random.default_rng([seed, size]), size)


# --- Independent references ----------------------------------------------------------------------

def _components(A, directed=False):
  """reach[u][v]: v reachable from u (u itself included), by transitive closure."""
  n = len(A)
  reach = [[u == v or A[u][v] != 0 or (not directed and A[v][u] != 0) for v in range(n)]
           for u in range(n)]
  for k, u, v in itertools.product(range(n), repeat=3):
    reach[u][v] = reach[u][v] or (reach[u][k] and reach[k][v])
  return reach


def _distances(A):
  """All-pairs shortest distances (Floyd–Warshall on edges A != 0), inf where unreachable."""
  n = len(A)
  d = [[0. if u == v else (A[u][v] or math.inf) for v in range(n)] for u in range(n)]
  for k, u, v in itertools.product(range(n), repeat=3):
    d[u][v] = min(d[u][v], d[u][k] + d[k][v])
  return d


def _count_components(A, removed=(), cut=()):
  """Connected components of the undirected graph without the nodes `removed` and edges `cut`."""
  nodes = [u for u in range(len(A)) if u not in removed]
  root = {u: u for u in nodes}

  def find(u):
    return u if root[u] == u else find(root[u])

  for u, v in itertools.combinations(nodes, 2):
    if A[u][v] and {u, v} not in cut:
      root[find(u)] = find(v)
  return len({find(u) for u in nodes})


def _spanning_weight(A, nodes):
  """The weight of a minimum spanning tree of `nodes` (connected), by Prim."""
  tree, total = {min(nodes)}, 0.
  while len(tree) < len(nodes):
    weight, v = min((A[u][v], v) for u in tree for v in nodes if v not in tree and A[u][v])
    tree.add(v)
    total += weight
  return total


def _check_sorted(inputs, outputs):
  assert outputs == [sorted(inputs['key'])]


def _check_minimum(inputs, outputs):
  assert outputs == [inputs['key'].index(min(inputs['key']))]


def _check_binary_search(inputs, outputs):
  key = inputs['key']
  assert outputs == [next((i for i, k in enumerate(key) if k >= inputs['target']), len(key) - 1)]


def _check_quickselect(inputs, outputs):
  key = inputs['key']
  assert key[outputs[0]] == sorted(key)[len(key) // 2]


def _check_kadane(inputs, outputs):
  key, (start, end) = inputs['key'], outputs
  best = max(sum(key[i:j]) for i, j in itertools.combinations(range(len(key) + 1), 2))
  assert start <= end and math.isclose(sum(key[start:end + 1]), best, abs_tol=1e-9)


def _check_matrix_chain(inputs, outputs):
  p, [split] = inputs['p'], outputs

  @functools.cache
  def best(i, j):
    return 0 if i == j else min(best(i, k) + best(k + 1, j) + p[i - 1] * p[k] * p[j]
                                for k in range(i, j))

  def cost(i, j):
    k = split[i][j]
    return 0 if i == j else cost(i, k) + cost(k + 1, j) + p[i - 1] * p[k] * p[j]

  n = len(p)
  assert all(split[i][j] == 0 for i, j in itertools.product(range(n), repeat=2) if not 0 < i < j)
  if 0 not in p:  # a key truncated to 0.0 can end CLRS's rounds before every chain is optimal
    assert all(i <= split[i][j] < j and math.isclose(cost(i, j), best(i, j), rel_tol=1e-12)
               for i, j in itertools.combinations(range(1, n), 2))


def _check_lcs(inputs, outputs):
  (string, key), [arrows] = inputs.values(), outputs
  split = string.count(0)
  x, y = key[:split], key[split:]
  assert all((arrows[i][j] == -1) == (i >= split or j < split)
             for i, j in itertools.product(range(len(key)), repeat=2))
  i, j, pairs = len(x) - 1, len(y) - 1, []
  while i >= 0 and j >= 0:  # CLRS's PRINT-LCS walk back along the arrows
    arrow = arrows[i][split + j]
    if arrow == 0:
      pairs.append((i, j))
    i, j = i - (arrow != 2), j - (arrow != 1)

  @functools.cache
  def lcs(i, j):
    if i == len(x) or j == len(y):
      return 0
    return lcs(i + 1, j + 1) + 1 if x[i] == y[j] else max(lcs(i + 1, j), lcs(i, j + 1))

  assert all(x[a] == y[b] for a, b in pairs) and len(pairs) == lcs(0, 0)


def _check_optimal_bst(inputs, outputs):
  p, q, [root] = inputs['p'][:-1], inputs['q'], outputs
  weight = lambda i, j: sum(p[i:j]) + sum(q[i:j + 1])

  @functools.cache
  def best(i, j):  # keys i..j-1
    return q[i] if i == j else min(best(i, r) + best(r + 1, j) for r in range(i, j)) + weight(i, j)

  def cost(i, j):
    r = root[i][j]
    assert i == j or i <= r < j
    return q[i] if i == j else cost(i, r) + cost(r + 1, j) + weight(i, j)

  assert inputs['p'][-1] == 0 and len(q) == len(p) + 1
  assert math.isclose(cost(0, len(p)), best(0, len(p)), rel_tol=1e-9)


def _check_activities(inputs, outputs):
  s, f, [selected] = inputs['s'], inputs['f'], outputs
  chosen = [i for i, m in enumerate(selected) if m]
  assert all(s[a] >= f[b] or s[b] >= f[a] for a, b in itertools.combinations(chosen, 2))
  order = sorted(range(len(s)), key=lambda i: f[i])
  most = [0]  # most[k]: the most disjoint activities among the k finishing first
  for k, i in enumerate(order):
    before = sum(f[j] <= s[i] for j in order[:k])
    most.append(max(most[-1], most[before] + 1))
  assert len(chosen) == most[-1]


def _check_tasks(inputs, outputs):
  d, w, [selected] = inputs['d'], inputs['w'], outputs
  if len(set(w)) == len(w):  # tied weights: which goes first is numpy's argsort's choice
    for i in range(len(d)):  # heaviest first, each kept while fewer are kept than its deadline
      assert selected[i] == (sum(selected[j] for j in range(len(d)) if w[j] > w[i]) < d[i])


def _check_dfs(inputs, outputs):
  A, parent = inputs['A'], list(range(len(inputs['A'])))

  def visit(u):
    seen.add(u)
    for v in range(len(A)):
      if A[u][v] and v not in seen:
        parent[v] = u
        visit(v)

  seen = set()
  for root in range(len(A)):
    if root not in seen:
      visit(root)
  assert outputs == [parent]


def _check_topological(inputs, outputs):
  A, [after, head] = inputs['A'], outputs
  order = [head]
  while after[order[-1]] != order[-1]:
    order.append(after[order[-1]])
  assert sorted(order) == list(range(len(A)))
  assert all(order.index(u) < order.index(v)
             for u, v in itertools.product(range(len(A)), repeat=2) if A[u][v])


def _check_scc(inputs, outputs):
  reach, [scc] = _components(inputs['A'], directed=True), outputs
  for u, v in itertools.product(range(len(scc)), repeat=2):
    assert (scc[u] == scc[v]) == (reach[u][v] and reach[v][u])
    assert reach[u][scc[u]] and reach[scc[u]][u]


def _check_articulation(inputs, outputs):
  A = inputs['A']
  base_count = _count_components(A)
  assert outputs == [[int(_count_components(A, removed={u}) > base_count)
                      for u in range(len(A))]]


def _check_bridges(inputs, outputs):
  A, [bridge] = inputs['A'], outputs
  for u, v in itertools.product(range(len(A)), repeat=2):
    if u == v or not A[u][v]:
      assert bridge[u][v] == (0 if u == v else -1)
    else:
      assert bridge[u][v] == (_count_components(A, cut=[{u, v}]) > _count_components(A))


def _check_bfs(inputs, outputs):
  s, A, [parent] = inputs['s'], inputs['A'], outputs
  level = {s: 0}
  for depth in range(len(A)):
    level.update({v: depth + 1 for u in level if level[u] == depth for v in range(len(A))
                  if A[u][v] and v not in level})
  expected = [min((u for u in level if A[u][v] and level[u] == level[v] - 1), default=v)
              if v in level and v != s else v for v in range(len(A))]
  assert parent == expected


def _check_shortest_paths(inputs, outputs):
  s, A, [parent] = inputs['s'], inputs['A'], outputs
  d = _distances(A)[s]
  assert parent[s] == s
  for v in range(len(A)):
    if v != s and d[v] < math.inf:
      assert A[parent[v]][v] and math.isclose(d[parent[v]] + A[parent[v]][v], d[v])
    elif v != s:
      assert parent[v] == v


def _check_prim(inputs, outputs):
  s, A, [parent] = inputs['s'], inputs['A'], outputs
  reach = _components(A)[s]
  component = [v for v in range(len(A)) if reach[v]]
  assert all(parent[v] == v for v in range(len(A)) if not reach[v] or v == s)
  assert all(A[parent[v]][v] for v in component if v != s)
  for v in component:  # the parents lead to s
    for _ in range(len(A)):
      v = parent[v]
    assert v == s
  total = sum(A[parent[v]][v] for v in component if v != s)
  assert math.isclose(total, _spanning_weight(A, component))


def _check_kruskal(inputs, outputs):
  A, [in_mst] = inputs['A'], outputs
  reach = _components(A)
  components = {tuple(v for v in range(len(A)) if reach[u][v]) for u in range(len(A))}
  edges = [(u, v) for u, v in itertools.combinations(range(len(A)), 2) if in_mst[u][v]]
  assert all(in_mst[u][v] == in_mst[v][u] and (A[u][v] or not in_mst[u][v])
             for u, v in itertools.product(range(len(A)), repeat=2))
  assert len(edges) == len(A) - len(components)
  assert _count_components(A, cut=[{u, v} for u, v in itertools.combinations(range(len(A)), 2)
                                   if not in_mst[u][v]]) == len(components)
  total = sum(A[u][v] for u, v in edges)
  assert math.isclose(total, sum(_spanning_weight(A, c) for c in components), abs_tol=1e-9)


def _check_floyd_warshall(inputs, outputs):
  A, [before] = inputs['A'], outputs
  d = _distances(A)
  for i, j in itertools.product(range(len(A)), repeat=2):
    k = before[i][j]
    if i != j and d[i][j] < math.inf:
      assert A[k][j] and math.isclose(d[i][k] + A[k][j], d[i][j])
    elif i != j:
      assert k == i


def _check_string_match(inputs, outputs):
  split = inputs['string'].count(0)
  letters = ''.join(map(str, inputs['key']))
  assert outputs == [letters[:split].find(letters[split:])] and outputs[0] >= 0


def _check_segments(inputs, outputs):
  x, y = ([Fraction(str(v)) for v in inputs[k]] for k in 'xy')
  side = lambda a, b, c: (x[c] - x[a]) * (y[b] - y[a]) - (x[b] - x[a]) * (y[c] - y[a])
  between = lambda a, b, c: min(x[a], x[b]) <= x[c] <= max(x[a], x[b]) and \
      min(y[a], y[b]) <= y[c] <= max(y[a], y[b])
  cross = side(2, 3, 0) * side(2, 3, 1) < 0 and side(0, 1, 2) * side(0, 1, 3) < 0
  touch = any(side(*ends, c) == 0 and between(*ends, c)
              for ends, c in [((2, 3), 0), ((2, 3), 1), ((0, 1), 2), ((0, 1), 3)])
  assert outputs == [int(cross or touch)]


def _check_hull(inputs, outputs):
  x, y, [in_hull] = inputs['x'], inputs['y'], outputs
  for i in range(len(x)):  # a vertex iff the others lie within less than a half turn from it
    angles = sorted(math.atan2(y[j] - y[i], x[j] - x[i]) for j in range(len(x)) if j != i)
    gaps = np.diff(angles + [angles[0] + 2 * math.pi]) if angles else [2 * math.pi]
    assert in_hull[i] == (max(gaps) > math.pi)


REFERENCES = {
    **dict.fromkeys(['insertion_sort', 'bubble_sort', 'heapsort', 'quicksort'], _check_sorted),
    'minimum': _check_minimum,
    'binary_search': _check_binary_search,
    'quickselect': _check_quickselect,
    'find_maximum_subarray_kadane': _check_kadane,
    'matrix_chain_order': _check_matrix_chain,
    'lcs_length': _check_lcs,
    'optimal_bst': _check_optimal_bst,
    'activity_selector': _check_activities,
    'task_scheduling': _check_tasks,
    'dfs': _check_dfs,
    'topological_sort': _check_topological,
    'strongly_connected_components': _check_scc,
    'articulation_points': _check_articulation,
    'bridges': _check_bridges,
    'bfs': _check_bfs,
    'mst_kruskal': _check_kruskal,
    'mst_prim': _check_prim,
    **dict.fromkeys(['dijkstra', 'bellman_ford', 'dag_shortest_paths'], _check_shortest_paths),
    'floyd_warshall': _check_floyd_warshall,
    **dict.fromkeys(['naive_string_matcher', 'kmp_matcher'], _check_string_match),
    'segments_intersect': _check_segments,
    **dict.fromkeys(['graham_scan', 'jarvis_march'], _check_hull),
}


def test_every_algorithm_has_a_reference():
  assert set(REFERENCES) == set(ALGORITHMS) and len(ALGORITHMS) == 30
  assert len(DEFAULT_ALGORITHMS) == 23 and not set(QUADRATIC_ANSWERS) & set(DEFAULT_ALGORITHMS)


@pytest.mark.parametrize('name', NAMES)
def test_outputs_match_reference(name):
  for size, (question, answer) in _examples(name):
    inputs, outputs = _parse(question, answer)
    assert question.startswith(f'{name}:\n'), question
    try:
      REFERENCES[name](inputs, outputs)
    except AssertionError as error:
      raise AssertionError(f'size {size}: {question + answer}') from error


@pytest.mark.parametrize('name', ['articulation_points', 'bridges', 'mst_kruskal'])
def test_outputs_match_reference_on_denser_graphs(name):
  # CLRS draws these graphs with p = 0.2 in each direction: 4% of pairs are edges, nearly always
  # a forest, where cycles never test the low links or the union-find.
  algorithm = ALGORITHMS[name]
  for seed, size in itertools.product(range(8), (6, 10, 14)):
    rng = np.random.default_rng(seed)
    A = np.triu(rng.random((size, size)) < 0.3, k=1) * np.trunc(rng.uniform(1, 1000, (size, size)))
    values = algorithm.run((A + A.T) / 1000 if name == 'mst_kruskal' else (A + A.T > 0) * 1)
    inputs = dict(zip(algorithm.inputs, (v.tolist() for v in values)))
    REFERENCES[name](inputs, [v.tolist() for v in values[len(inputs):]])


# --- Tokens, layout and bounds -------------------------------------------------------------------

def _after_choice(task, seed):
  """The generator `task.sample` draws an example's input from, once it chose the algorithm."""
  rng = np.random.default_rng(seed)
  rng.integers(len(task.algorithms))
  return rng


@pytest.mark.parametrize('name', NAMES)
def test_tokens_spell_the_text_and_lengths_are_exact(name):
  task = ClrsTask(algorithms=(name,), max_size=16)
  for size in sorted({task.valid_sizes()[0], 5, 9, 16}):
    for seed in range(3):
      example = task.sample(np.random.default_rng(seed), size)
      question, answer = clrs_text(name, _after_choice(task, seed), size)
      assert task.text(example.tokens) == question + answer
      assert len(example.tokens) == task.seq_len(size)  # exact, whatever the input


def test_sequence_lengths():
  lengths = {name: ClrsTask(algorithms=(name,), max_size=8).seq_len(8) for name in NAMES}
  assert lengths['minimum'] == 15  # first line, 'key: ', [8 keys], '\nmin:\n', index, <eos>
  assert lengths['bfs'] == 90  # first line, 's: ', s, ', ', 'A: ', [[8 x 8]] (73), '\npi:\n', ...
  assert lengths['floyd_warshall'] == 150
  assert TASK.seq_len(8) == max(lengths.values())
  assert ClrsTask(max_size=8).seq_len(8) == max(lengths[n] for n in DEFAULT_ALGORITHMS)


def test_vocab_layout():
  vocab = TASK.vocab
  assert vocab[base.PAD] == '<pad>' and len(set(vocab)) == len(vocab)
  # <pad> <eos>, punctuation, first lines, output headers, input names, floats, -1..32
  assert len(vocab) == 2 + 6 + 30 + 19 + 12 + 4000 + 34
  assert {'0.0', '-0.0', '0.001', '-1.999', '1.999', '-1', '0', '32'} <= set(vocab)
  # A subset shares the full vocabulary, so its token ids mean the same thing.
  assert ClrsTask(algorithms=('minimum',)).vocab == vocab


def test_tokenize_rejects_what_the_vocabulary_cannot_spell():
  task = ClrsTask(max_size=8)
  assert task.text(task.tokenize('minimum:\nkey: [0.5 -0.0]\nmin:\n')) == \
      'minimum:\nkey: [0.5 -0.0]\nmin:\n'
  with pytest.raises(ValueError, match="'9' is not in the clrs vocabulary"):
    task.tokenize('9\n\n')
  with pytest.raises(ValueError, match="'2.0' is not"):
    task.tokenize('[2.0]\n\n')
  for text in ('minimum:\nkey:  [0.5]', 'minimum:\nkey: [0.5 0.25]x', '[0.5  0.2]'):
    with pytest.raises(ValueError, match='cannot spell'):
      task.tokenize(text)


def test_layout_targets_mask_and_features():
  for seed, size in itertools.product(range(40), (4, 9, 16)):
    ex = TASK.sample(np.random.default_rng(seed), size)
    words = TASK.decode(ex.tokens)
    name = words[0][:-2]
    np.testing.assert_array_equal(ex.targets[:-1], ex.tokens[1:])
    assert ex.targets[-1] == base.PAD and words[-1] == '<eos>' and words.count('<eos>') == 1
    scored = np.flatnonzero(ex.loss_mask)
    assert words[scored[0]].endswith(':\n') and np.all(np.diff(scored) == 1)
    assert scored[-1] == len(words) - 2
    answer = clrs_text(name, _after_choice(TASK, seed), size)[1]
    assert TASK.text(ex.targets[scored]) == answer
    np.testing.assert_array_equal(ex.annotated, ex.loss_mask)
    np.testing.assert_array_equal(ex.complexity, size)
    np.testing.assert_array_equal(ex.features['input_size'], size)
    np.testing.assert_array_equal(ex.features['algorithm_id'], NAMES.index(name))
    for array in (ex.complexity, *ex.features.values()):
      assert array.dtype == np.float32 and array.shape == ex.tokens.shape


def test_streams_fit_their_length():
  task = ClrsTask(max_size=12)
  batch = base.Stream(task, sizes=(4, 12), batch_size=32, seed=0).batch(0)
  assert batch['tokens'].shape == (32, task.seq_len(12))
  assert task.valid_sizes() == (4, 12)  # strongly_connected_components needs 4 nodes
  assert ClrsTask(algorithms=('minimum', 'kmp_matcher')).valid_sizes() == (3, 32)


def test_algorithms_are_drawn_uniformly():
  rng = np.random.default_rng(0)
  ids = [TASK.sample(rng, 4).features['algorithm_id'][0] for _ in range(1500)]
  counts = np.bincount(np.asarray(ids, int), minlength=len(NAMES))
  assert counts.min() > 25  # 50 expected each


def test_deterministic_by_seed():
  a = TASK.sample(np.random.default_rng(3), 16)
  b = TASK.sample(np.random.default_rng(3), 16)
  np.testing.assert_array_equal(a.tokens, b.tokens)
  streams = [base.Stream(TASK, sizes=(4, 16), batch_size=8, seed=s).batch(5) for s in (1, 1, 2)]
  np.testing.assert_array_equal(streams[0]['tokens'], streams[1]['tokens'])
  assert not np.array_equal(streams[0]['tokens'], streams[2]['tokens'])


def test_rejects_unknown_algorithms_and_sizes():
  with pytest.raises(ValueError, match='known: activity_selector'):
    ClrsTask(algorithms=('insertion_sort', 'quantum_sort'))
  with pytest.raises(ValueError, match='none given'):
    ClrsTask(algorithms=())
  with pytest.raises(ValueError, match='max_size must be >= 4'):
    ClrsTask(max_size=3)
  with pytest.raises(ValueError, match=r'not in \[4, 32\]'):
    TASK.sample(np.random.default_rng(0), 33)
  with pytest.raises(ValueError, match=r'not in \[4, 32\]'):
    TASK.sample(np.random.default_rng(0), 3)
  with pytest.raises(ValueError, match='cannot generate sizes'):
    base.Stream(TASK, sizes=(2, 8), batch_size=1, seed=0)


# --- Input distributions -------------------------------------------------------------------------

def _draws(name, size, count=300):
  algorithm, rng = ALGORITHMS[name], np.random.default_rng(0)
  return [algorithm.draw(rng, size) for _ in range(count)]


def test_floats_and_ranges():
  key = np.concatenate([d[0] for d in _draws('insertion_sort', 10)])
  assert 0 <= key.min() and key.max() < 1 and abs(key.mean() - 0.5) < 0.02
  assert -1 <= min(d[0].min() for d in _draws('find_maximum_subarray_kadane', 10)) < -0.9
  radius = np.hypot(*np.concatenate([d for d in _draws('graham_scan', 6, 100)], axis=1))
  assert radius.max() < 2 and abs(np.mean(radius**2) - 2) < 0.2  # uniform on the disk: E r^2 = 2
  question, _ = clrs_text('dijkstra', np.random.default_rng(0), 12)
  numbers = re.findall(r'-?\d+\.\d+', question)
  assert numbers and all(len(n.split('.')[1]) <= DECIMALS for n in numbers)


@pytest.mark.parametrize('name, density, symmetric', [
    ('bfs', 0.25, True), ('articulation_points', 0.04, True), ('dfs', 0.5, False),
    ('topological_sort', 0.25, False), ('dijkstra', 0.25, True), ('mst_kruskal', 0.04, True)])
def test_graph_densities(name, density, symmetric):
  graphs = [d[0] for d in _draws(name, 12)]
  edges = np.mean([np.mean(A[~np.eye(12, dtype=bool)] != 0) for A in graphs])
  assert abs(edges - density) < 0.1 * density + 0.005
  assert all(np.array_equal(A, A.T) == symmetric for A in graphs)
  if name == 'topological_sort':  # acyclic: nilpotent
    assert all(not np.linalg.matrix_power(A, 12).any() for A in graphs)


def test_community_graphs_and_needles():
  A = _draws('strongly_connected_components', 16, 50)
  assert all(set(np.unique(a)) <= {0., 1.} for [a] in A)
  assert abs(np.mean([a.mean() for [a] in A]) - (4 * 16 * 0.5 + 3 * 64 * 0.01) / 256) < 0.02
  for haystack, needle in _draws('kmp_matcher', 20, 50):
    assert len(needle) == 4 and len(haystack) == 16
    assert ''.join(map(str, needle)) in ''.join(map(str, haystack))


# --- Cross-check against DeepMind's CLRS-Text (pip install -e '.[clrs,test]') --------------------

class _LegacyGenerator:
  """CLRS's own generator (numpy's RandomState, seeded as its samplers seed it) behind the
  Generator methods our draws call: the same seed draws CLRS's very inputs."""

  def __init__(self, seed):
    self._state = np.random.RandomState(seed)

  def integers(self, low, high, size=None):
    return self._state.randint(low, high, size)

  def __getattr__(self, name):  # uniform, binomial, choice, permutation
    return getattr(self._state, name)


CROSS_CHECK_SIZES = (3, 4, 7, 12, 16)


@pytest.mark.filterwarnings('ignore::DeprecationWarning:clrs')  # its np.cross of 2-vectors
@pytest.mark.parametrize('name', NAMES)
def test_text_is_dm_clrs_text(name):
  samplers = pytest.importorskip('clrs._src.samplers', reason="needs the 'clrs' extra")
  clrs_utils = pytest.importorskip('clrs._src.clrs_text.clrs_utils', reason="needs 'clrs'")
  sizes = [s for s in CROSS_CHECK_SIZES if s >= ALGORITHMS[name].min_size]
  if name in ('graham_scan', 'jarvis_march'):  # dm-clrs checks collinearity in pure Python
    sizes = sizes[:-1]
  for size in sizes:
    theirs, _ = samplers.build_sampler(name, num_samples=-1, length=size, seed=size,
                                       track_max_steps=False, truncate_decimals=DECIMALS)
    ours = _LegacyGenerator(size)
    for _ in range(25):
      expected = clrs_utils.format_clrs_example(name, theirs.next(batch_size=1))
      assert clrs_text(name, ours, size) == expected
      tokens = TASK.tokenize(expected[0]) + TASK.tokenize(expected[1])
      assert TASK.text(tokens) == ''.join(expected)
