"""CLRS's input distributions: what each algorithm's sampler draws, in numpy.

A transcription of `clrs/_src/samplers.py` in google-deepmind/clrs (dm-clrs 2.0.3): each draw is
`Sampler._sample_data` of an algorithm's sampler class, drawing in the same order from the same
methods of the generator it is given, so that CLRS's own `RandomState` behind those methods
(`integers` for `randint`) reproduces CLRS's samples exactly; `truncate` is `Sampler._trunc_array`
on one datum, to CLRS-Text's `DECIMALS`.

A draw is `(rng, size) -> list of data`, `rng` a numpy Generator or anything with its `uniform`,
`integers`, `binomial`, `choice` and `permutation` methods.
"""

import functools
import itertools

import numpy as np

DECIMALS = 3  # CLRS-Text's floats: huggingface_generators.clrs_generator's num_decimals_in_float


def truncate(datum):
  """`Sampler._trunc_array` on one datum: floats cut toward zero to DECIMALS decimals."""
  if isinstance(datum, float) or (isinstance(datum, np.ndarray)
                                  and np.issubdtype(datum.dtype, np.floating)):
    return np.trunc(datum * 10**DECIMALS) / 10**DECIMALS
  return datum


def keys(rng, size):
  """SortingSampler: keys ~ U[0, 1)."""
  return [rng.uniform(0., 1., size)]


def sorted_keys_and_target(rng, size):
  """SearchSampler: sorted keys ~ U[0, 1) and a target ~ U[0, 1)."""
  key = np.sort(rng.uniform(0., 1., size))
  return [rng.uniform(0., 1.), key]


def signed_keys(rng, size):
  """MaxSubarraySampler: keys ~ U[-1, 1)."""
  return [rng.uniform(-1., 1., size)]


