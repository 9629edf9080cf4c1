"""BREVO: reasoning breadth — list every node a query node depends on, dependencies first.

After the BREVO task of Physics of Language Models (part 4.1), as used by the ANIRA paper
(N = 3-30 nodes, D = 6). One example is a random DAG of N = `size` nodes:

- Generation order 0..N-1 is a hidden topological order. Nodes 0..L-1 are the leaves (no
  parents), L uniform in [1, max(1, N // 3)]. Every later node k draws a parent count uniform in
  1..4 and takes that many distinct parents among nodes j < k that are still *open*: out-degree
  below 4, or a hub (fewer if fewer are open; at least one always is, since the non-leaves before
  k use at most 4 (k - L) of the 4 k parent slots).
- Hubs: each node is a hub with probability `hub_prob`. A hub is exempt from the out-degree cap
  and is drawn as a parent with weight `hub_weight` (others weight 1; weighted sampling without
  replacement by Efraimidis-Spirakis keys), so hubs really gather children. `hub_prob=0` gives
  the paper's plain rule, out-degree <= 4 for every node.
- A leaf that has no child yet is always taken first, so every node appears in the edge list
  (this needs at least L non-leaves, hence L <= N // 3).
- Node names are a random permutation of a fixed pool of `max_nodes` name tokens 'n0', 'n1', ...,
  so names carry no information about the structure.

Layout (tokens, language-model style: `targets[i] = tokens[i + 1]`, the last target is `<pad>`):

    p1 c1 , p2 c2 , ... pE cE , ? q = a1 a2 ... aA <eos>

The edges ("parent child ,") come in a uniformly shuffled order. The query q is drawn uniformly
among the nodes with at least half as many ancestors as the node with most, so the answer grows
with N (mean length about 5 at N = 10, 12 at N = 30) and is never empty. The answer
a1..aA is every ancestor of q (every node q depends on, transitively), q itself excluded, in the
post-order of a depth-first search from q over parent links that visits a node's parents in
increasing name-token order (n0 before n1 ...): a node is emitted once all its parents have
been. The order is a function of the graph and names alone (not of the shuffle), it is
topological (each node after all its parents), and it starts with a leaf. `loss_mask` is true
from '=' to the last answer node, i.e. wherever the target is an answer node or '<eos>'.

Annotations. Every per-token array is defined at the *answer positions* — the A positions whose
target is an answer node (from '=' to the second-to-last answer node) — and is 0 at every other
position, the one whose target is '<eos>' included. At the position whose target is a_j
(j = 1..A), with S_j = {a_1, ..., a_{j-1}} the nodes already emitted and Anc the answer set:

- `dfs_depth`: the depth of a_j in the DFS tree of the search above (q = 0, a parent discovered
  from a node at depth d has depth d + 1): the recursion depth at which a_j is emitted. It lies
  between a_j's shortest and longest distance from q.
- `complexity` = `dfs_depth`: to name the next node the model must trace the search that many
  dependency hops down from the query.
- `frontier_size`: |{v in Anc \\ S_j : every parent of v is in S_j}| — the nodes that could be
  emitted next in some topological order (a_j among them, so >= 1).
- `newly_enabled`: the ancestors v not in S_j + {a_j} whose last unemitted parent is a_j — the
  nodes that join the frontier by emitting a_j (q itself is not counted).
- `graph_size`: N. `num_ancestors`: A = |Anc|.
- `out_degree`, `in_degree`: a_j's number of children and of parents in the whole graph.
- `is_hub`: 1 if a_j was drawn as a hub (it may still have out-degree <= 4).
"""

from __future__ import annotations

import numpy as np

from tasks import base

_MAX_PARENTS = 4
_MAX_OUT_DEGREE = 4  # for non-hub nodes
_SPECIALS = ('<pad>', '<eos>', ',', '?', '=')
_EOS, _COMMA, _QUERY, _EQUALS = 1, 2, 3, 4
_FIRST_NAME = len(_SPECIALS)


