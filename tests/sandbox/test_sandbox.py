"""The code sandbox: results, and containment of the reward hacks and attacks of issue 4.

Every program here really runs in bubblewrap (no mocks). Each attack must be contained
(nothing reaches the host) and must not pass.
"""

import ast
import os
import pathlib
import secrets
import socket
import sys
import threading
import time

import pytest

from score_jax import sandbox
from score_jax.sandbox import bwrap as sandbox_bwrap


@pytest.fixture(scope="module")
def pool():
  with sandbox.SandboxPool(2, timeout_s=5.0) as p:
    yield p


def _host_processes() -> str:
  """One line "uid args" per process of the host (like `ps -eo uid,args`)."""
  lines = []
  for proc in pathlib.Path("/proc").iterdir():
    if not proc.name.isdigit():
      continue
    try:
      args = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
      uid = next(line.split()[1] for line in (proc / "status").read_text().splitlines()
                 if line.startswith("Uid:"))
    except (OSError, StopIteration):
      continue                     # the process ended meanwhile
    lines.append(f"{uid} {args.strip()}")
  return "\n".join(lines)


# --- results -----------------------------------------------------------------------------

def test_run_captures_output_and_exit_status(pool):
  r = pool.run("import sys\nprint('out')\nprint('err', file=sys.stderr)")
  assert (r.passed, r.status, r.stdout, r.stderr, r.returncode) == (
      True, "passed", "out\n", "err\n", 0)
  r = pool.run("x = 1\n1 / 0")
  assert (r.passed, r.status, r.returncode, r.reason) == (False, "failed", 1, "exit status 1")
  assert 'File "program.py", line 2' in r.stderr and "ZeroDivisionError" in r.stderr
  r = pool.run("raise SystemExit(3)")
  assert (r.status, r.returncode) == ("failed", 3)
  r = pool.run("def f(:\n  pass")
  assert r.status == "failed" and "SyntaxError" in r.stderr


def test_run_tests_pass_fail_and_setup(pool):
  program = "def add(a, b):\n  return a + b\n"
  r = pool.run_tests(program, ["assert add(1, 2) == 3", "assert add(-1, 1) == 0"])
  assert r.passed and r.stdout == ""
  r = pool.run_tests(program, ["assert add(1, 2) == 3", "assert add(2, 2) == 5"])
  assert r.status == "failed" and 'File "tests.py", line 2' in r.stderr
  r = pool.run_tests(program, "assert add(x, 1) == 3\n", setup="x = 2")
  assert r.passed
  with pytest.raises(ValueError, match="test code does not parse"):
    pool.run_tests(program, ["assert add(1, 2) =="])


def test_module_level_run_and_map_order(pool):
  assert sandbox.run("print(6 * 7)", timeout_s=5).stdout == "42\n"
  assert sandbox.run_tests("y = 2", ["assert y == 2"], timeout_s=5).passed
  results = pool.map([f"print({i})" for i in range(5)])
  assert [r.stdout for r in results] == [f"{i}\n" for i in range(5)]
  results = pool.map(["f = abs", "f = len"], [["assert f(-2) == 2"], ["assert f(-2) == 2"]])
  assert [r.passed for r in results] == [True, False]


def test_unknown_limit_and_bad_limits_are_rejected(pool):
  with pytest.raises(TypeError, match="unknown sandbox limit"):
    pool.run("pass", timeout=3)
  with pytest.raises(ValueError, match="memory_mb"):
    sandbox.Limits(memory_mb=0)


# --- isolation ---------------------------------------------------------------------------

def test_runs_as_the_slot_uid_with_a_clean_environment(pool, monkeypatch):
  monkeypatch.setenv("SCORE_JAX_TEST_SECRET", "hunter2")
  r = pool.run("import os\nprint(os.getuid())\nprint(sorted(os.environ))")
  uid_line, env_line = r.stdout.splitlines()
  assert ast.literal_eval(env_line) == ["HOME", "LANG", "PATH", "PWD", "TMPDIR"]
  if os.geteuid() != 0:
    return
  assert int(uid_line) >= sandbox_bwrap.UID_BASE
  # Seen from the host, the sandbox's processes run as that uid (not root), one per slot.
  marker = f"1.{secrets.randbelow(10 ** 6):06d}"     # sleeps 1.x s; unique on the host
  program = f"import subprocess\nsubprocess.run(['/bin/sleep', '{marker}'])"
  threads = [threading.Thread(target=pool.run, args=(program,)) for _ in range(2)]
  for t in threads:
    t.start()
  uids, deadline = set(), time.monotonic() + 3
  while len(uids) < 2 and time.monotonic() < deadline:
    time.sleep(0.1)
    uids |= {int(line.split()[0]) for line in _host_processes().splitlines()
             if f"sleep {marker}" in line}
  for t in threads:
    t.join()
  assert len(uids) == 2 and min(uids) >= sandbox_bwrap.UID_BASE, uids


