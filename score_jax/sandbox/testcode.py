"""Test code as the verifier runs it: parsed once on the host, names it takes from the program.

  tests = testcode.prepare(["assert add(1, 2) == 3"], setup="", names=())
  tests.source, tests.names, tests.modules   # "assert add(1, 2) == 3\\n", ("add",), ()

The verifier (`score_jax.sandbox.verifier`) runs `setup` + tests in its own namespace. A
name the code reads but never binds (found with `symtable`, in every scope) comes from:

* the verifier's own builtins, when it is one (`abs`, `tuple`, ...);
* the verifier's own import, when it is a stdlib module (MBPP 596 reads `sys` unimported);
* otherwise the program (`names`, fetched from the sandboxed process as plain data or
  handles: the function under test, a class such as MBPP's `Pair` / `Node`).

`names` adds names that the tests take from the program even where a builtin or module has
that name (MBPP 126 defines `sum`; HumanEval's entry point): tasks pass the names their
reference solution defines. Only test code is parsed here: the untrusted program is
compiled inside the sandbox, never on the host.
"""

from __future__ import annotations

import builtins
import dataclasses
import functools
import symtable
import sys
import warnings
from typing import Sequence

TESTS_FILENAME = "tests.py"
_BUILTINS = frozenset(dir(builtins))


@dataclasses.dataclass(frozen=True)
class Tests:
  """Prepared test code.

  Attributes:
    source: setup + tests, as one module (line numbers as in `tests.py` tracebacks).
    names: names the verifier takes from the program.
    modules: stdlib modules the code reads without importing them (the verifier imports).
  """
  source: str
  names: tuple[str, ...]
  modules: tuple[str, ...]


def join(tests: Sequence[str] | str, setup: str = "") -> str:
  """`setup` and `tests` (a str, or a list of str joined by newlines) as one source."""
  if isinstance(tests, str):
    body = tests
  else:
    if not all(isinstance(t, str) for t in tests):
      raise TypeError(f"tests must be a str or a list of str, got {tests!r}")
    body = "\n".join(tests)
  if not isinstance(setup, str):
    raise TypeError(f"setup must be a str, got {setup!r}")
  return f"{setup}\n{body}\n" if setup else body + "\n"


def unbound_names(source: str) -> set[str]:
  """Names `source` reads as globals (in any scope) but never binds at module level.

  Raises:
    ValueError: `source` is not valid Python (test code comes from the task data).
  """
  try:
    with warnings.catch_warnings():       # invalid escapes in the data's strings
      warnings.simplefilter("ignore")
      top = symtable.symtable(source, TESTS_FILENAME, "exec")
  except SyntaxError as e:
    raise ValueError(f"test code does not parse ({e.msg}, line {e.lineno}): "
                     f"{(e.text or '').strip()!r}") from e
  bound = {s.get_name() for s in top.get_symbols()
           if s.is_assigned() or s.is_imported() or s.is_namespace()}
  read = set()
  stack = [top]
  while stack:
    table = stack.pop()
    for s in table.get_symbols():
      if s.is_declared_global() and s.is_assigned():
        bound.add(s.get_name())         # `global x; x = ...` in a function of the tests
      if not s.is_referenced():
        continue
      if table is top or s.is_global() or (table.get_type() == "class" and not s.is_local()):
        read.add(s.get_name())
    stack.extend(table.get_children())
  return read - bound


@functools.lru_cache(maxsize=8192)
def _prepare(source: str, names: tuple[str, ...]) -> Tests:
  unbound = unbound_names(source)
  wanted = set(names) & unbound
  modules = set()
  for name in unbound - wanted - _BUILTINS:
    if name in sys.stdlib_module_names:
      modules.add(name)
    else:
      wanted.add(name)
  return Tests(source, tuple(sorted(wanted)), tuple(sorted(modules)))


def prepare(tests: Sequence[str] | str, setup: str = "", names: Sequence[str] = ()) -> Tests:
  """Joins, parses and analyses test code (cached: tasks reuse the same tests).

  Raises:
    ValueError: the code does not parse (the message says where).
  """
  if isinstance(names, str) or not all(isinstance(n, str) for n in names):
    raise TypeError(f"names must be a list of str, got {names!r}")
  return _prepare(join(tests, setup), tuple(sorted(set(names))))
