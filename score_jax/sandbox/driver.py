"""The program that runs *inside* the code sandbox (stdlib only; no score_jax imports).

`score_jax.sandbox` starts `python -I -S -B -X utf8 -c BOOTSTRAP JOB STATUS_FD` inside
bubblewrap, where JOB is a file holding `marshal.dumps((driver code, job))`: the bootstrap
execs this file's code object (compiled once on the host, which saves compiling it in every
run) as `__main__`, and this driver

1. reads the job dict (program, tests, token, rlimits, sys.path additions) from JOB and
   deletes the file, so the program under test cannot read the pass token from disk;
2. lowers its rlimits (address space, CPU, file size, open files, processes; the sandbox runs
   in its own user namespace, so the process limit counts only the sandbox's processes);
3. writes one byte to STATUS_FD and closes it ("the sandbox started"; the host tells a
   sandbox that failed to start from a program that failed);
4. runs the program as `__main__`; with tests (`run_tests`), runs the tests (a code object
   compiled on the host from the rewritten asserts, see `score_jax.sandbox.asserts`) in a
   *copy* of the program's globals that also holds the guard functions below, then writes the
   per-run token to stdout and exits 0 at once.

The guards compare, compute and test the truth of *normalised* values: rebuilt from exact
builtin types (see `normalise`), so that no method of the program's classes takes part; a
value that contains anything else only passes a comparison with a value of its own type.
This defeats objects whose `__eq__` always returns True (and subclasses of int, str, ...
that override it), while a Counter still equals the dict it counts.

Limits: the program shares this interpreter, so one that uses introspection (walks frames
or gc objects to find the token or the guards, or sets a tracer from inside a call made by
a test) can still subvert the checks; patched builtins, `os._exit`, exits, excepthooks and
tracers set at import time cannot. Tests run in a copy of the program's globals: a test
that reads a global which the program's functions rebind sees the value from before the
tests (no MBPP or HumanEval test does).
"""

import builtins
import marshal
import os
import resource
import sys

# The program may patch `builtins` (exec, dict, isinstance, ...) or `os._exit`: the driver
# looks builtins up in its own globals, bound here before the program runs.
globals().update({k: v for k, v in vars(builtins).items() if not k.startswith("__")})
_os_exit = os._exit  # pylint: disable=protected-access
_modules = sys.modules
_settrace, _setprofile = sys.settrace, sys.setprofile
_type = type
_len = len
_issubclass = issubclass
_write = os.write
_Py_TPFLAGS_IMMUTABLETYPE = 1 << 8   # static (C) types, whose methods cannot be patched

# Types are looked up by id: a metaclass can make `cls == int` or `hash(cls)` say anything.
_SCALARS = {id(t) for t in (_type(None), bool, int, float, complex, str, bytes, range, slice,
                            _type(Ellipsis), _type(NotImplemented), type, _type(len),
                            _type(lambda: 0))}
# Subclasses of these builtins are converted to the builtin by C-level methods that a
# subclass cannot override (so an `int` subclass with `__eq__ = lambda *a: True` compares
# as its integer value).
_TO_BUILTIN = ((int, int.__index__), (float, float.__float__), (str, str.__str__),
               (bytes, bytes.__bytes__), (complex, complex.__complex__))
_KEYS, _VALUES, _ITEMS = _type({}.keys()), _type({}.values()), _type({}.items())
_BUILTIN_BASES = (int, float, str, bytes, complex, list, tuple, dict, set, frozenset,
                  bytearray, _KEYS, _VALUES, _ITEMS)
_TRUSTED = {}       # id -> kind of C types of stdlib modules (deque, OrderedDict, ...)


class Opaque(Exception):
  """A value that is not made of builtin types."""