def test_no_network_and_no_dns(pool):
  server = socket.create_server(("127.0.0.1", 0))
  port = server.getsockname()[1]
  try:
    r = pool.run(f"import socket\nsocket.create_connection(('127.0.0.1', {port}), timeout=2)")
    assert r.status == "failed" and "ConnectionRefusedError" in r.stderr  # own loopback
    r = pool.run("import socket\nsocket.create_connection(('1.1.1.1', 53), timeout=2)")
    assert r.status == "failed" and "Network is unreachable" in r.stderr
    r = pool.run("import socket\nsocket.getaddrinfo('example.com', 80)")
    assert r.status == "failed" and "gaierror" in r.stderr
    r = pool.run("import socket\nprint([n for _, n in socket.if_nameindex()])")
    assert r.stdout == "['lo']\n"
  finally:
    server.close()


def test_cannot_write_outside_its_tmp(pool, tmp_path):
  marker = f"score_sandbox_{secrets.token_hex(4)}"
  targets = [f"/usr/{marker}", f"/{marker}", f"/root/{marker}", f"/dev/{marker}",
             str(pathlib.Path(__file__).resolve().parent / marker), str(tmp_path / marker)]
  program = "\n".join([
      "import os",
      f"for path in {targets!r}:",
      "  try:",
      "    open(path, 'w').write('x')",
      "    print('WROTE', path)",
      "  except OSError as e:",
      "    print('denied', type(e).__name__)",
      f"open('/tmp/{marker}', 'w').write('inside')",
      f"print(open('/tmp/{marker}').read())"])
  r = pool.run(program)
  assert r.passed and "WROTE" not in r.stdout and r.stdout.endswith("inside\n")
  for path in targets + [f"/tmp/{marker}"]:
    assert not os.path.exists(path), path


def test_cannot_read_files_of_the_host_home(pool):
  home = pathlib.Path(os.path.expanduser("~"))
  secret = home / f".score_sandbox_secret_{secrets.token_hex(4)}"
  value = secrets.token_hex(8)
  secret.write_text(value)
  try:
    program = "\n".join([
        "import os",
        "for path in [%r, '/etc/passwd', %r]:" % (str(secret), str(pathlib.Path.cwd())),
        "  try:",
        "    print(open(path).read() if os.path.isfile(path) else os.listdir(path))",
        "  except OSError as e:",
        "    print('denied', type(e).__name__)",
        "print(os.listdir(%r) if os.path.isdir(%r) else 'no home')" % (str(home), str(home))])
    r = pool.run(program)
    assert r.passed and value not in r.stdout
    lines = r.stdout.splitlines()
    assert lines[:2] == ["denied FileNotFoundError"] * 2
    # The working directory does not exist in the sandbox, unless the interpreter lives under
    # it (a virtualenv in the checkout, `python -m venv .venv`): then the sandbox binds that
    # one directory read-only, and nothing else of the working directory is there.
    cwd, prefix = pathlib.Path.cwd().resolve(), pathlib.Path(sys.prefix).resolve()
    if prefix.is_relative_to(cwd) and prefix != cwd:
      assert lines[2] == str([prefix.relative_to(cwd).parts[0]])
    else:
      assert lines[2] == "denied FileNotFoundError"
    assert secret.name not in lines[3]
  finally:
    secret.unlink()


# --- resource limits ---------------------------------------------------------------------

def test_process_limit_is_enforced(pool):
  program = "\n".join([
      "import os, time",
      "n = 0",
      "for _ in range(50):",
      "  try:",
      "    if os.fork() == 0:",
      "      time.sleep(30)",
      "      os._exit(0)",
      "    n += 1",
      "  except OSError:",
      "    break",
      "print(n)"])
  r = pool.run(program, processes=8)
  assert r.passed and int(r.stdout) == 7     # 8 processes: this one and 7 children


def test_fork_bomb_is_contained(pool):
  start = time.monotonic()
  r = pool.run("import os\nwhile True:\n  try:\n    os.fork()\n  except OSError:\n    pass",
               timeout_s=2)
  assert r.status == "timeout" and not r.passed
  assert time.monotonic() - start < 6
  assert all(r.passed for r in pool.map(["print('ok')"] * 4)), "the slots work again"


def test_memory_bomb_is_contained(pool):
  r = pool.run("x = bytearray(8 * 1024 ** 3)", memory_mb=256)
  assert r.status == "failed" and "MemoryError" in r.stderr
  r = pool.run("chunks = []\nwhile True:\n  chunks.append(bytearray(10 ** 7))", memory_mb=256)
  assert r.status == "failed" and "MemoryError" in r.stderr


