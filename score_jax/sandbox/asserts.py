"""Rewrites the asserts of (trusted) test code so that the sandbox type-checks asserted values.

Inside every `assert` statement's test expression:

* each comparison `a == b` (any operator, chains included) becomes
  `__score_compare__(("==",), a, b)`;
* each arithmetic operation `a - b` / `-a` becomes `__score_binop__("-", a, b)` /
  `__score_unary__("-", a)` (so `abs(f(x) - 1.0) < 1e-6` cannot be fooled by `__sub__`);
* each value whose truth is tested directly (`assert f(x)`, the operands of `and`/`or`/`not`)
  becomes `__score_truth__(value)`.

The guards live in `score_jax.sandbox.driver` (they run in the sandbox); they raise
AssertionError unless the values are plain builtins, or of one type. The assert message and
everything outside asserts is left alone. Only test code is parsed here: the untrusted
program is compiled inside the sandbox, never on the host.
"""

from __future__ import annotations

import ast
import functools
import types

COMPARE = "__score_compare__"
BINOP = "__score_binop__"
UNARY = "__score_unary__"
TRUTH = "__score_truth__"
TESTS_FILENAME = "tests.py"

_COMPARE_OPS = {ast.Eq: "==", ast.NotEq: "!=", ast.Lt: "<", ast.LtE: "<=", ast.Gt: ">",
                ast.GtE: ">=", ast.Is: "is", ast.IsNot: "is not", ast.In: "in",
                ast.NotIn: "not in"}
_BINARY_OPS = {ast.Add: "+", ast.Sub: "-", ast.Mult: "*", ast.Div: "/", ast.FloorDiv: "//",
               ast.Mod: "%", ast.Pow: "**", ast.MatMult: "@", ast.LShift: "<<",
               ast.RShift: ">>", ast.BitAnd: "&", ast.BitOr: "|", ast.BitXor: "^"}
_UNARY_OPS = {ast.USub: "-", ast.UAdd: "+", ast.Invert: "~"}


def _call(name: str, args: list[ast.expr], like: ast.AST) -> ast.Call:
  node = ast.Call(func=ast.Name(id=name, ctx=ast.Load()), args=args, keywords=[])
  return ast.copy_location(node, like)


class _Guard(ast.NodeTransformer):
  """Replaces comparisons and arithmetic inside one assert expression with guard calls."""

  def visit_Compare(self, node: ast.Compare) -> ast.AST:
    self.generic_visit(node)
    ops = ast.Constant(tuple(_COMPARE_OPS[type(op)] for op in node.ops))
    return _call(COMPARE, [ops, node.left, *node.comparators], node)

  def visit_BinOp(self, node: ast.BinOp) -> ast.AST:
    self.generic_visit(node)
    return _call(BINOP, [ast.Constant(_BINARY_OPS[type(node.op)]), node.left, node.right],
                 node)

  def visit_UnaryOp(self, node: ast.UnaryOp) -> ast.AST:
    self.generic_visit(node)
    if isinstance(node.op, ast.Not):
      return node
    return _call(UNARY, [ast.Constant(_UNARY_OPS[type(node.op)]), node.operand], node)


def _truth(node: ast.expr) -> ast.expr:
  """Wraps the values whose truth the assert tests (through and/or/not) in TRUTH."""
  if isinstance(node, ast.BoolOp):
    node.values = [_truth(v) for v in node.values]
    return node
  if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.Not):
    node.operand = _truth(node.operand)
    return node
  if isinstance(node, ast.Compare):   # becomes a COMPARE call, which returns a bool
    return node
  return _call(TRUTH, [node], node)


class _AssertRewriter(ast.NodeTransformer):

  def visit_Assert(self, node: ast.Assert) -> ast.Assert:
    node.test = _Guard().visit(_truth(node.test))
    return node


def rewrite_asserts(source: str) -> ast.Module:
  """The AST of `source` with every assert guarded (see the module docstring).

  Raises:
    ValueError: `source` is not valid Python (test code comes from the task data).
  """
  try:
    tree = ast.parse(source, filename=TESTS_FILENAME)
  except SyntaxError as e:
    raise ValueError(f"test code does not parse ({e.msg}, line {e.lineno}): "
                     f"{(e.text or '').strip()!r}; fix the task's test data") from e
  tree = _AssertRewriter().visit(tree)
  return ast.fix_missing_locations(tree)


@functools.lru_cache(maxsize=4096)
def compile_tests(source: str) -> types.CodeType:
  """`source` with guarded asserts, compiled (cached: tasks reuse the same tests)."""
  return compile(rewrite_asserts(source), TESTS_FILENAME, "exec", dont_inherit=True)
