"""BREVO labels, grading and annotations against brute-force references built from the tokens."""

import collections

import numpy as np
import pytest

from tasks import base
from tasks.brevo import BrevoTask, Dag

SIZES = range(3, 31)
SEEDS = range(20)


def parse(task, ex):
  """(edges as (parent, child) words, query, answer words, first answer position)."""
  words = task.decode(ex.tokens)
  assert words[0] == '<bos>' and words[-1] == '<eos>'
  q = words.index('<query>')
  assert q % 2 == 1, 'the edge list must be whole "parent child" pairs'
  edges = list(zip(words[1:q:2], words[2:q:2]))
  assert all(w.startswith('n') for edge in edges for w in edge)
  assert words[q + 2] == '<eos>'
  return edges, words[q + 1], words[q + 3:-1], q + 3


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
  """Shortest and longest number of edges from each ancestor down to the query, by relaxation."""
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


def reference_dfs(parents_of, query, key):
  """Post-order of an explicit-stack DFS from the query, parents by increasing `key`."""
  order, depth = [], {query: 0}
  stack = [(query, iter(sorted(parents_of[query], key=key)))]
  while stack:
    v, parents = stack[-1]
    nxt = next((p for p in parents if p not in depth), None)
    if nxt is None:
      stack.pop()
      order.append(v)
    else:
      depth[nxt] = len(stack)
      stack.append((nxt, iter(sorted(parents_of[nxt], key=key))))
  return order, depth


def is_topological(order, parents_of):
  return all(set(parents_of[v]) <= set(order[:j]) for j, v in enumerate(order))


def random_valid_order(answer_set, parents_of, rng):
  """A topological order of the answer set: each next node uniform among those whose parents are
  all written (forward, unlike the generator's reversed search from the query)."""
  order = []
  while len(order) < len(answer_set):
    ready = sorted(v for v in answer_set - set(order) if set(parents_of[v]) <= set(order))
    order.append(ready[rng.integers(len(ready))])
  return order


def brute_features(order, answer_set, parents_of, children_of, dfs_depth, graph_size):
  """Every annotation of every node of a valid order, from its definition by sets."""

  def ready(written):
    return {u for u in answer_set - written if set(parents_of[u]) <= written}

  out = collections.defaultdict(list)
  for j, v in enumerate(order):
    done = set(order[:j])
    after = done | {v}
    out['dfs_depth'].append(dfs_depth[v])
    out['frontier_size'].append(len(ready(done)))
    out['newly_enabled'].append(len(ready(after) - ready(done)))
    out['graph_size'].append(graph_size)
    out['out_degree'].append(len(children_of[v]))
    out['in_degree'].append(len(parents_of[v]))
    out['num_ancestors'].append(len(answer_set) - 1)
  return out