def test_file_size_and_tmp_size_are_limited(pool):
  r = pool.run("open('/tmp/big', 'wb').write(b'x' * (3 << 20))", file_mb=2)
  assert r.status == "failed"
  r = pool.run("for i in range(8):\n  open(f'/tmp/f{i}', 'wb').write(b'x' * (1 << 20))",
               tmp_mb=4, file_mb=2)
  assert r.status == "failed" and "No space left" in r.stderr


def test_infinite_loop_times_out_within_the_wall_limit(pool):
  r = pool.run("while True:\n  pass", timeout_s=1.0)
  assert (r.status, r.passed, r.returncode) == ("timeout", False, -9)
  assert 1.0 <= r.elapsed_s < 3.0
  r = pool.run("import time\ntime.sleep(60)", timeout_s=1.0)
  assert r.status == "timeout" and r.elapsed_s < 3.0
  r = pool.run("while True:\n  pass", timeout_s=10.0, cpu_s=1)
  assert (r.status, r.reason) == ("timeout", "CPU time limit") and r.elapsed_s < 5.0


def test_megabytes_of_output_are_capped_and_end_the_run(pool):
  r = pool.run("while True:\n  print('y' * 1000)", output_bytes=64 * 1024)
  assert r.status == "error" and len(r.stdout) <= 64 * 1024 and r.elapsed_s < 4.0
  r = pool.run("import sys\nsys.stderr.write('e' * 10 ** 7)")
  assert r.status == "error" and len(r.stderr) <= sandbox_bwrap.Limits().output_bytes


def test_background_children_do_not_outlive_the_run(pool):
  marker = f"{secrets.randbelow(10 ** 6) + 10 ** 6}.5"
  program = "\n".join([
      "import os, subprocess",
      f"subprocess.Popen(['/bin/sleep', '{marker}'], start_new_session=True)",
      "if os.fork() == 0:",             # a double-forked daemon
      "  os.setsid()",
      "  if os.fork() == 0:",
      f"    os.execv('/bin/sleep', ['sleep', '{marker}'])",
      "  os._exit(0)",
      "print('bye')"])
  r = pool.run(program)
  assert r.passed and r.stdout == "bye\n"
  time.sleep(0.2)
  assert marker not in _host_processes()


def test_killing_the_parent_or_everything_is_contained(pool):
  wrong = "def add(a, b):\n  return 0\n"
  for attack in ["import os, signal\nos.kill(os.getppid(), signal.SIGKILL)\n",
                 "import os, signal\nos.kill(-1, signal.SIGKILL)\n",
                 "import os, signal\nos.kill(os.getpid(), signal.SIGKILL)\n"]:
    results = pool.map([attack + wrong, "import time\ntime.sleep(0.5)\nprint('alive')"],
                       [["assert add(1, 2) == 3"], ["pass"]])
    assert results[0].status == "failed", (attack, results[0])
    assert results[1].passed and results[1].stdout == "alive\n"   # a neighbour survives


# --- reward hacks ------------------------------------------------------------------------

@pytest.mark.parametrize("exit_call", [
    "import os\nos._exit(0)", "import sys\nsys.exit(0)", "raise SystemExit",
    "import os\nos.close(1)",
    "import builtins\nbuiltins.exec = lambda *a, **k: None",          # skip the tests
    "import os\nos._exit = lambda code: None",                        # survive a failure
    "import sys\nsys.excepthook = lambda *a: None",
    "import atexit, os\natexit.register(os._exit, 0)",
])
def test_exiting_before_the_asserts_does_not_pass(pool, exit_call):
  r = pool.run_tests("def add(a, b):\n  return 0\n" + exit_call, ["assert add(1, 2) == 3"])
  assert not r.passed and r.status == "failed"


def test_a_tracer_installed_by_the_program_cannot_skip_the_asserts(pool):
  program = "\n".join([
      "import sys",
      "def f(x):",
      "  return 0",
      "def tracer(frame, event, arg):",
      "  if frame.f_code.co_filename == 'tests.py':",
      "    def local(frame, event, arg):",
      "      if event == 'line' and frame.f_lineno < 3:",
      "        frame.f_lineno = 3",             # jump over the asserts
      "      return local",
      "    return local",
      "sys.settrace(tracer)"])
  r = pool.run_tests(program, ["assert f(1) == 1", "assert f(2) == 2", "pass"])
  assert r.status == "failed" and "AssertionError" in r.stderr


def test_exit_inside_the_function_under_test_does_not_pass(pool):
  r = pool.run_tests("import sys\ndef add(a, b):\n  sys.exit(0)", ["assert add(1, 2) == 3"])
  assert r.status == "failed" and "SystemExit inside a call" in r.reason
  r = pool.run_tests("import sys\nsys.exit(0)\ndef add(a, b):\n  return 3",
                     ["assert add(1, 2) == 3"])
  assert (r.status, r.reason) == ("failed", "the program exited before the tests ran")


