"""The house rules of `score_jax/`, checked on its source (see ARCHITECTURE.md).

- no import cycle between its modules (lazy, function-level imports included);
- every module has a docstring and at most ~400 lines;
- the numeric core (model, sampler, losses, step) imports nothing of the host loops.
"""

from __future__ import annotations

import ast
import pathlib

import pytest

from tests.conftest import REPO_ROOT

PACKAGE = REPO_ROOT / "score_jax"
MAX_LINES = 400


def _module_name(path: pathlib.Path) -> str:
  parts = path.relative_to(REPO_ROOT).with_suffix("").parts
  return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _imports(name: str) -> set[str]:
  """score_jax modules that module `name` imports, anywhere in its body."""
  tree = ast.parse(MODULES[name].read_text())
  found = set()
  for node in ast.walk(tree):
    if isinstance(node, ast.Import):
      targets = [alias.name for alias in node.names]
    elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
      # `from a.b import c`: the module a.b.c when it is one, else a.b.
      targets = [f"{node.module}.{alias.name}" if f"{node.module}.{alias.name}" in MODULES
                 else node.module for alias in node.names]
    else:
      continue
    found.update(t for t in targets if t in MODULES and t != name)
  return found


GRAPH = {name: _imports(name) for name in MODULES}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
  """Strongly connected components with more than one module (Tarjan)."""
  index: dict[str, int] = {}
  low: dict[str, int] = {}
  stack: list[str] = []
  on_stack: set[str] = set()
  out: list[list[str]] = []

  def visit(v: str) -> None:
    index[v] = low[v] = len(index)
    stack.append(v)
    on_stack.add(v)
    for w in sorted(graph[v]):
      if w not in index:
        visit(w)
        low[v] = min(low[v], low[w])
      elif w in on_stack:
        low[v] = min(low[v], index[w])
    if low[v] == index[v]:
      component = []
      while True:
        w = stack.pop()
        on_stack.discard(w)
        component.append(w)
        if w == v:
          break
      if len(component) > 1:
        out.append(sorted(component))

  for v in sorted(graph):
    if v not in index:
      visit(v)
  return out


def test_the_cycle_finder_finds_a_planted_cycle():
  graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
  assert _cycles(graph) == [["a", "b", "c"]]
  assert not _cycles({"a": {"b"}, "b": set()})


def test_no_import_cycle():
  assert not _cycles(GRAPH), _cycles(GRAPH)


def test_the_import_graph_is_read():
  # The reader is not vacuous: known edges are there, the moved modules are found.
  assert "score_jax.rl.episode" in GRAPH["score_jax.rl.objectives"]
  assert "score_jax.rl.losses" in GRAPH["score_jax.rl.objectives"]
  assert "score_jax.model.transformer" in GRAPH["score_jax.rl.step"]
  assert "score_jax.text.base" in GRAPH["score_jax.text.hf_tokenizer"]
  assert "score_jax.multihost" in GRAPH["score_jax.train"]


@pytest.mark.parametrize("name", sorted(MODULES))
def test_module_has_a_docstring_and_stays_small(name):
  source = MODULES[name].read_text()
  assert ast.get_docstring(ast.parse(source)), f"{MODULES[name]} has no module docstring"
  lines = len(source.splitlines())
  assert lines <= MAX_LINES, f"{MODULES[name]} has {lines} lines (> {MAX_LINES}): split it"


@pytest.mark.parametrize("core", ["score_jax.model.transformer", "score_jax.model.layers",
                                  "score_jax.sampler", "score_jax.rl.losses",
                                  "score_jax.rl.objectives",
                                  "score_jax.rl.step", "score_jax.rl.episode"])
def test_numeric_core_does_not_import_the_host_side(core):
  host = {"score_jax.train", "score_jax.build", "score_jax.evaluate", "score_jax.experiment",
          "score_jax.rl.rollout", "score_jax.checkpoint", "score_jax.hub.lm",
          "score_jax.tasks.base"}
  reachable, todo = set(), [core]
  while todo:
    for dep in GRAPH[todo.pop()]:
      if dep not in reachable:
        reachable.add(dep)
        todo.append(dep)
  assert not reachable & host, (core, sorted(reachable & host))
