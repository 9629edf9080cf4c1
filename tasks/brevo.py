"""BREVO: reasoning breadth — list every node a query node depends on, dependencies first.

Physics of Language Models part 4.1's generator: `data-synthetic-pretrain/Brevo/brevo.py` in
github.com/facebookresearch/PhysicsLM4 (class `TopoSortDepthStats`: `generate_dag`,
`generate_sample`, `topological_sort`, `generate_tokens`; its single-token "Brevo1" form), as used
by the ANIRA paper (N = 3-30 nodes, D = 6). One example is a random DAG of n = `size` nodes:

- Graph (`generate_dag`, its only degree rule `A_dep_B_for_at_most_4_Bs_and_4_As_with_leaves_on_
  left`): generation order 0..n-1 is a hidden topological order. Nodes 0..L-1 are leaves, L
  uniform in 1..(n-1)//4 + 1. Every later node k takes c distinct parents, uniformly among the
  earlier nodes of out-degree below 4 (always at least one), c uniform in 1..min(4, their number).
  A leaf may end up with no child: it is then in no edge, and the prompt never shows it.
- Node names (`rng.sample(range(1, vocab_size + 1), n)`): n distinct names drawn from a pool of
  `max_nodes` name tokens 'n0', 'n1', ..., so names carry no information about the structure. The
  source's pool is the largest size N of its stream; here it must cover the largest size drawn.
- Query (`generate_sample`): the last node in generation order. (The source takes the nodes from
  index `max(n * 3 // 4, n - 1)` on, which is the last one alone; `min` may have been meant.)
- Answer order (`topological_sort`, `order='random'`): the query's ancestors and the query itself,
  as a random topological order: Kahn's algorithm run from the query over parent links, taking
  each next node uniformly among those whose children in the answer are all taken, then reversed.
  The query comes last; the order is not unique, so evaluation grades validity (below).

Layout (`generate_tokens`; language-model style, `targets[i] = tokens[i + 1]`, the last target
`<pad>`):

    <bos> p1 c1 p2 c2 ... pE cE <query> q <eos> a1 a2 ... aA q <eos>

Edges "parent child", no separator, in uniformly shuffled order. The source opens the answer with
`bos_token_id - 1` and ends it with `eos_token_id`, the same id (9998): `<eos>` here. `loss_mask`
is true wherever the target is an answer node or the final `<eos>`. (The source also trains on
the answer-opening token, a constant after the query; it is not scored here.)

Options, this project's own: `order='dfs'` makes the answer the post-order of a depth-first search
from the query over parent links that visits parents in increasing name-token order (unique, a
function of the graph and names alone). `hub_prob` > 0 makes each node a hub with that
probability: exempt from the out-degree cap and drawn as a parent with weight `hub_weight`
(weighted sampling without replacement by Efraimidis-Spirakis keys; with no hub every weight is 1,
the source's uniform draw). The earlier layout (commas, '?', '=', the query left out of the
answer) is not kept.

Evaluation is by validity, as the source's `parse_tokens` grades: the answer is generated after
the prompt and graded from the tokens alone (`BrevoTask`'s docstring has the interface).

Annotations, per answer node predicted — at the position whose target is a_j (j = 1..A+1, the
query last), with S_j = {a_1, ..., a_{j-1}} the nodes already emitted and Anc+ the answer set —
for the order actually written (`sample`) or generated (`generation_features`), any valid one:

- `dfs_depth`: the depth of a_j in the tree of `order='dfs'`'s depth-first search (q = 0, a
  parent discovered from a node at depth d has depth d + 1), a property of the node whatever the
  order written; it lies between a_j's shortest and longest distance to q. With `order='dfs'`
  it is the recursion depth at which a_j is written.
- `complexity` = `dfs_depth`: to name the next node the model must trace dependencies that many
  hops from the query.
- `frontier_size`: |{v in Anc+ \\ S_j : every parent of v is in S_j}|, the nodes that could come
  next in some valid order (a_j among them, so >= 1).
- `newly_enabled`: the v in Anc+ \\ (S_j + {a_j}) whose last parent not in S_j is a_j: the nodes
  that join the frontier once a_j is written.
- `graph_size`: the nodes the prompt shows (n, less the childless leaves); `num_ancestors`:
  the query's ancestors, |Anc+| - 1.
- `out_degree`, `in_degree`: a_j's number of children and of parents in the whole graph.
Every other position, the one whose target is the closing `<eos>` included, holds 0 and is not
annotated.

Decision timing regresses expected depth on the static structure (degrees, ancestors) and on the
execution state (dfs_depth, frontier, newly enabled), graph size a categorical control. The source
draws n for its training stream with weights 1 / (n + sqrt(N)) over 3..N (`topsort_data`); here the
stream's sizes are uniform.
"""