def two_strings(rng, size):
  """LCSSampler: strings over 4 letters of lengths size - size // 2 and size // 2."""
  return [rng.integers(0, 4, size - size // 2), rng.integers(0, 4, size // 2)]


def probabilities(rng, size):
  """OptimalBSTSampler: 2 size + 1 weights ~ U[0, 1) summing to 1, split into p (size keys) and
  q (size + 1 gaps)."""
  weights = rng.uniform(0., 1., 2 * size + 1)
  weights /= np.sum(weights)
  return [weights[:size], weights[size:]]


def intervals(rng, size):
  """ActivitySampler: start and finish the min and max of two U[0, 1) draws."""
  a, b = rng.uniform(0., 1., size), rng.uniform(0., 1., size)
  return [np.minimum(a, b), np.maximum(a, b)]


def deadlines_and_weights(rng, size):
  """TaskSampler: deadlines uniform in 1..size, weights ~ U[0, 1)."""
  return [rng.integers(0, size, size) + 1, rng.uniform(0., 1., size)]


def _er_graph(rng, size, p, directed=False, acyclic=False, weighted=False):
  """Sampler._random_er_graph: each ordered pair (self loops too) an edge with probability p.

  Undirected keeps a pair when both directions came up; acyclic keeps the upper triangle and
  shuffles the nodes; weights ~ U[0, 1), made symmetric as sqrt(w_uv w_vu + 1e-3) if undirected.
  """
  A = rng.binomial(1, p, (size, size))
  if not directed:
    A = A * A.T
  elif acyclic:
    order = rng.permutation(size)
    A = np.triu(A, k=1)[order][:, order]
  if weighted:
    weights = rng.uniform(0., 1., (size, size))
    if not directed:
      weights = np.sqrt(weights * weights.T + 1e-3)
    A = A * weights
  return A


def _graph(rng, size, *, p, directed=False, acyclic=False, weighted=False, source=False):
  """The graph samplers: an ER graph, then a uniform source node if `source`."""
  A = _er_graph(rng, size, p, directed, acyclic, weighted)
  return [A, rng.choice(size)] if source else [A]


# The graph samplers, by CLRS's class: Dfs, Bfs, Topo, Articulation (p = 0.2 in each direction:
# 4% of pairs are edges), MST, BellmanFord (also Dijkstra's and Prim's), DAGPath, FloydWarshall.
directed_graph = functools.partial(_graph, p=0.5, directed=True)
graph_and_source = functools.partial(_graph, p=0.5, source=True)
dag = functools.partial(_graph, p=0.5, directed=True, acyclic=True)
sparse_graph = functools.partial(_graph, p=0.2)
sparse_weighted_graph = functools.partial(_graph, p=0.2, weighted=True)
weighted_graph_and_source = functools.partial(_graph, p=0.5, weighted=True, source=True)
weighted_dag_and_source = functools.partial(_graph, p=0.5, directed=True, acyclic=True,
                                            weighted=True, source=True)
weighted_graph = functools.partial(_graph, p=0.5, weighted=True)


def community_graph(rng, size):
  """SccSampler (Sampler._random_community_graph): 4 directed ER(0.5) communities of size // 4
  nodes (the last takes the rest), every ordered pair flipped with probability 0.01 except from
  a later community to an earlier one, nodes shuffled. Floats, as CLRS builds it."""
  bounds = [i * (size // 4) for i in range(4)] + [size]
  A = np.zeros((size, size))
  for lo, hi in itertools.pairwise(bounds):
    A[lo:hi, lo:hi] = _er_graph(rng, hi - lo, 0.5, directed=True)
  community = np.searchsorted(bounds[1:-1], np.arange(size), side='right')
  toggle = _er_graph(rng, size, 0.01, directed=True) * (community[:, None] <= community[None, :])
  A = np.where(toggle > 0, (1. - (A > 0)) * toggle, A)
  order = rng.permutation(size)
  return [A[order][:, order]]


def haystack_and_needle(rng, size):
  """MatcherSampler: a needle of max(1, size // 5) letters (of 4) embedded at a uniform position
  in a random haystack of the remaining length."""
  needle_length = 1 if size < 5 else size // 5
  needle = rng.integers(0, 4, needle_length)
  haystack = rng.integers(0, 4, size - needle_length)
  at = rng.choice(size - 2 * needle_length)
  haystack[at:at + needle_length] = needle
  return [haystack, needle]


def _crosses(xs, ys):
  """SegmentsSampler's quick test of whether segments 0-1 and 2-3 cross (collinearity ignored)."""
  ccw = lambda a, b, c: (ys[c] - ys[a]) * (xs[b] - xs[a]) > (ys[b] - ys[a]) * (xs[c] - xs[a])
  return ccw(0, 2, 3) != ccw(1, 2, 3) and ccw(0, 1, 2) != ccw(0, 1, 3)


def segments(rng, size):
  """SegmentsSampler: 4 endpoints ~ U[0, 1)^2 whatever the size, redrawn until the segments cross
  or not as a fair coin says."""
  del size
  crossing = rng.binomial(1, 0.5)
  while True:
    xs, ys = rng.uniform(0., 1., 4), rng.uniform(0., 1., 4)
    if _crosses(xs, ys) == crossing:
      return [xs, ys]


@functools.cache
def _triples(size: int) -> np.ndarray:
  return np.array(list(itertools.combinations(range(size), 3)), np.int64).reshape(-1, 3).T


def disk_points(rng, size):
  """ConvexHullSampler: points uniform on the disk of radius 2 at the origin, redrawn (at most
  1000 times) while three of them, truncated, are collinear within 1e-12.

  CLRS truncates these once for that test and once more with every sampler's data; truncating
  is not idempotent (1.001 * 1000 rounds below 1001), so they are truncated twice here too.
  """
  for _ in range(1000):
    theta = rng.uniform(0., 2. * np.pi, size)
    radius = 2. * np.sqrt(rng.uniform(0., 1., size))
    xs, ys = truncate(radius * np.cos(theta)), truncate(radius * np.sin(theta))
    i, j, k = _triples(size)
    cross = (xs[j] - xs[i]) * (ys[k] - ys[i]) - (ys[j] - ys[i]) * (xs[k] - xs[i])
    if not np.any(np.abs(cross) < 1e-12):
      return [xs, ys]
  raise RuntimeError(f'no {size} points without three collinear in 1000 draws')