class BrevoTask(base.Task):
  """All ancestors of a query node of a random DAG with N nodes, in DFS post-order."""

  name = 'brevo'
  feature_names = ('dfs_depth', 'frontier_size', 'newly_enabled', 'graph_size', 'out_degree',
                   'in_degree', 'is_hub', 'num_ancestors')

  def __init__(self, max_nodes: int = 64, hub_prob: float = 0.1, hub_weight: float = 4.0):
    if max_nodes < 3:
      raise ValueError(f'brevo needs max_nodes >= 3, got {max_nodes}')
    if not 0.0 <= hub_prob <= 1.0:
      raise ValueError(f'hub_prob must be in [0, 1], got {hub_prob}')
    if hub_weight <= 0.0:
      raise ValueError(f'hub_weight must be positive, got {hub_weight}')
    self.max_nodes = max_nodes
    self.hub_prob = hub_prob
    self.hub_weight = hub_weight

  @property
  def vocab(self) -> tuple[str, ...]:
    return _SPECIALS + tuple(f'n{i}' for i in range(self.max_nodes))

  def valid_sizes(self) -> tuple[int, int]:
    return 3, self.max_nodes

  def seq_len(self, max_size: int) -> int:
    # Node k has at most min(4, k) parents (node 0 is always a leaf), the answer at most N - 1
    # nodes; 3 tokens per edge, then '? q =', the answer and '<eos>'.
    edges = sum(min(_MAX_PARENTS, k) for k in range(1, max_size))
    return 3 * edges + 3 + (max_size - 1) + 1

  def _graph(self, rng: np.random.Generator, n: int) -> tuple[list[list[int]], list[bool], int]:
    """A random DAG in generation (topological) order: (parents per node, hub flags, L)."""
    num_leaves = int(rng.integers(1, max(1, n // 3) + 1))
    num_parents = rng.integers(1, _MAX_PARENTS + 1, size=n).tolist()
    hub_N = rng.random(n) < self.hub_prob
    # keys[k][j]: priority of j as a parent of k; taking the top keys u ** (1 / w) is a weighted
    # draw without replacement (Efraimidis-Spirakis). Plain lists: the loop below is over a few
    # dozen small items, where numpy's per-call overhead would dominate.
    keys = (rng.random((n, n)) ** (1.0 / np.where(hub_N, self.hub_weight, 1.0))).tolist()
    hub = hub_N.tolist()
    out_degree = [0] * n
    parents: list[list[int]] = [[] for _ in range(n)]
    open_nodes = list(range(num_leaves))  # nodes before k that may still take a child
    for k in range(num_leaves, n):
      row = keys[k]
      # Keys are < 1, so adding 1 puts childless leaves ahead of every other candidate.
      chosen = sorted(open_nodes, key=lambda j: row[j] + (j < num_leaves and not out_degree[j]),
                      reverse=True)[:num_parents[k]]
      for j in chosen:
        out_degree[j] += 1
      parents[k] = chosen
      open_nodes = [j for j in open_nodes if out_degree[j] < _MAX_OUT_DEGREE or hub[j]]
      open_nodes.append(k)
    return parents, hub, num_leaves

  def sample(self, rng: np.random.Generator, size: int) -> base.Example:
    lo, hi = self.valid_sizes()
    if not lo <= size <= hi:
      raise ValueError(f'brevo size must be in [{lo}, {hi}], got {size}')
    n = size
    parents, hub, num_leaves = self._graph(rng, n)
    names = rng.permutation(self.max_nodes)[:n]  # node -> name index
    children: list[list[int]] = [[] for _ in range(n)]
    for k in range(n):
      for p in parents[k]:
        children[p].append(k)

    # Ancestor sets as bitmasks, built in generation order (parents come first).
    ancestors = [0] * n
    for k in range(n):
      for p in parents[k]:
        ancestors[k] |= ancestors[p] | (1 << p)
    num_anc = [a.bit_count() for a in ancestors]
    # Half the largest ancestor count is >= 1/2, so leaves are never queried.
    most = max(num_anc)
    candidates = [k for k in range(n) if 2 * num_anc[k] >= most]
    query = candidates[int(rng.integers(len(candidates)))]

    # Post-order DFS from the query over parents, parents in increasing name order.
    order: list[int] = []
    depth: dict[int, int] = {}

    def visit(v: int, d: int):
      depth[v] = d
      for p in sorted(parents[v], key=names.__getitem__):
        if p not in depth:
          visit(p, d + 1)
      order.append(v)

    visit(query, 0)
    answer = order[:-1]
    num_answer = len(answer)

    # Replay the answer, tracking which ancestors have all their parents emitted.
    pending = {v: len(parents[v]) for v in answer}  # parents not yet emitted
    frontier = sum(1 for v in answer if not pending[v])
    frontier_size, newly_enabled = [], []
    for v in answer:
      frontier_size.append(frontier)
      enabled = 0
      for c in children[v]:
        if c in pending:
          pending[c] -= 1
          enabled += not pending[c]
      newly_enabled.append(enabled)
      frontier += enabled - 1

    edges_Ex2 = np.array([(p, k) for k in range(n) for p in parents[k]], np.int64)
    edges_Ex2 = edges_Ex2[rng.permutation(len(edges_Ex2))]
    name_tokens = names + _FIRST_NAME
    edge_tokens_Ex3 = np.full((len(edges_Ex2), 3), _COMMA, np.int64)
    edge_tokens_Ex3[:, :2] = name_tokens[edges_Ex2]
    tokens = np.concatenate([
        edge_tokens_Ex3.ravel(), [_QUERY, name_tokens[query], _EQUALS], name_tokens[answer],
        [_EOS]]).astype(np.int32)
    length = len(tokens)
    targets = np.append(tokens[1:], base.PAD).astype(np.int32)
    equals = 3 * len(edges_Ex2) + 2  # position of '='
    loss_mask = np.zeros(length, bool)
    loss_mask[equals:equals + num_answer + 1] = True

    per_answer = dict(
        dfs_depth=[depth[v] for v in answer],
        frontier_size=frontier_size,
        newly_enabled=newly_enabled,
        graph_size=[n] * num_answer,
        out_degree=[len(children[v]) for v in answer],
        in_degree=[len(parents[v]) for v in answer],
        is_hub=[hub[v] for v in answer],
        num_ancestors=[num_answer] * num_answer)
    features = {}
    for name in self.feature_names:
      features[name] = np.zeros(length, np.float32)
      features[name][equals:equals + num_answer] = per_answer[name]
    return base.Example(tokens=tokens, targets=targets, loss_mask=loss_mask,
                        complexity=features['dfs_depth'].copy(), features=features)