def _trusted(t):
  """The kind of a C-implemented stdlib type ("seq", "map", "scalar") or None."""
  if not _TRUSTED.get("_done"):
    collections, decimal = _modules.get("collections"), _modules.get("decimal")
    found = []
    if collections is not None:
      found += [(getattr(collections, "deque", None), "seq"),
                (getattr(collections, "OrderedDict", None), "map"),
                (getattr(collections, "defaultdict", None), "map")]
    if decimal is not None:
      found.append((getattr(decimal, "Decimal", None), "scalar"))
    for cls, kind in found:
      # Only static types: a class the program defined (or patched in) never qualifies.
      if _type(cls) is type and cls.__flags__ & _Py_TPFLAGS_IMMUTABLETYPE:
        _TRUSTED[id(cls)] = kind
    _TRUSTED["_done"] = collections is not None and decimal is not None
  return _TRUSTED.get(id(t))


def normalise(v):
  """`v` rebuilt from exact builtin types; raises Opaque for any other object inside.

  Subclasses of builtins become the builtin (by C-level copies that ignore overridden
  methods; a namedtuple becomes a tuple, a Counter a dict), dict key / item views become
  sets and value views lists. OrderedDict, defaultdict, deque and Decimal are kept.
  Cyclic containers raise RecursionError (the assert then fails).
  """
  t = _type(v)
  if id(t) in _SCALARS:
    return v
  if t is list:
    return [normalise(x) for x in v]
  if t is tuple:
    return tuple(normalise(x) for x in v)
  if t is dict:
    return {normalise(k): normalise(x) for k, x in dict.items(v)}
  if t is set:
    return {normalise(x) for x in v}
  if t is frozenset:
    return frozenset(normalise(x) for x in v)
  if t is bytearray:
    return bytearray(v)
  kind = _trusted(t)
  if kind == "scalar":
    return v
  if kind == "seq":
    return t(normalise(x) for x in v)
  if kind == "map":
    out = t()
    out.update((normalise(k), normalise(x)) for k, x in v.items())
    return out
  if t is _KEYS or t is _ITEMS:
    return {normalise(x) for x in v}
  if t is _VALUES:
    return [normalise(x) for x in v]
  for base, to_builtin in _TO_BUILTIN:
    if _issubclass(t, base):
      return to_builtin(v)
  if _issubclass(t, list):
    return normalise(list.copy(v))
  if _issubclass(t, tuple):
    return normalise(tuple.__getitem__(v, slice(None)))
  if _issubclass(t, dict):
    return normalise(dict.copy(v))
  if _issubclass(t, set):
    return normalise(set.copy(v))
  if _issubclass(t, frozenset):
    return normalise(frozenset.copy(v))
  raise Opaque(t)


def _builtin_based(t) -> bool:
  return (id(t) in _SCALARS or _trusted(t) is not None
          or _issubclass(t, _BUILTIN_BASES))


def _pair(a, b):
  """(a, b) normalised, or unchanged if both are of one non-builtin class; else fails."""
  try:
    return normalise(a), normalise(b)
  except Opaque as e:
    inner = e.args[0]
  except RecursionError:
    raise AssertionError("type check failed: value nested too deeply (or cyclic)") from None
  t = _type(a)
  if t is _type(b) and not _builtin_based(t):
    return a, b                    # e.g. two instances of a class of the program
  raise AssertionError(
      f"type check failed: {_name(_type(a))} vs {_name(_type(b))} holding a {_name(inner)} "
      "(values must be made of builtin types, or both be of one class)")


def _name(t) -> str:
  return f"{t.__module__}.{t.__qualname__}"


_COMPARE = {"==": lambda a, b: a == b, "!=": lambda a, b: a != b,
            "<": lambda a, b: a < b, "<=": lambda a, b: a <= b,
            ">": lambda a, b: a > b, ">=": lambda a, b: a >= b,
            "is": lambda a, b: a is b, "is not": lambda a, b: a is not b,
            "in": lambda a, b: a in b, "not in": lambda a, b: a not in b}
_BINARY = {"+": lambda a, b: a + b, "-": lambda a, b: a - b, "*": lambda a, b: a * b,
           "/": lambda a, b: a / b, "//": lambda a, b: a // b, "%": lambda a, b: a % b,
           "**": lambda a, b: a ** b, "@": lambda a, b: a @ b, "<<": lambda a, b: a << b,
           ">>": lambda a, b: a >> b, "&": lambda a, b: a & b, "|": lambda a, b: a | b,
           "^": lambda a, b: a ^ b}
