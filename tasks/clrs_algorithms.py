"""The CLRS-30 algorithms as CLRS-Text states them: each one's printed inputs and outputs.

A numpy transcription of `clrs/_src/algorithms/` in google-deepmind/clrs (dm-clrs 2.0.3), without
its probes or hints. Each algorithm returns the input and output probes that
`clrs/_src/clrs_text/clrs_utils.py` prints (`_create_input_feature_strs`,
`_create_output_feature_strs`): the inputs but `pos` (and `adj`, redundant with `A`) in spec
order, then the outputs — pointers, masks and categories as integers, a `mask_one` as its index,
a `should_be_permutation` as the keys in its order. Three-decimal floats tie, so where the output
depends on how ties break, the function breaks them as CLRS's function of the same name does:
the text is CLRS-Text's, not an equivalent answer.

An algorithm is one function of the data its sampler draws (tasks/clrs_samplers.py) returning
its fields' values, inputs then outputs, registered with
`@algorithm(name, 'inputs -> outputs', draw)`.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Callable

import numpy as np

from tasks import clrs_samplers as samplers
from tasks.clrs_samplers import truncate


@dataclasses.dataclass(frozen=True)
class Algorithm:
  """A registered algorithm: its CLRS-Text fields, input distribution and outputs."""

  name: str
  inputs: tuple[str, ...]  # the printed input fields, in order
  outputs: tuple[str, ...]  # the printed output fields, in order
  draw: Callable[..., list]  # (rng, size) -> the sampler's data, see clrs_samplers
  run: Callable[..., tuple]  # *data -> the fields' values: inputs, then outputs
  min_size: int  # the smallest size CLRS samples it at

  def sample(self, rng, size: int) -> tuple[dict, dict]:
    """Input and output fields, {name: value}, of one example at `size` drawn from `rng` (a
    numpy Generator, or see clrs_samplers), floats truncated as CLRS truncates them."""
    values = self.run(*[truncate(datum) for datum in self.draw(rng, size)])
    return (dict(zip(self.inputs, values)),
            dict(zip(self.outputs, values[len(self.inputs):], strict=True)))


ALGORITHMS: dict[str, Algorithm] = {}


def algorithm(name: str, fields: str, draw: Callable[..., list], *,
              min_size: int = 2) -> Callable[[Callable], Callable]:
  """Registers the decorated function as algorithm `name`; `fields` reads 'in, puts -> outs'."""
  inputs, outputs = (tuple(f.strip() for f in side.split(',')) for side in fields.split('->'))

  def register(run: Callable) -> Callable:
    if name in ALGORITHMS:
      raise ValueError(f'algorithm {name!r} is registered twice')
    ALGORITHMS[name] = Algorithm(name, inputs, outputs, draw, run, min_size)
    return run
  return register


# --- Sorting and searching -----------------------------------------------------------------------

@algorithm('insertion_sort', 'key -> pred', samplers.keys)
@algorithm('bubble_sort', 'key -> pred', samplers.keys)
@algorithm('heapsort', 'key -> pred', samplers.keys)
@algorithm('quicksort', 'key -> pred', samplers.keys)
def _sort(key):
  """The `pred` permutation is printed as the keys in its order: the sorted keys, whatever the
  sort."""
  return key, np.sort(key)


@algorithm('minimum', 'key -> min', samplers.keys)
def _minimum(key):
  """The index of the first smallest key."""
  return key, np.argmin(key)


@algorithm('binary_search', 'key, target -> return', samplers.sorted_keys_and_target)
def _binary_search(target, key):
  """The first index whose key is >= target, the last index if none is."""
  return key, target, min(np.searchsorted(key, target), len(key) - 1)


@algorithm('quickselect', 'key -> median', samplers.keys)
def _quickselect(key):
  """The index of a key of rank size // 2, the one Lomuto partitions around the last key find."""
  keys, index = key.copy(), np.arange(len(key))
  lo, hi, rank = 0, len(key) - 1, len(key) // 2
  while True:
    mid = lo
    for j in range(lo, hi):
      if keys[j] <= keys[hi]:
        keys[[mid, j]], index[[mid, j]] = keys[[j, mid]], index[[j, mid]]
        mid += 1
    keys[[mid, hi]], index[[mid, hi]] = keys[[hi, mid]], index[[hi, mid]]
    if rank == mid - lo:
      return key, index[mid]
    if rank < mid - lo:
      hi = mid - 1
    else:
      lo, rank = mid + 1, rank - (mid - lo) - 1