ALWAYS_EQUAL = """
class Anything:
  def __eq__(self, other): return True
  def __ne__(self, other): return False
  def __lt__(self, other): return True
  def __sub__(self, other): return 0
  def __rsub__(self, other): return 0
  def __abs__(self): return 0
  def __bool__(self): return True
  def __contains__(self, item): return True
  def __hash__(self): return 0
class SneakyInt(int):
  def __eq__(self, other): return True
class Meta(type):                      # makes the class hash and compare equal to int
  def __hash__(cls): return hash(int)
  def __eq__(cls, other): return True
class Sly(metaclass=Meta):
  def __eq__(self, other): return True
  __hash__ = object.__hash__
"""


@pytest.mark.parametrize("body, test", [
    ("return Anything()", "assert f(1) == 3"),
    ("return Anything()", "assert 3 == f(1)"),
    ("return Anything()", "assert not f(1) != 3"),
    ("return [Anything()]", "assert f(1) == [3]"),
    ("return {'k': Anything()}", "assert f(1) == {'k': 3}"),
    ("return Anything()", "assert abs(f(1) - 1.5) < 1e-6"),
    ("return Anything()", "assert f(1)"),
    ("return Anything()", "assert 3 in f(1)"),
    ("return Anything()", "assert all(f(x) == x + 7 for x in range(3))"),
    ("return SneakyInt(9)", "assert f(1) == 3"),
    ("return Sly()", "assert f(1) == 3"),
])
def test_always_equal_objects_do_not_pass(pool, body, test):
  r = pool.run_tests(ALWAYS_EQUAL + f"def f(x):\n  {body}\n", [test])
  assert r.status == "failed" and 'File "tests.py", line 1' in r.stderr, r


@pytest.mark.parametrize("body, test", [
    ("return SneakyInt(3)", "assert f(1) == 3"),        # its value is right
    ("import collections\n  return collections.Counter('aab')",
     "assert f(1) == {'a': 2, 'b': 1}"),
    ("import collections\n  return collections.namedtuple('P', 'x y')(1, 2)",
     "assert f(1) == (1, 2)"),
    ("return 1.5", "assert abs(f(1) - 1.5) < 1e-6"),
    ("return [1, 2]", "assert 2 in f(1) and not 5 in f(1)"),
    ("return None", "assert f(1) is None"),
])
def test_honest_values_still_pass(pool, body, test):
  r = pool.run_tests(ALWAYS_EQUAL + f"def f(x):\n  {body}\n", [test])
  assert r.passed, r.stderr


def test_objects_of_the_program_are_remote_and_equal_nothing(pool):
  """Instances of the program's classes stay in its process: the tests can call them and
  read their attributes (as plain data), but they equal no value, not even their like."""
  program = ("class Pair:\n  def __init__(s, a, b): s.a, s.b = a, b\n"
             "  def __eq__(s, o): return (s.a, s.b) == (o.a, o.b)\n"
             "  def total(s): return s.a + s.b\n"
             "def swap(p): return Pair(p.b, p.a)\n")
  assert pool.run_tests(program, ["p = swap(Pair(1, 2))\nassert (p.a, p.b) == (2, 1)",
                                  "assert swap(Pair(1, 2)).total() == 3",
                                  "q = Pair(0, 0)\nq.a = 5\nassert swap(q).b == 5"]).passed
  assert not pool.run_tests(program, ["assert swap(Pair(1, 2)) == Pair(2, 1)"]).passed


# --- host-side pieces (no sandbox) -------------------------------------------------------

def test_missing_bwrap_raises_with_the_install_command(monkeypatch, tmp_path):
  monkeypatch.setenv("PATH", str(tmp_path))
  with pytest.raises(sandbox.SandboxUnavailableError, match="apt-get install bubblewrap"):
    sandbox_bwrap.find_bwrap()


def test_a_sandbox_that_cannot_start_fails_loudly(pool):
  with pytest.raises(sandbox.SandboxUnavailableError, match="did not start"):
    pool.run("print('never')", memory_mb=4)


def test_pools_share_no_uid():
  if os.geteuid() != 0:
    pytest.skip("worker uids are claimed only as root")
  with sandbox.SandboxPool(2) as a, sandbox.SandboxPool(2) as b:
    claims = [{uid for uid, _ in p._claims} for p in (a, b)]  # pylint: disable=protected-access
    assert len(claims[0]) == len(claims[1]) == 2 and not claims[0] & claims[1]


def test_concurrent_runs_from_threads(pool):
  results = [None] * 4

  def work(i):
    results[i] = pool.run(f"print({i} * 2)")

  threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
  for t in threads:
    t.start()
  for t in threads:
    t.join()
  assert [r.stdout for r in results] == ["0\n", "2\n", "4\n", "6\n"]
