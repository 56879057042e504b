"""The package's modules import each other without a cycle (imports inside functions included)."""
import ast
import os

import pytest

PACKAGE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'ma_resnet')


def module_name(path: str) -> str:
  relative = os.path.relpath(path, os.path.dirname(PACKAGE))[:-3].replace(os.sep, '.')
  return relative[:-len('.__init__')] if relative.endswith('.__init__') else relative


def import_graph() -> dict[str, set[str]]:
  """module -> the ma_resnet modules it imports (a package import counts as an import of its __init__)."""
  paths = [os.path.join(root, name) for root, _, names in os.walk(PACKAGE) for name in names
           if name.endswith('.py')]
  modules = {module_name(p): p for p in paths}
  graph = {}
  for name, path in modules.items():
    targets = set()
    for node in ast.walk(ast.parse(open(path).read(), path)):
      if isinstance(node, ast.Import):
        targets.update(alias.name for alias in node.names)
      elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
        for alias in node.names:  # `from pkg import module` imports the module; `from m import x`, m itself
          submodule = f'{node.module}.{alias.name}'
          targets.add(submodule if submodule in modules else node.module)
    graph[name] = {t for t in targets if t in modules and t != name}
  return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
  state, stack = {}, []

  def visit(node):
    state[node] = 'open'
    stack.append(node)
    for target in sorted(graph[node]):
      if state.get(target) == 'open':
        return stack[stack.index(target):] + [target]
      if target not in state:
        cycle = visit(target)
        if cycle:
          return cycle
    state[node] = 'done'
    stack.pop()
    return None

  for node in sorted(graph):
    if node not in state:
      cycle = visit(node)
      if cycle:
        return cycle
  return None


def test_the_package_has_no_import_cycle():
  graph = import_graph()
  assert len(graph) > 30 and 'ma_resnet.loop' in graph
  cycle = find_cycle(graph)
  assert cycle is None, 'import cycle: ' + ' -> '.join(cycle)


def test_layering_of_the_loop():
  graph = import_graph()
  assert 'ma_resnet.training' in graph['ma_resnet.loop'] and 'ma_resnet.evaluation' in graph['ma_resnet.loop']
  assert 'ma_resnet.training' not in graph['ma_resnet.evaluation']  # evaluation never imports the trainer
  assert 'ma_resnet.evaluation' not in graph['ma_resnet.training']


def test_the_checker_finds_a_cycle():
  assert find_cycle({'a': {'b'}, 'b': {'c'}, 'c': {'a'}}) == ['a', 'b', 'c', 'a']
  assert find_cycle({'a': {'b'}, 'b': set()}) is None


@pytest.mark.parametrize('module', ['ma_resnet.loop', 'ma_resnet.predict', 'ma_resnet.inference'])
def test_modules_import(module):
  __import__(module)