_UNARY = {"-": lambda a: -a, "+": lambda a: +a, "~": lambda a: ~a}


def guard_compare(ops, *operands) -> bool:
  """`operands[0] ops[0] operands[1] ...` (a chain) on type-checked, normalised operands.

  All operands are already evaluated (a chain loses Python's lazy evaluation of the later
  operands; the result is the same for side-effect-free tests). `is` compares the objects.
  """
  for i, op in enumerate(ops):
    a, b = operands[i], operands[i + 1]
    if op not in ("is", "is not"):
      a, b = _pair(a, b)
    if not _COMPARE[op](a, b):
      return False
  return True


def guard_binop(op, a, b):
  """`a op b` on operands checked and normalised as in `guard_compare`."""
  a, b = _pair(a, b)
  return _BINARY[op](a, b)


def _single(a, what):
  try:
    return normalise(a)
  except (Opaque, RecursionError):
    raise AssertionError(f"type check failed: {what} a {_type(a).__qualname__}") from None


def guard_unary(op, a):
  """`op a` for a value made of builtins only."""
  return _UNARY[op](_single(a, f"unary {op} on"))


def guard_truth(value):
  """`value` normalised (so that its truth is that of builtins), else fails."""
  return _single(value, "assert on")


GUARDS = {"__score_compare__": guard_compare, "__score_binop__": guard_binop,
          "__score_unary__": guard_unary, "__score_truth__": guard_truth}


def _set_limits(limits):
  for name, value in limits.items():
    resource.setrlimit(getattr(resource, name), (value, value))


def _flush():
  for stream in (sys.stdout, sys.stderr):
    try:
      stream.flush()
    except Exception:  # pylint: disable=broad-except
      pass


def _report(exc, sources):
  """Prints a traceback without the driver's own frame, then exits 1."""
  import linecache  # pylint: disable=import-outside-toplevel
  import traceback  # pylint: disable=import-outside-toplevel
  for filename, source in sources.items():
    linecache.cache[filename] = (_len(source), None, source.splitlines(True), filename)
  _flush()
  try:
    traceback.print_exception(_type(exc), exc, exc.__traceback__.tb_next)
  except Exception:  # pylint: disable=broad-except
    pass
  _flush()
  _os_exit(1)


def _execute(code, namespace, sources):
  try:
    exec(code, namespace)  # pylint: disable=exec-used
  except SystemExit:
    raise
  except BaseException as exc:  # pylint: disable=broad-except
    _report(exc, sources)


def main(argv):
  """Runs the job in the file argv[1] (written by the host); argv[2] is the status fd."""
  job_path, status_fd = argv[1], int(argv[2])
  with open(job_path, "rb") as f:
    job = marshal.loads(f.read())[1]
  os.unlink(job_path)
  _set_limits(job["limits"])
  sys.path.extend(job["sys_path"])
  sys.argv = ["program.py"]
  _write(status_fd, b"S")
  os.close(status_fd)
  token, tests, program = job["token"], job["tests"], job["program"]
  del job
  sources = {"program.py": program}
  module = _type(sys)("__main__")     # the program runs as a real __main__ module
  namespace = module.__dict__
  namespace.update(__builtins__=builtins, __file__="program.py")
  sys.modules["__main__"] = module
  try:
    code = compile(program, "program.py", "exec", dont_inherit=True)
  except SyntaxError as exc:
    _report(exc, sources)
  del program
  _execute(code, namespace, sources)
  if tests is None:
    return
  test_code, sources["tests.py"] = tests
  _settrace(None)                     # a tracer set by the program could skip test lines
  _setprofile(None)
  test_namespace = dict(namespace)
  test_namespace.update(GUARDS)
  _execute(test_code, test_namespace, sources)
  _flush()
  _write(1, token.encode() + b"\n")
  _os_exit(0)


if __name__ == "__main__":
  main(sys.argv)