def check_example(task, ex, size, rng):
  edges, query, answer, start = parse(task, ex)
  length = len(ex.tokens)

  # Graph constraints: the childless leaves are in no edge, so at most `size` nodes show.
  nodes = sorted({v for edge in edges for v in edge})
  assert len(nodes) <= size and len(set(edges)) == len(edges)
  parents_of = {v: [p for p, c in edges if c == v] for v in nodes}
  children_of = {v: [c for p, c in edges if p == v] for v in nodes}
  index, reach = closure(nodes, edges)
  assert not reach.diagonal().any(), 'the graph is acyclic'
  assert all(len(ps) <= 4 for ps in parents_of.values())
  if task.hub_prob == 0:
    assert all(len(cs) <= 4 for cs in children_of.values())
  assert parents_of[query] and not children_of[query], 'the query is the last node generated'

  # The answer: the query's ancestors, then the query, each once, each after all its parents.
  answer_set = {v for v in nodes if reach[index[v], index[query]]} | {query}
  assert len(answer) == len(set(answer)) and set(answer) == answer_set
  assert is_topological(answer, parents_of) and answer[-1] == query
  dfs_order, dfs_depth = reference_dfs(parents_of, query, key=task.vocab.index)
  if task.order == 'dfs':
    assert answer == dfs_order

  # Layout.
  np.testing.assert_array_equal(ex.targets[:-1], ex.tokens[1:])
  assert ex.targets[-1] == base.PAD
  assert task.prompt_length(ex.tokens, ex.loss_mask) == start
  expected_mask = np.zeros(length, bool)
  expected_mask[start - 1:] = True  # every answer node and the closing <eos> is a target
  expected_mask[-1] = False
  np.testing.assert_array_equal(ex.loss_mask, expected_mask)
  expected_mask[-2] = False  # the position whose target is <eos> carries no annotation
  np.testing.assert_array_equal(ex.annotated, expected_mask)
  assert ex.tokens.dtype == ex.targets.dtype == np.int32
  assert length <= task.seq_len(size) <= task.seq_len(30)
  assert len(answer) + 1 <= task.max_answer_length(size)

  # Annotations of the written order at the positions whose target is an answer node.
  at = np.arange(start - 1, start - 1 + len(answer))
  shortest, longest = distances(parents_of, query)
  assert all(shortest[v] <= dfs_depth[v] <= longest[v] for v in answer)
  expected = brute_features(answer, answer_set, parents_of, children_of, dfs_depth, len(nodes))
  assert set(expected) == set(task.feature_names)
  for name in task.feature_names:
    feature = ex.features[name]
    assert feature.dtype == np.float32
    assert not np.delete(feature, at).any(), f'{name} is non-zero off the answer positions'
    np.testing.assert_array_equal(feature[at], expected[name], err_msg=name)
  np.testing.assert_array_equal(ex.complexity, ex.features['dfs_depth'])

  # Grading and generation features, from the prompt alone or from the whole example.
  prompt = ex.tokens[:start]
  written = ex.tokens[start:]
  for given in (prompt, ex.tokens):
    assert task.grade(given, written) == dict(terminated=True, node_set_correct=True,
                                              valid_order=True)
  generated = task.generation_features(prompt, written)
  for name in task.feature_names:
    np.testing.assert_array_equal(generated[name], ex.features[name][start - 1:-1])
  np.testing.assert_array_equal(generated['annotated'], ex.annotated[start - 1:-1])
  # Any other valid order: accepted, and annotated for the order generated.
  eos = task.vocab.index('<eos>')
  for _ in range(2):
    order = random_valid_order(answer_set, parents_of, rng)
    tokens = [task.vocab.index(v) for v in order] + [eos, 0]
    assert task.grade(prompt, tokens)['valid_order']
    generated = task.generation_features(prompt, tokens)
    expected = brute_features(order, answer_set, parents_of, children_of, dfs_depth, len(nodes))
    for name in task.feature_names:
      np.testing.assert_array_equal(generated[name][:-2], expected[name], err_msg=name)
      assert not generated[name][-2:].any()
    np.testing.assert_array_equal(generated['complexity'], generated['dfs_depth'])
    assert generated['annotated'].tolist() == [True] * len(order) + [False, False]


@pytest.mark.parametrize('options', [{}, {'order': 'dfs'}, {'hub_prob': 0.2}], ids=str)
def test_labels_grades_and_features_match_brute_force(options):
  task = BrevoTask(**options)
  rng = np.random.default_rng(0)
  for size in SIZES:
    for seed in SEEDS[::3] if options else SEEDS:
      check_example(task, task.sample(np.random.default_rng([seed, size]), size), size, rng)


def test_smallest_name_pool():
  task = BrevoTask(max_nodes=8)
  rng = np.random.default_rng(0)
  for seed in SEEDS:
    check_example(task, task.sample(np.random.default_rng(seed), 8), 8, rng)


def _hand_built(task):
  """n2 <- n1 <- n0 and n3 <- n0, the query n3 <- n1; n4 <- n3 lies outside the answer."""
  words = ['<bos>', 'n1', 'n2', 'n0', 'n1', 'n3', 'n4', 'n0', 'n3', 'n1', 'n3',
           '<query>', 'n3', '<eos>']
  return [task.vocab.index(w) for w in words]


@pytest.mark.parametrize('answer,terminated,node_set,valid', [
    ('n0 n1 n3 <eos>', True, True, True),
    ('n0 n1 n3 <eos> n4 n4', True, True, True),  # whatever follows <eos> is ignored
    ('n0 n1 n3', False, False, False),  # never ends
    ('n0 n3 <eos>', True, False, False),  # n1 missing
    ('n0 n1 n2 n3 <eos>', True, False, False),  # n2 is not an ancestor
    ('n0 n1 n1 n3 <eos>', True, False, False),  # n1 twice
    ('n1 n0 n3 <eos>', True, True, False),  # n1 before its parent n0
    ('n0 n3 n1 <eos>', True, True, False),  # the query before its parent n1
    ('<eos>', True, False, False),
    ('', False, False, False),
])
def test_grade_hand_built(answer, terminated, node_set, valid):
  task = BrevoTask(max_nodes=8)
  generated = [task.vocab.index(w) for w in answer.split()]
  assert task.grade(_hand_built(task), generated) == dict(
      terminated=terminated, node_set_correct=node_set, valid_order=valid)


