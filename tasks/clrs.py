"""CLRS: classic algorithm problems, input -> output with the execution traces removed.

After CLRS-Text: many algorithms merged into one task, each example naming its algorithm with a
leading token:

    tokens   insertion_sort 3 1 2 = 1 2 3 <eos>
    scored                         ^ ^ ^ ^   (positions whose target is an output token or <eos>)

Size = the input's size (list length or node count); it is the complexity of every position.

An algorithm is one function `(rng, size) -> (input tokens, output tokens)` registered with
`@algorithm(name, max_tokens=..., max_number=...)`, whose two bounds (on len(input) + len(output),
and on any number written) size the sequence and the vocabulary exactly.

Conventions:
- numbers are single tokens '0'..'M' (list values and edge weights 0..9 / 1..9, indices, node ids,
  distances, counts), M the largest bound any algorithm declares at the task's `max_size`;
- lists are written as their values; '?' introduces a query (a search key, a source node);
- graphs are connected, with at most size - 1 + size // 2 edges written in random order as
  `u - v` (undirected) or `u -> v` (directed), optionally `: w`, separated by '|';
- ties break toward the smaller index or node id: BFS and DFS visit neighbours in increasing id
  order, topological sort is Kahn's with the smallest ready node first, minimum is the first one.
"""

from __future__ import annotations

import bisect
import dataclasses
import heapq
from collections.abc import Callable

import numpy as np

from tasks import base

MAX_VALUE = 9  # list values are 0..MAX_VALUE; edge weights 1..MAX_VALUE
_SEPARATORS = ('<eos>', '=', '?', '|', '-', '->', ':')

Sampler = Callable[[np.random.Generator, int], tuple[list[str], list[str]]]


@dataclasses.dataclass(frozen=True)
class Algorithm:
  """A registered algorithm: its sampler and the bounds that size sequences and vocabulary."""

  name: str
  sample: Sampler
  max_tokens: Callable[[int], int]  # size -> bound on len(input tokens) + len(output tokens)
  max_number: Callable[[int], int]  # size -> bound on any number token


ALGORITHMS: dict[str, Algorithm] = {}


def algorithm(name: str, *, max_tokens: Callable[[int], int],
              max_number: Callable[[int], int]) -> Callable[[Sampler], Sampler]:
  """Registers the decorated sampler as algorithm `name`, with its length and number bounds."""
  def register(sample: Sampler) -> Sampler:
    if name in ALGORITHMS:
      raise ValueError(f'algorithm {name!r} is registered twice')
    ALGORITHMS[name] = Algorithm(name, sample, max_tokens, max_number)
    return sample
  return register


def _words(values) -> list[str]:
  return [str(v) for v in np.asarray(values).tolist()]


def _values(rng: np.random.Generator, size: int) -> np.ndarray:
  return rng.integers(0, MAX_VALUE + 1, size=size)


def _max_edges(size: int) -> int:
  return size - 1 + size // 2


