"""The package's layers (docs/design.md): imports only go down

    core (config, distributed, model, heads, sharding, logprobs, sampling, checkpoint,
          artifacts, hf, runs, plots, stages, losses/, data/)  →  train/, evaluate  →
    methods  →  tasks/  →  pipeline  →  cli

and no module imports itself through others (no cycle), lazy imports inside functions
included. Experiments are configuration: they import from the package, never the reverse."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / 'alignlab'
LAYERS = (
    ('core', ('alignlab.config', 'alignlab.distributed', 'alignlab.model', 'alignlab.heads',
              'alignlab.sharding', 'alignlab.logprobs', 'alignlab.sampling', 'alignlab.checkpoint',
              'alignlab.artifacts', 'alignlab.hf', 'alignlab.runs', 'alignlab.plots',
              'alignlab.stages', 'alignlab.verdict', 'alignlab.losses', 'alignlab.data',
              'alignlab')),
    ('train', ('alignlab.train', 'alignlab.evaluate')),
    ('methods', ('alignlab.methods',)),
    ('tasks', ('alignlab.tasks',)),
    ('pipeline', ('alignlab.pipeline',)),
    ('cli', ('alignlab.cli', 'alignlab.__main__')),
)


def module_name(path: Path) -> str:
  parts = path.relative_to(ROOT).with_suffix('').parts
  return '.'.join(parts[:-1] if parts[-1] == '__init__' else parts)


def layer_of(module: str) -> int:
  """The layer index of a module: its longest matching prefix in LAYERS."""
  best, index = -1, None
  for i, (_, prefixes) in enumerate(LAYERS):
    for prefix in prefixes:
      if (module == prefix or module.startswith(prefix + '.')) and len(prefix) > best:
        best, index = len(prefix), i
  if index is None:
    raise AssertionError(f'{module} is in no layer of LAYERS: add it')
  return index


def imports_of(path: Path, name: str, known: set[str]) -> set[str]:
  """alignlab modules `path` imports anywhere (function bodies included), resolved to the
  modules that exist (`from alignlab.train import fit` is alignlab.train.fit)."""
  out = set()
  package = name if path.name == '__init__.py' else name.rpartition('.')[0]
  for node in ast.walk(ast.parse(path.read_text())):
    if isinstance(node, ast.Import):
      out.update(a.name for a in node.names)
    elif isinstance(node, ast.ImportFrom):
      base = node.module or ''
      if node.level:
        base = '.'.join(package.split('.')[:len(package.split('.')) - node.level + 1]
                        + ([base] if base else []))
      # `from pkg import mod` imports pkg.mod; `from mod import name` imports mod.
      subs = {f'{base}.{a.name}' for a in node.names} & known
      out.update(subs if len(subs) == len(node.names) else subs | {base})
  return {m for m in out if m in known and m != name}


def graph() -> dict[str, set[str]]:
  paths = {module_name(p): p for p in PACKAGE.rglob('*.py')}
  known = set(paths)
  return {name: imports_of(path, name, known) for name, path in paths.items()}


def test_imports_only_go_down_the_layers():
  bad = [f'{a} ({LAYERS[layer_of(a)][0]}) imports {b} ({LAYERS[layer_of(b)][0]})'
         for a, deps in graph().items() for b in deps
         if b != 'alignlab' and layer_of(b) > layer_of(a)]
  assert not bad, '\n'.join(sorted(bad))


def _cycle(g: dict[str, set[str]]) -> list[str] | None:
  state: dict[str, int] = {}
  stack: list[str] = []

  def visit(node):
    state[node] = 1
    stack.append(node)
    for dep in sorted(g.get(node, ())):
      if dep == 'alignlab':
        continue
      if state.get(dep) == 1:
        return stack[stack.index(dep):] + [dep]
      if dep not in state:
        found = visit(dep)
        if found:
          return found
    stack.pop()
    state[node] = 2
    return None

  for node in sorted(g):
    if node not in state:
      found = visit(node)
      if found:
        return found
  return None


def test_no_import_cycle():
  cycle = _cycle(graph())
  assert cycle is None, ' -> '.join(cycle)


def test_the_checks_catch_what_they_are_for():
  # An upward import and a cycle in a made-up graph are found.
  assert _cycle({'a': {'b'}, 'b': {'c'}, 'c': {'a'}}) == ['a', 'b', 'c', 'a']
  assert _cycle({'a': {'b'}, 'b': set()}) is None
  assert layer_of('alignlab.train.fit') > layer_of('alignlab.model')
  assert layer_of('alignlab.tasks.exact') > layer_of('alignlab.methods')
  with pytest.raises(AssertionError, match='no layer'):
    layer_of('numpy')


def test_experiments_are_configuration_not_a_package():
  assert not (ROOT / 'experiments' / '__init__.py').exists()
  for path in (ROOT / 'experiments').glob('*.py'):
    tree = ast.parse(path.read_text())
    names = {n.name for n in tree.body if isinstance(n, (ast.FunctionDef, ast.ClassDef))}
    assert names <= {'get_config'}, f'{path.name} defines {sorted(names - {"get_config"})}'