@algorithm('find_maximum_subarray_kadane', 'key -> start, end', samplers.signed_keys)
def _kadane(key):
  """The first and last index of a maximum-sum subarray: the first Kadane's scan meets."""
  best, best_start, best_end = key[0], 0, 0
  total, start = key[0], 0
  for j in range(1, len(key)):
    if total + key[j] >= key[j]:
      total += key[j]
    else:
      total, start = key[j], j
    if total > best:
      best, best_start, best_end = total, start, j
  return key, best_start, best_end


# --- Dynamic programming -------------------------------------------------------------------------

@algorithm('matrix_chain_order', 'p -> s', samplers.keys)
def _matrix_chain_order(p):
  """s[i, j], 1 <= i < j < size: where a cheapest product of matrices i..j (matrix i being
  p[i - 1] x p[i]) splits last; 0 elsewhere.

  CLRS's rounds: each computes every chain that splits into two chains known before it, from
  their previous costs, keeping a split found in an earlier round unless strictly cheaper (the
  first k on ties), until a round changes no cost (a key truncated to 0.0 can end them early).
  """
  n = len(p)
  cost, split, known = np.zeros((n, n)), np.zeros((n, n), np.int64), np.eye(n, dtype=bool)
  while True:
    before, known_before = cost.copy(), known.copy()
    for i, j in itertools.combinations(range(1, n), 2):
      k = np.arange(i, j)
      k = k[known_before[i, k] & known_before[k + 1, j]]
      if len(k):
        costs = before[i, k] + before[k + 1, j] + p[i - 1] * p[k] * p[j]
        if not known_before[i, j] or costs.min() < cost[i, j]:
          cost[i, j], split[i, j] = costs.min(), k[np.argmin(costs)]
        known[i, j] = True
    if np.all(cost == before):
      return p, split


@algorithm('lcs_length', 'string, key -> b', samplers.two_strings)
def _lcs_length(x, y):
  """CLRS's arrows b (0: match, 1: up, 2: left, up on ties) of the LCS table of x and y, as the
  node pairs (x then y) of a (size x size) matrix: row i < len(x) has b[i] in y's columns, -1
  elsewhere (masked). `string` marks y's nodes; `key` is x then y."""
  c, b = np.zeros((len(x), len(y)), np.int64), np.zeros((len(x), len(y)), np.int64)
  for i, j in itertools.product(range(len(x)), range(len(y))):
    if x[i] == y[j]:
      c[i, j], b[i, j] = (c[i - 1, j - 1] if i and j else 0) + 1, 0
    elif i and j:
      c[i, j], b[i, j] = (c[i - 1, j], 1) if c[i - 1, j] >= c[i, j - 1] else (c[i, j - 1], 2)
    elif i:  # the first column
      c[i, j], b[i, j] = c[i - 1, j], 1
    else:  # the first row: 1 until a match, then left
      c[i, j], b[i, j] = (1, 2) if j and c[i, j - 1] else (0, 1)
  size = len(x) + len(y)
  arrows = np.full((size, size), -1)
  arrows[:len(x), len(x):] = b
  return np.repeat([0, 1], [len(x), len(y)]), np.concatenate([x, y]), arrows


@algorithm('optimal_bst', 'p, q -> root', samplers.probabilities)
def _optimal_bst(p, q):
  """root[i, j]: the root of an optimal search tree on keys i..j - 1 (gaps i..j), the first on
  ties. `p` is printed with a trailing 0 to the length of `q`."""
  n = len(p)
  cost, weight = np.diag(q), np.diag(q)
  root = np.zeros((n + 1, n + 1), np.int64)
  for length in range(1, n + 1):
    for i in range(n - length + 1):
      j = i + length
      cost[i, j] = 1e9
      weight[i, j] = weight[i, j - 1] + p[j - 1] + q[j]
      for r in range(i, j):
        if cost[i, r] + cost[r + 1, j] + weight[i, j] < cost[i, j]:
          cost[i, j], root[i, j] = cost[i, r] + cost[r + 1, j] + weight[i, j], r
  return np.append(p, 0.), q, root