from __future__ import annotations

import collections
from collections.abc import Sequence

import numpy as np

from tasks import base

_MAX_PARENTS = 4
_MAX_OUT_DEGREE = 4  # for non-hub nodes
_SPECIALS = ('<pad>', '<bos>', '<query>', '<eos>')
_BOS, _QUERY, _EOS = 1, 2, 3
_FIRST_NAME = len(_SPECIALS)
ORDERS = ('random', 'dfs')
FEATURES = ('dfs_depth', 'frontier_size', 'newly_enabled', 'graph_size', 'out_degree',
            'in_degree', 'num_ancestors')


class Dag:
  """A BREVO graph as its prompt shows it: parents and children by node token, and the query."""

  def __init__(self, edges: Sequence[tuple[int, int]], query: int):
    self.query = query
    self.parents: dict[int, list[int]] = collections.defaultdict(list)
    self.children: dict[int, list[int]] = collections.defaultdict(list)
    for p, c in edges:
      self.parents[c].append(p)
      self.children[p].append(c)
    self.num_nodes = len(self.parents.keys() | self.children.keys())
    # Depth-first search from the query over parent links, parents in increasing token order:
    # the answer set (query included), each node's depth in the search tree, the post-order.
    self.depth: dict[int, int] = {}
    self.post_order: list[int] = []

    def visit(v: int, d: int):
      self.depth[v] = d
      for p in sorted(self.parents[v]):
        if p not in self.depth:
          visit(p, d + 1)
      self.post_order.append(v)

    visit(query, 0)

  @classmethod
  def parse(cls, tokens: Sequence[int]) -> Dag:
    """The graph of a prompt: `<bos>`, "parent child" pairs, `<query> q <eos>`, then anything."""
    tokens = [int(t) for t in tokens]
    if not tokens or tokens[0] != _BOS or _QUERY not in tokens:
      raise ValueError('a brevo prompt starts with <bos> and holds <query>')
    query_at = tokens.index(_QUERY)
    names = tokens[1:query_at]
    if (len(names) % 2 or len(tokens) < query_at + 3 or tokens[query_at + 2] != _EOS
        or min(names + [tokens[query_at + 1]]) < _FIRST_NAME):
      raise ValueError('a brevo prompt is <bos>, "parent child" name pairs, <query> q <eos>')
    return cls(list(zip(names[0::2], names[1::2])), tokens[query_at + 1])

  def random_order(self, u: Sequence[float]) -> list[int]:
    """The source's `topological_sort`: Kahn's algorithm from the query over parent links, each
    next node uniform among the ready ones (`u`: one uniform number per node), reversed."""
    waiting = {v: 0 for v in self.depth}  # children in the answer set not yet taken
    for v in self.depth:
      for p in self.parents[v]:
        waiting[p] += 1
    ready, order = [self.query], []
    for x in u:
      if not ready:
        break
      v = ready.pop(int(x * len(ready)))
      order.append(v)
      for p in self.parents[v]:
        waiting[p] -= 1
        if not waiting[p]:
          ready.append(p)
    return order[::-1]

  def replay(self, answer: Sequence[int]) -> dict[str, list[int]]:
    """Annotations (see the module docstring) of the longest prefix of `answer` that is a valid
    prefix of a topological order of the answer set, by name."""
    pending = {v: len(self.parents[v]) for v in self.depth}  # parents not yet written
    frontier = sum(1 for v in pending if not pending[v])
    rows = []
    for v in answer:
      if pending.get(v) != 0:  # not in the answer set, written before, or a parent missing
        break
      pending[v] = -1
      enabled = 0
      for c in self.children[v]:
        if c in pending:
          pending[c] -= 1
          enabled += not pending[c]
      rows.append((self.depth[v], frontier, enabled, self.num_nodes, len(self.children[v]),
                   len(self.parents[v]), len(self.depth) - 1))  # in the order of FEATURES
      frontier += enabled - 1
    columns = zip(*rows) if rows else [()] * len(FEATURES)
    return {name: list(values) for name, values in zip(FEATURES, columns)}


