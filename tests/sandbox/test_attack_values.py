"""Reward attacks through the values a program returns (issue 13; see test_attacks.py).

Always-equal objects, subclasses of builtins that lie about equality, cyclic / deep / huge
values, endless generators, exceptions that impersonate builtins, objects of the program:
the verifier sees plain data (or opaque handles), so none of them passes a wrong answer,
and the honest value next to each one still passes.
"""

import time

import pytest

from score_jax import sandbox

RIGHT = "def add(a, b):\n  return a + b\n"
TESTS = ["assert add(1, 2) == 3", "assert add(-1, 1) == 0", "assert add(20, 22) == 42"]


@pytest.fixture(scope="module")
def pool():
  with sandbox.SandboxPool(2, timeout_s=10.0) as p:
    yield p


ODD_VALUES = """
class Anything:
  def __eq__(self, other): return True
  def __ne__(self, other): return False
  def __bool__(self): return True
  def __hash__(self): return 0
class EqInt(int):
  def __eq__(self, other): return True
  __hash__ = int.__hash__
class EqFloat(float):
  def __eq__(self, other): return True
  def __sub__(self, other): return 0.0
  def __abs__(self): return 0.0
class EqStr(str):
  def __eq__(self, other): return True
class EqList(list):
  def __eq__(self, other): return True
class LieInt(int):                 # lies through the conversions an encoder might call
  def __index__(self): return 3
  def __int__(self): return 3
  def __repr__(self): return '3'
class LieStr(str):
  def __str__(self): return '3'
class LieList(list):
  def __iter__(self): return iter([3])
  def __len__(self): return 1
class LieDict(dict):
  def items(self): return [('k', 3)]
  def keys(self): return ['k']
  def __iter__(self): return iter(['k'])
  def __getitem__(self, key): return 3
"""


@pytest.mark.parametrize("wrong_value, right_value, test", [
    ("Anything()", "3", "assert add(1, 2) == 3"),
    ("Anything()", "True", "assert add(1, 2)"),
    ("EqInt(9)", "EqInt(3)", "assert add(1, 2) == 3"),
    ("EqFloat(9.0)", "EqFloat(3.0)", "assert abs(add(1, 2) - 3.0) < 1e-9"),
    ("EqStr('x')", "EqStr('3')", "assert add(1, 2) == '3'"),
    ("EqList([9])", "EqList([3])", "assert add(1, 2) == [3]"),
    ("[Anything()]", "[3]", "assert add(1, 2) == [3]"),
    ("{'k': Anything()}", "{'k': 3}", "assert add(1, 2) == {'k': 3}"),
    # Subclasses whose conversion methods report the right value while the value is wrong
    # (Python itself says LieInt(9) != 3): the encoder must read the builtin's own value.
    ("LieInt(9)", "LieInt(3)", "assert add(1, 2) == 3"),
    ("LieStr('9')", "LieStr('3')", "assert add(1, 2) == '3'"),
    ("LieList([9])", "LieList([3])", "assert add(1, 2) == [3]"),
    ("LieDict(k=9)", "LieDict(k=3)", "assert add(1, 2) == {'k': 3}"),
])
def test_always_equal_objects_and_subclasses_do_not_pass(pool, wrong_value, right_value, test):
  results = pool.map([ODD_VALUES + f"def add(a, b):\n  return {v}\n"
                      for v in (wrong_value, right_value)], [[test]] * 2)
  assert [r.passed for r in results] == [False, True], results


@pytest.mark.parametrize("build", [
    "x = []\n  x.append(x)\n  return x",                                  # self-referential
    "x = []\n  for _ in range(10 ** 6):\n    x = [x]\n  return x",          # 10^6 deep
    "return 'y' * (64 << 20)",                                           # 64 MiB string
    "return list(range(10 ** 7))",                                       # 10^7 items
])
def test_cyclic_deep_or_huge_values_fail_quickly(pool, build):
  start = time.monotonic()
  r = pool.run_tests(f"def add(a, b):\n  {build}\n", ["assert add(1, 2) == 3"],
                     memory_mb=2048)
  assert not r.passed and time.monotonic() - start < 20, r
  assert pool.run_tests(RIGHT, TESTS).passed


def test_infinite_generators_fail_and_finite_ones_pass(pool):
  infinite = "def add(a, b):\n  while True:\n    yield a + b\n"
  finite = "def add(a, b):\n  yield a\n  yield b\n"
  tests = ["assert list(add(1, 2)) == [1, 2]"]
  assert not pool.run_tests(infinite, tests).passed
  assert pool.run_tests(finite, tests).passed
  assert pool.run_tests(infinite, ["import itertools\n"
                                   "assert list(itertools.islice(add(1, 2), 3)) == [3] * 3"]
                        ).passed


def test_an_exception_that_pretends_to_be_the_expected_one_does_not_pass(pool):
  tests = ["try:\n  add(1, -1)\n  raise AssertionError('no error')\nexcept ValueError:\n  pass"]
  fake = "class ValueError(Exception):\n  pass\ndef add(a, b):\n  raise ValueError('x')\n"
  fake_assert = ("class AssertionError(Exception):\n  pass\n"
                 "def add(a, b):\n  raise AssertionError('x')\n")
  honest = "def add(a, b):\n  raise ValueError('negative')\n"
  results = pool.map([fake, fake_assert, honest], [tests] * 3)
  assert [r.passed for r in results] == [False, False, True], results


def test_an_object_of_the_program_has_no_truth_value_and_equals_nothing(pool):
  program = ("class Yes:\n  def __bool__(self): return True\n"
             "  def __eq__(self, other): return True\n"
             "def add(a, b):\n  return Yes()\n")
  for test in ["assert add(1, 2)", "assert add(1, 2) == add(1, 2)",
               "assert not (add(1, 2) != 3)", "assert add(1, 2) in [3]"]:
    assert not pool.run_tests(program, [test]).passed, test
  assert pool.run_tests(RIGHT, ["assert add(1, 2)", "assert add(1, 2) in [3]"]).passed


def test_mutating_the_arguments_is_seen_by_the_tests(pool):
  tests = ["x = [3, 1, 2]\nassert add(x, 0) is None\nassert x == [1, 2, 3]"]
  assert pool.run_tests("def add(a, b):\n  a.sort()\n", tests).passed
  assert not pool.run_tests("def add(a, b):\n  return None\n", tests).passed