def test_grade_accepts_every_valid_order():
  # n3 <- n0, n1, n2 (leaves) and n4 <- n3: the six orders of the leaves, then n3, then n4.
  task = BrevoTask(max_nodes=8)
  prompt = [task.vocab.index(w) for w in
            '<bos> n0 n3 n1 n3 n2 n3 n3 n4 <query> n4 <eos>'.split()]
  for leaves in ('n0 n1 n2', 'n0 n2 n1', 'n1 n0 n2', 'n1 n2 n0', 'n2 n0 n1', 'n2 n1 n0'):
    generated = [task.vocab.index(w) for w in f'{leaves} n3 n4 <eos>'.split()]
    assert task.grade(prompt, generated)['valid_order']
    features = task.generation_features(prompt, generated)
    assert features['frontier_size'].tolist() == [3, 2, 1, 1, 1, 0]
    assert features['newly_enabled'].tolist() == [0, 0, 1, 1, 0, 0]
    assert features['dfs_depth'].tolist() == [2, 2, 2, 1, 0, 0]


def test_generation_features_stop_at_the_first_invalid_token():
  task = BrevoTask(max_nodes=8)
  generated = [task.vocab.index(w) for w in 'n0 n3 n1 n3 <eos>'.split()]
  features = task.generation_features(_hand_built(task), generated)
  assert features['annotated'].tolist() == [True, False, False, False, False]
  assert features['out_degree'].tolist() == [2, 0, 0, 0, 0]  # n0's children: n1, n3
  assert features['in_degree'].tolist() == [0, 0, 0, 0, 0]
  assert features['graph_size'].tolist() == [5, 0, 0, 0, 0]
  assert features['num_ancestors'].tolist() == [2, 0, 0, 0, 0]


def test_malformed_prompts_raise():
  task = BrevoTask(max_nodes=8)
  for words in ('n0 n1 <query> n1 <eos>', '<bos> n0 n1 n2 <query> n1 <eos>',
                '<bos> n0 n1 <query> n1', '<bos> n0 n1 n0 n2', '<bos> n0 n1 <query> <eos> <eos>'):
    with pytest.raises(ValueError, match='prompt'):
      task.grade([task.vocab.index(w) for w in words.split()], [])


def test_answer_order_follows_the_source():
  # q <- a, q <- b, a <- c. The source's search from q takes q, then a or b (1/2 each); after a,
  # b or c (1/2 each). Reversed: c b a q and b c a q have probability 1/4, c a b q 1/2 (uniform
  # over the three valid orders would give 1/3 each).
  dag = Dag([(1, 4), (2, 4), (3, 1)], query=4)
  rng = np.random.default_rng(0)
  counts = collections.Counter(tuple(dag.random_order(rng.random(4))) for _ in range(4000))
  assert set(counts) == {(3, 2, 1, 4), (2, 3, 1, 4), (3, 1, 2, 4)}
  assert abs(counts[3, 1, 2, 4] / 4000 - 0.5) < 0.03
  assert abs(counts[3, 2, 1, 4] / 4000 - 0.25) < 0.03


def test_graph_law_at_small_sizes():
  # Up to n = 5 no node can reach out-degree 4 before the last node draws its parents, so the
  # query (the last node, k = n - 1 earlier nodes) has c parents, c uniform in 1..min(4, n - 1).
  # At n = 3 (one leaf; node 1 <- node 0), the query takes node 0, node 1 or both: 2 edges with
  # probability 1/2, 3 edges otherwise; its answer is 3 nodes long unless it takes node 0 alone.
  task = BrevoTask(max_nodes=8)
  rng = np.random.default_rng(0)
  for n in (3, 4, 5):
    in_degree = collections.Counter()
    for _ in range(2000):
      edges, query, answer, _ = parse(task, task.sample(rng, n))
      in_degree[sum(c == query for _, c in edges)] += 1
      if n == 3:
        assert (len(edges), len(answer)) in {(2, 2), (2, 3), (3, 3)}
    assert set(in_degree) == set(range(1, n))
    for count in in_degree.values():
      assert abs(count / 2000 - 1 / (n - 1)) < 0.04
  edges = collections.Counter(len(parse(task, task.sample(rng, 3))[0]) for _ in range(2000))
  assert abs(edges[3] / 2000 - 0.5) < 0.04
  # At n = 5 there are 1 or 2 leaves (1/2 each). A second leaf shows unless nodes 2, 3 and 4
  # all pass it over (probability 1/4 * 1/3 * 3/8 = 1/32): two roots show with probability
  # 1/2 * 31/32.
  two_roots = 0
  for _ in range(2000):
    edges, *_ = parse(task, task.sample(rng, 5))
    two_roots += len({p for p, _ in edges} - {c for _, c in edges}) == 2
  assert abs(two_roots / 2000 - 31 / 64) < 0.04