class BrevoTask(base.Task, base.Generative):
  """The query node of a random DAG of N nodes and all its ancestors, in a topological order.

  Evaluation by validity: generate greedily from the prompt, then grade the answer and annotate
  each generated token from the tokens alone (host-side numpy; the graph is parsed from the
  prompt):

  - `prompt_length(tokens, loss_mask) -> int`: the length of the prompt, up to and including the
    answer-opening `<eos>` (the position whose target is the first answer node); generation
    continues from there.
  - `max_answer_length(max_size) -> int`: the most tokens a correct answer of any size up to
    `max_size` takes, its closing `<eos>` included (a bound for the decoder's buffer).
  - `answer_end(generated) -> int | None`: the generated tokens the answer takes, up to and
    including its first `<eos>`; None before there is one.
  - `grade(prompt, generated) -> {'terminated', 'node_set_correct', 'valid_order'}` (bools): the
    answer is `generated` up to its first `<eos>` (what follows is ignored); `terminated`: there
    is one; `node_set_correct`: terminated, and exactly the query and its ancestors, each once
    (the source checks only the set, so it accepts duplicates); `valid_order`: node set correct
    and each node after all of its parents.
  - `generation_features(prompt, generated) -> {name: [len(generated)]}`: for each generated
    token, the annotations of the prediction that produced it (as `sample` writes them for its
    own order): `feature_names` and `complexity` (float32), `annotated` (bool). They are defined
    while `generated` is a valid prefix of a topological order of the answer set — each token a
    new answer node whose parents all precede it — and 0, not annotated, from the first token
    that is not (the closing `<eos>` included).
  `prompt` may run on past the prompt (a whole example, padded): parsing stops at the token that
  opens the answer. A malformed prompt raises ValueError; `generated` may hold anything.
  """

  name = 'brevo'
  feature_names = FEATURES
  alignment_features = ('dfs_depth', 'graph_size', 'num_ancestors', 'frontier_size')
  feature_groups = {
      'static_structure': ('out_degree', 'in_degree', 'num_ancestors'),
      'execution_state': ('dfs_depth', 'frontier_size', 'newly_enabled'),
  }
  timing_control = 'graph_size'

  def __init__(self, max_nodes: int = 64, order: str = 'random', hub_prob: float = 0.0,
               hub_weight: float = 4.0):
    if max_nodes < 3:
      raise ValueError(f'brevo needs max_nodes >= 3, got {max_nodes}')
    if order not in ORDERS:
      raise ValueError(f'brevo order must be one of {ORDERS}, got {order!r}')
    if not 0.0 <= hub_prob <= 1.0:
      raise ValueError(f'hub_prob must be in [0, 1], got {hub_prob}')
    if hub_weight <= 0.0:
      raise ValueError(f'hub_weight must be positive, got {hub_weight}')
    self.max_nodes = max_nodes
    self.order = order
    self.hub_prob = hub_prob
    self.hub_weight = hub_weight

  @property
  def vocab(self) -> tuple[str, ...]:
    return _SPECIALS + tuple(f'n{i}' for i in range(self.max_nodes))

  def valid_sizes(self) -> tuple[int, int]:
    return 3, self.max_nodes

  def seq_len(self, max_size: int) -> int:
    # Node k has at most min(4, k) parents (node 0 is always a leaf); the answer holds at most
    # every node. <bos>, 2 tokens per edge, '<query> q <eos>', the answer, <eos>.
    edges = sum(min(_MAX_PARENTS, k) for k in range(1, max_size))
    return 1 + 2 * edges + 3 + self.max_answer_length(max_size)

  def max_answer_length(self, max_size: int) -> int:
    return max_size + 1

  def _graph(self, rng: np.random.Generator, n: int) -> list[list[int]]:
    """The source's `generate_dag`, hubs optional: parents per node in generation order."""
    num_leaves = int(rng.integers(1, (n - 1) // 4 + 2))
    count_u = rng.random(n).tolist()
    # keys[k][j]: priority of j as a parent of k. The top c keys are a uniform draw of c without
    # replacement; keys u ** (1 / w) weight it (Efraimidis-Spirakis). Plain lists: the loop runs
    # over a few dozen small items, where numpy's per-call overhead would dominate.
    keys = rng.random((n, n))
    hub = [False] * n
    if self.hub_prob:
      hub_N = rng.random(n) < self.hub_prob
      keys **= 1.0 / np.where(hub_N, self.hub_weight, 1.0)
      hub = hub_N.tolist()
    keys = keys.tolist()
    out_degree = [0] * n
    parents: list[list[int]] = [[] for _ in range(n)]
    open_nodes = list(range(num_leaves))  # nodes before k that may still take a child
    for k in range(num_leaves, n):
      count = 1 + int(count_u[k] * min(_MAX_PARENTS, len(open_nodes)))
      chosen = sorted(open_nodes, key=keys[k].__getitem__, reverse=True)[:count]
      for j in chosen:
        out_degree[j] += 1
        if out_degree[j] == _MAX_OUT_DEGREE and not hub[j]:
          open_nodes.remove(j)
      parents[k] = chosen
      open_nodes.append(k)
    return parents

  def sample(self, rng: np.random.Generator, size: int) -> base.Example:
    lo, hi = self.valid_sizes()
    if not lo <= size <= hi:
      raise ValueError(f'brevo size must be in [{lo}, {hi}], got {size}')
    n = size
    parents = self._graph(rng, n)
    name_N = rng.permutation(self.max_nodes)[:n] + _FIRST_NAME  # node -> token
    child_E = np.repeat(np.arange(n), [len(ps) for ps in parents])
    parent_E = np.fromiter((p for ps in parents for p in ps), np.int64, len(child_E))
    edges_Ex2 = name_N[np.stack([parent_E, child_E], 1)[rng.permutation(len(child_E))]]
    dag = Dag(edges_Ex2.tolist(), int(name_N[n - 1]))
    answer = dag.post_order if self.order == 'dfs' else dag.random_order(rng.random(n).tolist())

    tokens = np.concatenate([[_BOS], edges_Ex2.ravel(), [_QUERY, dag.query, _EOS], answer,
                             [_EOS]]).astype(np.int32)
    length = len(tokens)
    targets = np.append(tokens[1:], base.PAD).astype(np.int32)
    start = 2 * len(edges_Ex2) + 3  # the answer-opening <eos>, whose target is a_1
    loss_mask = np.zeros(length, bool)
    loss_mask[start:start + len(answer) + 1] = True
    annotated = np.zeros(length, bool)
    annotated[start:start + len(answer)] = True
    features = {}
    for feature, values in dag.replay(answer).items():
      features[feature] = np.zeros(length, np.float32)
      features[feature][start:start + len(answer)] = values
    return base.Example(tokens=tokens, targets=targets, loss_mask=loss_mask,
                        complexity=features['dfs_depth'].copy(), features=features,
                        annotated=annotated)

  @staticmethod
  def prompt_length(tokens: np.ndarray, loss_mask: np.ndarray) -> int:
    """Tokens up to and including the one whose target is the answer's first node."""
    del tokens
    return int(np.argmax(loss_mask)) + 1

  def answer_end(self, generated: Sequence[int]) -> int | None:
    """The generated tokens up to and including the first `<eos>`; None without one."""
    answer, terminated = self._answer(generated)
    return len(answer) + 1 if terminated else None

  @staticmethod
  def _answer(generated: Sequence[int]) -> tuple[list[int], bool]:
    """`generated` up to its first `<eos>`, and whether there is one."""
    generated = [int(t) for t in generated]
    if _EOS in generated:
      return generated[:generated.index(_EOS)], True
    return generated, False

  def grade(self, prompt: Sequence[int], generated: Sequence[int]) -> dict[str, bool]:
    """Whether `generated` answers the prompt's query (see the module docstring)."""
    dag = Dag.parse(prompt)
    answer, terminated = self._answer(generated)
    node_set_correct = (terminated and len(answer) == len(set(answer)) == len(dag.depth)
                        and set(answer) == dag.depth.keys())
    valid_order = node_set_correct and len(dag.replay(answer)['dfs_depth']) == len(answer)
    return dict(terminated=terminated, node_set_correct=node_set_correct,
                valid_order=valid_order)

  def generation_features(self, prompt: Sequence[int],
                          generated: Sequence[int]) -> dict[str, np.ndarray]:
    """Per generated token, the annotations of the prediction that produced it (see the module
    docstring): `feature_names` and `complexity` float32, `annotated` bool, each
    [len(generated)]."""
    answer, _ = self._answer(generated)
    replayed = Dag.parse(prompt).replay(answer)
    valid = len(replayed['dfs_depth'])
    out = {}
    for feature, values in replayed.items():
      out[feature] = np.zeros(len(generated), np.float32)
      out[feature][:valid] = values
    out['complexity'] = out['dfs_depth'].copy()
    out['annotated'] = np.arange(len(generated)) < valid
    return out
