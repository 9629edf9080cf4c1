"""BREVO labels and annotations against a brute-force reference built from the tokens alone."""

import numpy as np
import pytest

from tasks import base
from tasks.brevo import BrevoTask

SIZES = range(3, 31)
SEEDS = range(40)


def parse(task, ex):
  """(edges as (parent, child) name ids, query, answer list, '=' position) read from the tokens."""
  words = task.decode(ex.tokens)
  q = words.index('?')
  assert q % 3 == 0, 'the edge list must be whole "parent child ," triples'
  edges = []
  for i in range(0, q, 3):
    parent, child, comma = words[i:i + 3]
    assert comma == ',' and parent.startswith('n') and child.startswith('n')
    edges.append((int(parent[1:]), int(child[1:])))
  assert words[q + 2] == '=' and words[-1] == '<eos>'
  query = int(words[q + 1][1:])
  answer = [int(w[1:]) for w in words[q + 3:-1]]
  return edges, query, answer, q + 2


def closure(nodes, edges):
  """reach[a, b]: b depends on a through a path of >= 1 edge (Floyd-Warshall on booleans)."""
  index = {v: i for i, v in enumerate(nodes)}
  reach = np.zeros((len(nodes), len(nodes)), bool)
  for p, c in edges:
    reach[index[p], index[c]] = True
  for k in range(len(nodes)):
    reach |= reach[:, k:k + 1] & reach[k:k + 1, :]
  return index, reach


def distances(parents_of, query):
  """Shortest and longest number of edges from each ancestor up to the query, by relaxation."""
  shortest, longest = {query: 0}, {query: 0}
  changed = True
  while changed:
    changed = False
    for v in list(longest):
      for p in parents_of[v]:
        if shortest.get(p, np.inf) > shortest[v] + 1:
          shortest[p] = shortest[v] + 1
          changed = True
        if longest.get(p, -1) < longest[v] + 1:
          longest[p] = longest[v] + 1
          changed = True
  return shortest, longest


def reference_dfs(parents_of, query):
  """Post-order of an explicit-stack DFS from the query, parents by increasing name id."""
  order, depth = [], {query: 0}
  stack = [(query, iter(sorted(parents_of[query])))]
  while stack:
    v, parents = stack[-1]
    nxt = next((p for p in parents if p not in depth), None)
    if nxt is None:
      stack.pop()
      order.append(v)
    else:
      depth[nxt] = len(stack)
      stack.append((nxt, iter(sorted(parents_of[nxt]))))
  return order[:-1], depth


def check_example(task, ex, size):
  edges, query, answer, equals = parse(task, ex)
  length = len(ex.tokens)
  num_answer = len(answer)

  # Graph constraints.
  nodes = sorted({v for edge in edges for v in edge})
  assert len(nodes) == size, 'every node appears in the edge list'
  assert len(set(edges)) == len(edges)
  parents_of = {v: [p for p, c in edges if c == v] for v in nodes}
  children_of = {v: [c for p, c in edges if p == v] for v in nodes}
  index, reach = closure(nodes, edges)
  assert not reach.diagonal().any(), 'the graph is acyclic'
  assert all(len(ps) <= 4 for ps in parents_of.values())
  assert any(not ps for ps in parents_of.values()), 'there is a leaf'
  if task.hub_prob == 0:
    assert all(len(cs) <= 4 for cs in children_of.values())

  # The answer: exactly the query's ancestors, no duplicates, each after all its parents.
  ancestors = {v for v in nodes if reach[index[v], index[query]]}
  num_anc = {v: reach[:, index[v]].sum() for v in nodes}
  assert 2 * num_anc[query] >= max(num_anc.values()) >= 1
  assert len(answer) == len(set(answer)) and set(answer) == ancestors
  for j, v in enumerate(answer):
    assert set(parents_of[v]) <= set(answer[:j])
  expected_order, dfs_depth = reference_dfs(parents_of, query)
  assert answer == expected_order

  # Layout.
  np.testing.assert_array_equal(ex.targets[:-1], ex.tokens[1:])
  assert ex.targets[-1] == base.PAD
  expected_mask = np.zeros(length, bool)
  expected_mask[equals:] = True
  expected_mask[-1] = False
  np.testing.assert_array_equal(ex.loss_mask, expected_mask)
  assert ex.tokens.dtype == ex.targets.dtype == np.int32
  assert length <= task.seq_len(size) <= task.seq_len(30)

  # Annotations at the positions whose target is an answer node, 0 elsewhere.
  at = np.arange(equals, equals + num_answer)
  shortest, longest = distances(parents_of, query)
  # is_hub is the generator's latent flag: only its consistency with out-degree is checkable.
  expected = {name: [] for name in task.feature_names if name != 'is_hub'}
  for j, v in enumerate(answer):
    done = set(answer[:j])
    after = done | {v}
    frontier = [u for u in ancestors - done if set(parents_of[u]) <= done]
    enabled = [u for u in ancestors - after
               if set(parents_of[u]) <= after and not set(parents_of[u]) <= done]
    assert shortest[v] <= dfs_depth[v] <= longest[v]
    expected['dfs_depth'].append(dfs_depth[v])
    expected['frontier_size'].append(len(frontier))
    expected['newly_enabled'].append(len(enabled))
    expected['graph_size'].append(size)
    expected['out_degree'].append(len(children_of[v]))
    expected['in_degree'].append(len(parents_of[v]))
    expected['num_ancestors'].append(len(ancestors))
    if len(children_of[v]) > 4:
      assert ex.features['is_hub'][equals + j] == 1, 'only hubs exceed out-degree 4'
  for name in task.feature_names:
    feature = ex.features[name]
    assert feature.dtype == np.float32
    assert not np.delete(feature, at).any(), f'{name} is non-zero off the answer positions'
  for name, values in expected.items():
    np.testing.assert_array_equal(ex.features[name][at], values, err_msg=name)
  np.testing.assert_array_equal(ex.complexity, ex.features['dfs_depth'])
  assert set(np.unique(ex.features['is_hub'])) <= {0, 1}