def _random_graph(rng: np.random.Generator, size: int) -> np.ndarray:
  """A connected graph as edges [E, 2], each pointing forward in a random order of the nodes.

  A random recursive tree (each node, in a random order, attached to a uniformly chosen earlier
  one) plus up to size // 2 random extra edges (self loops and repeats dropped), shuffled. The
  orientation makes it a DAG for topological sort; undirected uses ignore it.
  """
  order = rng.permutation(size)
  rank = np.argsort(order)
  parents = order[(rng.random(size - 1) * np.arange(1, size)).astype(np.int64)]
  extra_Xx2 = rng.integers(0, size, size=(size // 2, 2))
  extra_Xx2 = extra_Xx2[extra_Xx2[:, 0] != extra_Xx2[:, 1]]
  extra_Xx2 = np.where((rank[extra_Xx2[:, 0]] < rank[extra_Xx2[:, 1]])[:, None],
                       extra_Xx2, extra_Xx2[:, ::-1])
  edges_Ex2 = np.concatenate([np.stack([parents, order[1:]], axis=1), extra_Xx2])
  _, first = np.unique(edges_Ex2[:, 0] * size + edges_Ex2[:, 1], return_index=True)
  edges_Ex2 = edges_Ex2[first]
  return edges_Ex2[rng.permutation(len(edges_Ex2))]


def _edge_words(edges_Ex2: np.ndarray, link: str, weights_E=None) -> list[str]:
  words = []
  for e, (u, v) in enumerate(edges_Ex2.tolist()):
    if e:
      words.append('|')
    words += [str(u), link, str(v)]
    if weights_E is not None:
      words += [':', str(weights_E[e])]
  return words


def _undirected(rng: np.random.Generator, edges_Ex2: np.ndarray) -> np.ndarray:
  """The same edges with each endpoint order flipped at random, so order carries no signal."""
  flip = rng.random(len(edges_Ex2)) < 0.5
  return np.where(flip[:, None], edges_Ex2[:, ::-1], edges_Ex2)


def _neighbours(size: int, edges_Ex2: np.ndarray) -> list[list[int]]:
  """Sorted adjacency lists of the undirected graph."""
  adjacent = [[] for _ in range(size)]
  for u, v in edges_Ex2.tolist():
    adjacent[u].append(v)
    adjacent[v].append(u)
  return [sorted(a) for a in adjacent]


def _weighted_graph(rng: np.random.Generator, size: int):
  edges_Ex2 = _undirected(rng, _random_graph(rng, size))
  weights_E = rng.integers(1, MAX_VALUE + 1, size=len(edges_Ex2)).tolist()
  return edges_Ex2, weights_E


# --- Lists ----------------------------------------------------------------------------------------

@algorithm('insertion_sort', max_tokens=lambda n: 2 * n, max_number=lambda n: MAX_VALUE)
def _insertion_sort(rng, size):
  """The list in non-decreasing order."""
  values = _values(rng, size)
  return _words(values), _words(np.sort(values))


@algorithm('binary_search', max_tokens=lambda n: n + 3, max_number=lambda n: max(n, MAX_VALUE))
def _binary_search(rng, size):
  """A sorted list and a query key -> the first index whose value is >= the key (n if none)."""
  values = np.sort(_values(rng, size)).tolist()
  key = int(rng.integers(0, MAX_VALUE + 1))
  return _words(values) + ['?', str(key)], [str(bisect.bisect_left(values, key))]


@algorithm('minimum', max_tokens=lambda n: n + 1, max_number=lambda n: max(n - 1, MAX_VALUE))
def _minimum(rng, size):
  """The index of the first smallest value."""
  values = _values(rng, size)
  return _words(values), [str(np.argmin(values))]


@algorithm('count_inversions', max_tokens=lambda n: n + 1,
           max_number=lambda n: max(n * (n - 1) // 2, MAX_VALUE))
def _count_inversions(rng, size):
  """The number of pairs i < j with values[i] > values[j]."""
  values = _values(rng, size)
  inversions = np.triu(values[:, None] > values[None, :], k=1).sum()
  return _words(values), [str(inversions)]


@algorithm('activity_selection', max_tokens=lambda n: 4 * n - 1,
           max_number=lambda n: 2 * n - 1 + MAX_VALUE)
def _activity_selection(rng, size):
  """Intervals `start end` (half-open) -> a largest set of disjoint ones, by index.

  Greedy by earliest end, ties to the smaller index; the chosen indices are written in increasing
  order.
  """
  starts = rng.integers(0, 2 * size, size=size)
  ends = starts + rng.integers(1, MAX_VALUE + 1, size=size)
  chosen, free_from = [], 0
  for i in np.lexsort((np.arange(size), ends)).tolist():
    if starts[i] >= free_from:
      chosen.append(i)
      free_from = ends[i]
  words = []
  for i, (s, e) in enumerate(zip(starts.tolist(), ends.tolist())):
    words += ['|', str(s), str(e)] if i else [str(s), str(e)]
  return words, _words(sorted(chosen))


@algorithm('lcs_length', max_tokens=lambda n: 2 * n + 2, max_number=lambda n: max(n, 3))
def _lcs_length(rng, size):
  """Two strings of `size` letters 0..3 -> the length of their longest common subsequence."""
  a, b = rng.integers(0, 4, size=(2, size)).tolist()
  previous = [0] * (size + 1)
  for x in a:
    row = [0]
    for j, y in enumerate(b):
      row.append(previous[j] + 1 if x == y else max(previous[j + 1], row[j]))
    previous = row
  return _words(a) + ['|'] + _words(b), [str(previous[-1])]


# --- Graphs ---------------------------------------------------------------------------------------

@algorithm('bfs_order', max_tokens=lambda n: 4 * _max_edges(n) + 1 + n,
           max_number=lambda n: n - 1)
def _bfs_order(rng, size):
  """Undirected edges and a source -> the nodes in breadth-first visiting order."""
  edges_Ex2 = _undirected(rng, _random_graph(rng, size))
  source = int(rng.integers(0, size))
  adjacent = _neighbours(size, edges_Ex2)
  order, seen = [source], {source}
  for u in order:  # grows while it is read: the list is the queue
    for v in adjacent[u]:
      if v not in seen:
        seen.add(v)
        order.append(v)
  return _edge_words(edges_Ex2, '-') + ['?', str(source)], _words(order)


@algorithm('dfs_order', max_tokens=lambda n: 4 * _max_edges(n) + 1 + n,
           max_number=lambda n: n - 1)
def _dfs_order(rng, size):
  """Undirected edges and a source -> the nodes in depth-first preorder."""
  edges_Ex2 = _undirected(rng, _random_graph(rng, size))
  source = int(rng.integers(0, size))
  adjacent = _neighbours(size, edges_Ex2)
  # Marking nodes when popped (not pushed) and pushing neighbours largest first gives exactly the
  # recursive preorder that visits neighbours in increasing id order.
  order, seen, stack = [], set(), [source]
  while stack:
    u = stack.pop()
    if u not in seen:
      seen.add(u)
      order.append(u)
      stack += [v for v in reversed(adjacent[u]) if v not in seen]
  return _edge_words(edges_Ex2, '-') + ['?', str(source)], _words(order)


@algorithm('topological_sort', max_tokens=lambda n: 4 * _max_edges(n) - 1 + n,
           max_number=lambda n: n - 1)
def _topological_sort(rng, size):
  """Directed acyclic edges -> Kahn's order, taking the smallest ready node first."""
  edges_Ex2 = _random_graph(rng, size)
  successors = [[] for _ in range(size)]
  indegree = [0] * size
  for u, v in edges_Ex2.tolist():
    successors[u].append(v)
    indegree[v] += 1
  ready = [u for u in range(size) if indegree[u] == 0]
  heapq.heapify(ready)
  order = []
  while ready:
    u = heapq.heappop(ready)
    order.append(u)
    for v in successors[u]:
      indegree[v] -= 1
      if indegree[v] == 0:
        heapq.heappush(ready, v)
  return _edge_words(edges_Ex2, '->'), _words(order)


@algorithm('dijkstra', max_tokens=lambda n: 6 * _max_edges(n) + 1 + n,
           max_number=lambda n: MAX_VALUE * (n - 1))
def _dijkstra(rng, size):
  """Weighted undirected edges and a source -> every node's distance, in node id order."""
  edges_Ex2, weights_E = _weighted_graph(rng, size)
  source = int(rng.integers(0, size))
  adjacent = [[] for _ in range(size)]
  for (u, v), w in zip(edges_Ex2.tolist(), weights_E):
    adjacent[u].append((v, w))
    adjacent[v].append((u, w))
  distance = [None] * size
  frontier = [(0, source)]
  while frontier:
    d, u = heapq.heappop(frontier)
    if distance[u] is None:
      distance[u] = d
      for v, w in adjacent[u]:
        if distance[v] is None:
          heapq.heappush(frontier, (d + w, v))
  return _edge_words(edges_Ex2, '-', weights_E) + ['?', str(source)], _words(distance)


@algorithm('mst_weight', max_tokens=lambda n: 6 * _max_edges(n),
           max_number=lambda n: MAX_VALUE * (n - 1))
def _mst_weight(rng, size):
  """Weighted undirected edges -> the total weight of a minimum spanning tree (Kruskal)."""
  edges_Ex2, weights_E = _weighted_graph(rng, size)
  root = list(range(size))

  def find(u):
    while root[u] != u:
      root[u] = root[root[u]]
      u = root[u]
    return u

  total = 0
  for e in np.argsort(weights_E, kind='stable').tolist():
    u, v = (find(x) for x in edges_Ex2[e].tolist())
    if u != v:
      root[u] = v
      total += weights_E[e]
  return _edge_words(edges_Ex2, '-', weights_E), [str(total)]


class ClrsTask(base.Task):
  """One registered algorithm drawn uniformly per example, on a random input of `size`."""

  name = 'clrs'
  # algorithm_id: the algorithm's index in ALGORITHMS; input_size: the size, at every position.
  feature_names = ('algorithm_id', 'input_size')

  def __init__(self, algorithms: tuple[str, ...] | None = None, max_size: int = 32):
    names = tuple(ALGORITHMS) if algorithms is None else tuple(dict.fromkeys(algorithms))
    unknown = [n for n in names if n not in ALGORITHMS]
    if unknown or not names:
      raise ValueError(f'unknown clrs algorithms {unknown or "(none given)"}; '
                       f'known: {", ".join(ALGORITHMS)}')
    if max_size < 2:
      raise ValueError(f'clrs max_size must be >= 2, got {max_size}')
    self.algorithms = names
    self.max_size = max_size
    # The vocabulary covers every registered algorithm whatever the subset, so token ids agree
    # between tasks built with different subsets.
    max_number = max(a.max_number(max_size) for a in ALGORITHMS.values())
    self._vocab = ('<pad>', *_SEPARATORS, *ALGORITHMS, *(str(v) for v in range(max_number + 1)))
    self._ids = {word: i for i, word in enumerate(self._vocab)}
    self._algorithm_ids = {name: float(i) for i, name in enumerate(ALGORITHMS)}

  @property
  def vocab(self) -> tuple[str, ...]:
    return self._vocab

  def valid_sizes(self) -> tuple[int, int]:
    return 2, self.max_size

  def seq_len(self, max_size: int) -> int:
    # The algorithm token, '=' and '<eos>' around each algorithm's input and output.
    return 3 + max(ALGORITHMS[n].max_tokens(s) for n in self.algorithms
                   for s in range(2, max_size + 1))

  def sample(self, rng: np.random.Generator, size: int) -> base.Example:
    if not 2 <= size <= self.max_size:
      raise ValueError(f'clrs size {size} not in [2, {self.max_size}]')
    name = self.algorithms[rng.integers(len(self.algorithms))]
    inputs, outputs = ALGORITHMS[name].sample(rng, size)
    words = [name, *inputs, '=', *outputs, '<eos>']
    tokens = np.array([self._ids[w] for w in words], np.int32)
    targets = np.append(tokens[1:], base.PAD).astype(np.int32)
    loss_mask = np.zeros(len(tokens), bool)
    equals = len(inputs) + 1
    loss_mask[equals:equals + len(outputs) + 1] = True  # targets: the outputs, then '<eos>'
    full = lambda value: np.full(len(tokens), value, np.float32)
    return base.Example(
        tokens=tokens, targets=targets, loss_mask=loss_mask, complexity=full(size),
        features=dict(algorithm_id=full(self._algorithm_ids[name]), input_size=full(size)))