# --- Greedy --------------------------------------------------------------------------------------

@algorithm('activity_selector', 's, f -> selected', samplers.intervals)
def _activity_selector(s, f):
  """A mask of the activities chosen by earliest finish first (numpy's argsort order on ties)."""
  order = np.argsort(f)
  selected = np.zeros(len(s), np.int64)
  last = order[0]
  selected[last] = 1
  for i in order[1:]:
    if s[i] >= f[last]:
      selected[i], last = 1, i
  return s, f, selected


@algorithm('task_scheduling', 'd, w -> selected', samplers.deadlines_and_weights)
def _task_scheduling(d, w):
  """A mask of the unit tasks scheduled heaviest first while each still meets its deadline."""
  order = np.argsort(-w)
  selected = np.zeros(len(d), np.int64)
  selected[order[0]], scheduled = 1, 1
  for i in order[1:]:
    if scheduled < d[i]:
      selected[i], scheduled = 1, scheduled + 1
  return d, w, selected


# --- Graphs --------------------------------------------------------------------------------------

def _depth_first(A, roots):
  """Depth-first search from each root in turn that is not yet visited, neighbours (A != 0) in
  increasing order: (parent of each node, its tree's root; roots their own), finishing order."""
  parent, tree, finished = np.arange(len(A)), np.full(len(A), -1), []

  def visit(u, root):
    tree[u] = root
    for v in np.flatnonzero(A[u]):
      if tree[v] < 0:
        parent[v] = u
        visit(v, root)
    finished.append(u)

  for root in roots:
    if tree[root] < 0:
      visit(root, root)
  return parent, tree, finished


@algorithm('dfs', 'A -> pi', samplers.directed_graph)
def _dfs(A):
  """Parents of the depth-first forest, roots in id order."""
  return A, _depth_first(A, range(len(A)))[0]


@algorithm('topological_sort', 'A -> topo, topo_head', samplers.dag)
def _topological_sort(A):
  """The depth-first topological order as a list: topo_head the first node, topo[u] the node
  after u (the last its own)."""
  finished = _depth_first(A, range(len(A)))[2]
  topo = np.arange(len(A))
  topo[finished[1:]] = finished[:-1]
  return A, topo, finished[-1]


@algorithm('strongly_connected_components', 'A -> scc_id', samplers.community_graph, min_size=4)
def _strongly_connected_components(A):
  """Kosaraju: each node's component named by the node its second search (on the transpose, by
  decreasing finishing time) entered it from."""
  finished = _depth_first(A, range(len(A)))[2]
  return A, _depth_first(A.T, finished[::-1])[1]


def _low_links(A):
  """Depth-first search of an undirected graph as `_depth_first`: (parent, discovery time from
  1, low link: the earliest discovery reached by a back edge from the node's subtree)."""
  parent, time, low = np.arange(len(A)), np.zeros(len(A), np.int64), np.zeros(len(A), np.int64)

  def visit(u):
    time[u] = low[u] = time.max() + 1
    for v in np.flatnonzero(A[u]):
      if not time[v]:
        parent[v] = u
        visit(v)
        low[u] = min(low[u], low[v])
      elif v != parent[u]:
        low[u] = min(low[u], time[v])

  for root in range(len(A)):
    if not time[root]:
      visit(root)
  return parent, time, low


@algorithm('articulation_points', 'A -> is_cut', samplers.sparse_graph)
def _articulation_points(A):
  """A mask of the cut vertices: a root with two children or more, another node with a child
  whose subtree reaches no earlier node."""
  parent, time, low = _low_links(A)
  is_root = parent == np.arange(len(A))
  child = np.flatnonzero(~is_root)
  cut_below = child[~is_root[parent[child]] & (low[child] >= time[parent[child]])]
  is_cut = np.zeros(len(A), np.int64)
  is_cut[parent[cut_below]] = 1
  is_cut[is_root & (np.bincount(parent[child], minlength=len(A)) > 1)] = 1
  return A, is_cut