@pytest.mark.parametrize('size', SIZES)
def test_labels_and_features_match_brute_force(size):
  task = BrevoTask()
  for seed in SEEDS:
    check_example(task, task.sample(np.random.default_rng([seed, size]), size), size)


@pytest.mark.parametrize('size', [3, 9, 30])
def test_without_hubs_out_degree_is_capped(size):
  task = BrevoTask(hub_prob=0.0)
  for seed in SEEDS:
    check_example(task, task.sample(np.random.default_rng(seed), size), size)


def test_hubs_exceed_the_out_degree_cap():
  task = BrevoTask()
  rng = np.random.default_rng(0)
  examples = [task.sample(rng, 30) for _ in range(50)]
  assert max(ex.features['out_degree'].max() for ex in examples) > 4
  assert any(ex.features['is_hub'].any() for ex in examples)


def test_largest_size_fits_seq_len():
  task = BrevoTask(max_nodes=64)
  rng = np.random.default_rng(1)
  assert all(len(task.sample(rng, 64).tokens) <= task.seq_len(64) for _ in range(20))
  small = BrevoTask(max_nodes=8)
  for seed in SEEDS:
    check_example(small, small.sample(np.random.default_rng(seed), 8), 8)


def test_seq_len_is_attained_by_the_densest_graph():
  # n1 <- n0, n2 <- n0 n1: 3 edges, '? n2 =', 2 answer nodes, '<eos>'.
  assert BrevoTask().seq_len(3) == 3 * 3 + 3 + 2 + 1


def test_deterministic_by_seed_and_seeds_differ():
  task = BrevoTask()

  def draw(seed):
    return task.sample(np.random.default_rng(seed), 20)

  a, b, c = draw(7), draw(7), draw(8)
  for field in ('tokens', 'targets', 'loss_mask', 'complexity'):
    np.testing.assert_array_equal(getattr(a, field), getattr(b, field))
  for name in task.feature_names:
    np.testing.assert_array_equal(a.features[name], b.features[name])
  assert len(a.tokens) != len(c.tokens) or (a.tokens != c.tokens).any()


def test_global_rng_untouched():
  np.random.seed(0)
  before = np.random.get_state()[1].copy()
  BrevoTask().sample(np.random.default_rng(0), 30)
  np.testing.assert_array_equal(np.random.get_state()[1], before)


def test_vocab_sizes_and_stream():
  task = BrevoTask()
  assert task.vocab[0] == '<pad>' and len(set(task.vocab)) == task.vocab_size == 5 + 64
  assert task.valid_sizes() == (3, 64)
  with pytest.raises(ValueError):
    task.sample(np.random.default_rng(0), 2)
  with pytest.raises(ValueError):
    task.sample(np.random.default_rng(0), 65)
  stream = base.Stream(task, sizes=tuple(SIZES), batch_size=8, seed=0)
  batch = stream.batch(3)
  assert batch['tokens'].shape == (8, task.seq_len(30))
  assert set(batch['features']) == set(task.feature_names)
  np.testing.assert_array_equal(batch['tokens'], stream.batch(3)['tokens'])