def test_hubs_exceed_the_out_degree_cap():
  rng = np.random.default_rng(0)
  for hub_prob, exceeds in ((0.0, False), (0.2, True)):
    task = BrevoTask(hub_prob=hub_prob)
    most = 0
    for _ in range(50):
      edges, *_ = parse(task, task.sample(rng, 30))
      most = max(most, *collections.Counter(p for p, _ in edges).values())
    assert (most > 4) == exceeds


def test_the_original_layout_on_a_fixed_seed():
  # A golden example: update it only when the drawing rule changes on purpose. Leaves n5 and n0;
  # n6 <- n5; n3 <- n6 n5 n0; the query n1 <- n3 n6 n5 n0.
  task = BrevoTask(max_nodes=8)
  ex = task.sample(np.random.default_rng(0), 5)
  assert ' '.join(task.decode(ex.tokens)) == (
      '<bos> n3 n1 n6 n1 n5 n1 n6 n3 n5 n3 n0 n3 n5 n6 n0 n1 <query> n1 <eos> '
      'n0 n5 n6 n3 n1 <eos>')


def test_seq_len_is_attained_by_the_densest_graph():
  # n1 <- n0, n2 <- n0 n1: <bos>, 3 edges, '<query> n2 <eos>', 3 answer nodes, '<eos>'.
  task = BrevoTask()
  assert task.seq_len(3) == 1 + 2 * 3 + 3 + 3 + 1 and task.max_answer_length(3) == 4
  rng = np.random.default_rng(0)
  assert max(len(task.sample(rng, 3).tokens) for _ in range(20)) == task.seq_len(3)


def test_deterministic_by_seed_and_seeds_differ():
  task = BrevoTask()

  def draw(seed):
    return task.sample(np.random.default_rng(seed), 20)

  a, b, c = draw(7), draw(7), draw(8)
  for field in ('tokens', 'targets', 'loss_mask', 'complexity', 'annotated'):
    np.testing.assert_array_equal(getattr(a, field), getattr(b, field))
  for name in task.feature_names:
    np.testing.assert_array_equal(a.features[name], b.features[name])
  assert len(a.tokens) != len(c.tokens) or (a.tokens != c.tokens).any()


def test_global_rng_untouched():
  np.random.seed(0)
  before = np.random.get_state()[1].copy()
  BrevoTask(hub_prob=0.1).sample(np.random.default_rng(0), 30)
  np.testing.assert_array_equal(np.random.get_state()[1], before)


def test_vocab_options_and_stream():
  task = BrevoTask()
  assert task.vocab[0] == '<pad>' and len(set(task.vocab)) == task.vocab_size == 4 + 64
  assert task.valid_sizes() == (3, 64)
  for size in (2, 65):
    with pytest.raises(ValueError):
      task.sample(np.random.default_rng(0), size)
  for options in ({'order': 'bfs'}, {'hub_prob': 2.0}, {'hub_weight': 0.0}, {'max_nodes': 2}):
    with pytest.raises(ValueError):
      BrevoTask(**options)
  stream = base.Stream(task, sizes=tuple(SIZES), batch_size=8, seed=0)
  batch = stream.batch(3)
  assert batch['tokens'].shape == (8, task.seq_len(30))
  assert set(batch['features']) == set(task.feature_names)
  np.testing.assert_array_equal(batch['tokens'], stream.batch(3)['tokens'])
  grouped = [f for group in task.feature_groups.values() for f in group]
  assert set(grouped) | {task.timing_control} == set(task.feature_names)
  assert set(task.alignment_features) <= set(task.feature_names)