@algorithm('bridges', 'A -> is_bridge', samplers.sparse_graph)
def _bridges(A):
  """Per node pair: 1 for a bridge, 0 for another edge or the diagonal, -1 for no edge."""
  parent, time, low = _low_links(A)
  is_bridge = ((A + np.eye(len(A))) != 0).astype(np.int64) - 1
  for v in np.flatnonzero((parent != np.arange(len(A))) & (low > time[parent])):
    is_bridge[v, parent[v]] = is_bridge[parent[v], v] = 1
  return A, is_bridge


@algorithm('bfs', 's, A -> pi', samplers.graph_and_source)
def _bfs(A, s):
  """Parents of the breadth-first tree from s: the smallest-id neighbour one level closer
  (unreached nodes and s their own)."""
  parent, reached = np.arange(len(A)), np.zeros(len(A), bool)
  reached[s] = True
  while True:
    edges = (A > 0) & reached[:, None]
    new = edges.any(0) & ~reached
    if not new.any():
      return s, A, parent
    parent[new] = np.argmax(edges[:, new], axis=0)
    reached |= new


@algorithm('mst_kruskal', 'A -> in_mst', samplers.sparse_weighted_graph)
def _mst_kruskal(A):
  """A mask of the node pairs on Kruskal's minimum spanning forest (edges by numpy's argsort of
  their weights, listed row by row)."""
  us, vs = np.nonzero(np.triu(A > 0, k=1))
  root, in_mst = np.arange(len(A)), np.zeros(A.shape, np.int64)

  def find(u):
    while root[u] != u:
      u = root[u]
    return u

  for e in np.argsort(A[us, vs]):
    u, v = find(us[e]), find(vs[e])
    if u != v:
      root[u] = v
      in_mst[us[e], vs[e]] = in_mst[vs[e], us[e]] = 1
  return A, in_mst


def _closest_first(A, s, through):
  """Prim's and Dijkstra's loop: settle the queued node of least key (the first in numpy's
  argsort), then key[v] = through(key[u], A[u, v]) for the unsettled neighbours it improves.
  Returns the parents (unreached nodes and s their own)."""
  key, settled, queued = np.zeros(len(A)), np.zeros(len(A)), np.zeros(len(A))
  parent = np.arange(len(A))
  queued[s] = 1
  for _ in range(len(A)):
    u = np.argsort(key + (1. - queued) * 1e9)[0]
    if not queued[u]:
      break
    settled[u], queued[u] = 1, 0
    for v in np.flatnonzero(A[u]):
      if not settled[v] and (not queued[v] or through(key[u], A[u, v]) < key[v]):
        parent[v], key[v], queued[v] = u, through(key[u], A[u, v]), 1
  return parent


@algorithm('mst_prim', 's, A -> pi', samplers.weighted_graph_and_source)
def _mst_prim(A, s):
  """Parents of Prim's minimum spanning tree of s's component, grown from s."""
  return s, A, _closest_first(A, s, lambda _, weight: weight)


@algorithm('dijkstra', 's, A -> pi', samplers.weighted_graph_and_source)
def _dijkstra(A, s):
  """Parents of Dijkstra's shortest-path tree from s."""
  return s, A, _closest_first(A, s, lambda distance, weight: distance + weight)


@algorithm('bellman_ford', 's, A -> pi', samplers.weighted_graph_and_source)
def _bellman_ford(A, s):
  """Parents of the shortest-path tree from s, relaxing every edge of the reached nodes in rounds
  until no distance changes."""
  distance, parent, reached = np.zeros(len(A)), np.arange(len(A)), np.zeros(len(A), bool)
  reached[s] = True
  while True:
    before, was_reached = distance.copy(), reached.copy()
    for u in np.flatnonzero(was_reached):
      for v in np.flatnonzero(A[u]):
        if not reached[v] or before[u] + A[u, v] < distance[v]:
          distance[v], parent[v] = before[u] + A[u, v], u
        reached[v] = True
    if np.all(distance == before):
      return s, A, parent


