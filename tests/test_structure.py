"""The package's import graph: no circles, and inspection without the training loop."""

import ast
import pathlib
import subprocess
import sys

REPO = pathlib.Path(__file__).resolve().parents[1]
PACKAGES = ('anira_jax', 'tasks', 'experiments')


def _module_name(path: pathlib.Path) -> str:
  parts = path.relative_to(REPO).with_suffix('').parts
  return '.'.join(parts[:-1] if parts[-1] == '__init__' else parts)


def _imports(path: pathlib.Path, modules: set[str]) -> set[str]:
  """The project modules `path` imports, anywhere in the file (a function-level import is an
  arrow too). `from a import b` names module a.b when there is one, else a."""
  found = set()
  for node in ast.walk(ast.parse(path.read_text())):
    if isinstance(node, ast.Import):
      found.update(alias.name for alias in node.names)
    elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
      for alias in node.names:
        sub = f'{node.module}.{alias.name}'
        found.add(sub if sub in modules else node.module)
  return found & modules


def import_graph() -> dict[str, set[str]]:
  files = [f for package in PACKAGES for f in (REPO / package).rglob('*.py')]
  modules = {_module_name(f) for f in files}
  return {_module_name(f): _imports(f, modules) for f in files}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
  """Every circle of module imports, each as the path that closes it (depth-first search)."""
  found, state = [], {}

  def visit(node, path):
    state[node] = 'open'
    for nxt in sorted(graph.get(node, ())):
      if state.get(nxt) == 'open':
        found.append(path[path.index(nxt):] + [nxt])
      elif nxt not in state:
        visit(nxt, path + [nxt])
    state[node] = 'done'

  for node in sorted(graph):
    if node not in state:
      visit(node, [node])
  return found


def test_cycle_finder_finds_a_circle():
  assert cycles({'a': {'b'}, 'b': {'c'}, 'c': {'a'}, 'd': {'a'}}) == [['a', 'b', 'c', 'a']]
  assert cycles({'a': {'b'}, 'b': set()}) == []


def test_no_module_imports_itself_back():
  graph = import_graph()
  assert 'anira_jax.experiment' in graph and graph['anira_jax.inspect']  # the graph was read
  assert cycles(graph) == []


def test_inspection_does_not_import_the_training_loop():
  # tqdm is the loop's progress bar; it does not count where torch is installed (the bench and
  # llm-test extras): tensorboardX then imports torch, which imports tqdm.
  code = ('import sys, anira_jax.inspect, anira_jax.analysis.run; '
          'print(sorted(m for m in sys.modules if m.startswith("anira_jax.training") '
          'or (m == "tqdm" and "torch" not in sys.modules)))')
  result = subprocess.run([sys.executable, '-c', code], cwd=REPO, capture_output=True, text=True,
                          timeout=120)
  assert result.returncode == 0, result.stderr[-2000:]
  assert result.stdout.strip() == '[]'