@algorithm('dag_shortest_paths', 's, A -> pi', samplers.weighted_dag_and_source)
def _dag_shortest_paths(A, s):
  """Parents of the shortest-path tree from s, relaxing nodes in depth-first topological order."""
  finished = _depth_first(A, [s])[2]
  distance, parent, reached = np.zeros(len(A)), np.arange(len(A)), np.zeros(len(A), bool)
  for u in finished[:0:-1]:  # the first to finish is a sink: nothing to relax
    reached[u] = True
    for v in np.flatnonzero(A[u]):
      if not reached[v] or distance[u] + A[u, v] < distance[v]:
        distance[v], parent[v], reached[v] = distance[u] + A[u, v], u, True
  return s, A, parent


@algorithm('floyd_warshall', 'A -> Pi', samplers.weighted_graph)
def _floyd_warshall(A):
  """Pi[i, j]: the node before j on a shortest path from i (i where j is unreached)."""
  distance, known = A.copy(), (A + np.eye(len(A))) != 0
  before = np.repeat(np.arange(len(A))[:, None], len(A), axis=1)
  for k in range(len(A)):  # row and column k stay as they are in round k
    via = known[:, k, None] & known[None, k, :]
    through = distance[:, k, None] + distance[None, k, :]
    better = via & (~known | (through < distance))
    distance = np.where(better, through, distance)
    before = np.where(better, before[k][None, :], before)
    known |= via
  return A, before


# --- Strings and geometry ------------------------------------------------------------------------

@algorithm('naive_string_matcher', 'string, key -> match', samplers.haystack_and_needle, min_size=3)
@algorithm('kmp_matcher', 'string, key -> match', samplers.haystack_and_needle, min_size=3)
def _string_matcher(haystack, needle):
  """Where the needle first occurs in the haystack. `string` marks the needle's nodes; `key` is
  the haystack then the needle."""
  at = next(i for i in range(len(haystack)) if np.array_equal(haystack[i:i + len(needle)], needle))
  return np.repeat([0, 1], [len(haystack), len(needle)]), np.concatenate([haystack, needle]), at


@algorithm('segments_intersect', 'x, y -> intersect', samplers.segments)
def _segments_intersect(xs, ys):
  """1 if segment 0-1 and segment 2-3 meet (CLRS's orientation test), else 0."""
  def direction(i, j, k):
    return (xs[k] - xs[i]) * (ys[j] - ys[i]) - (xs[j] - xs[i]) * (ys[k] - ys[i])

  def on_segment(i, j, k):
    return (min(xs[i], xs[j]) <= xs[k] <= max(xs[i], xs[j])
            and min(ys[i], ys[j]) <= ys[k] <= max(ys[i], ys[j]))

  turns = [direction(2, 3, 0), direction(2, 3, 1), direction(0, 1, 2), direction(0, 1, 3)]
  straddle = turns[0] * turns[1] < 0 and turns[2] * turns[3] < 0
  touch = any(turns[k] == 0 and on_segment(*ends, k)
              for k, ends in enumerate([(2, 3), (2, 3), (0, 1), (0, 1)]))
  return xs, ys, int(straddle or touch)


@algorithm('graham_scan', 'x, y -> in_hull', samplers.disk_points)
@algorithm('jarvis_march', 'x, y -> in_hull', samplers.disk_points)
def _convex_hull(xs, ys):
  """A mask of the convex hull's vertices (no three points are collinear), by Jarvis' march."""
  def clockwise(i, j, k):  # CLRS's `counter_clockwise`: k is not left of i -> j
    return k not in (i, j) and (
        (xs[j] - xs[i]) * (ys[k] - ys[i]) - (ys[j] - ys[i]) * (xs[k] - xs[i])) <= 0

  first = min(range(len(xs)), key=lambda i: (ys[i], xs[i]))
  in_hull, last = np.zeros(len(xs), np.int64), first
  while True:
    in_hull[last], end = 1, 0
    for i in range(len(xs)):
      if end == last or clockwise(last, end, i):
        end = i
    if in_hull[end]:
      return xs, ys, in_hull
    last = end
