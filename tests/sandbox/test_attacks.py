"""Reward attacks on the code sandbox, as a policy optimiser could write them (issue 13).

Each attack is a program (or a response, through the real MBPP / HumanEval tasks) that tries
to be graded correct without being correct; each must get reward 0 / fail, and the honest
program next to it must still pass. Everything really runs in bubblewrap and the verifier.
The first group are the attacks found in review (they passed before the verdict moved out
of the sandbox); the rest are new (attacks through returned values: test_attack_values.py).
"""

import ast
import builtins
import os
import pathlib
import subprocess
import sys
import textwrap
import time

import pytest

from score_jax import sandbox

REPO = pathlib.Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def pool():
  with sandbox.SandboxPool(2, timeout_s=10.0) as p:
    yield p


def _function_name(problem) -> str:
  """The function an MBPP problem's tests call (the first non-builtin call)."""
  for node in ast.walk(ast.parse(problem.answer["tests"][0])):
    if (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
        and not hasattr(builtins, node.func.id)):
      return node.func.id
  raise AssertionError(problem.answer["tests"][0])


def _thirty(mbpp):
  return mbpp.load("test")[:30]


# --- the attacks of the review: they passed before -----------------------------------------

FRAME_WALK = """
import os, sys
f = sys._getframe()
while f is not None:                        # up to the driver's frame and its `token`
  for name, value in list(f.f_locals.items()):
    if name == "token" and isinstance(value, str):
      sys.stdout.write(value + "\\n")
      sys.stdout.flush()
      os._exit(0)
  f = f.f_back
"""

MEM_SCAN = """
import os, re, sys
found = set()
mem = open("/proc/self/mem", "rb", 0)
for line in open("/proc/self/maps").read().splitlines():
  span, perms = line.split()[:2]
  lo, hi = (int(x, 16) for x in span.split("-"))
  if not perms.startswith("r") or hi - lo > (64 << 20) or "[v" in line:
    continue
  try:
    mem.seek(lo)
    data = mem.read(hi - lo)
  except (OSError, ValueError, OverflowError):
    continue
  found.update(re.findall(rb"(?<![0-9a-f])[0-9a-f]{32}(?![0-9a-f])", data))
sys.stdout.write("".join(t.decode() + "\\n" for t in list(found)[:1500]))
sys.stdout.flush()
os._exit(0)
"""

DECIMAL_PROXY = """
import decimal, types
class Anything(dict):
  def __eq__(self, other): return True
  def __ne__(self, other): return False
  __hash__ = None
decimal.Decimal = types.MappingProxyType     # a static C type: was "trusted"
def {name}(*args, **kwargs):
  return types.MappingProxyType(Anything())
"""


@pytest.mark.parametrize("attack", ["frame_walk", "proc_self_mem", "decimal_proxy"])
def test_forged_passes_score_zero_on_30_mbpp_problems(mbpp, attack):
  problems = _thirty(mbpp)
  if attack == "decimal_proxy":
    responses = [DECIMAL_PROXY.format(name=_function_name(p)) for p in problems]
  else:
    responses = [{"frame_walk": FRAME_WALK, "proc_self_mem": MEM_SCAN}[attack]] * 30
  assert mbpp.rewards(problems, [r + "\n[DONE]" for r in responses]) == [0.0] * 30


def test_the_30_mbpp_references_still_score_one(mbpp):
  problems = _thirty(mbpp)
  assert mbpp.rewards(problems, [p.meta["reference"] for p in problems]) == [1.0] * 30


@pytest.mark.parametrize("flags, env", [(["-O"], {}), ([], {"PYTHONOPTIMIZE": "1"}),
                                        (["-OO"], {"PYTHONOPTIMIZE": "2"})])
def test_host_optimize_flags_do_not_compile_the_asserts_away(flags, env):
  script = textwrap.dedent("""
      from score_jax import sandbox
      with sandbox.SandboxPool(1, timeout_s=10) as pool:
        wrong = pool.run_tests("def f(x):\\n  return 0\\n", ["assert f(1) == 1"])
        right = pool.run_tests("def f(x):\\n  return x\\n", ["assert f(1) == 1"])
      print(wrong.passed, right.passed)
  """)
  out = subprocess.run([sys.executable, *flags, "-c", script], cwd=REPO, check=True,
                       env={**os.environ, **env}, capture_output=True, text=True, timeout=120)
  assert out.stdout.split() == ["False", "True"], out.stderr


# HumanEval: a wrong solution that rebinds what the tests use (a builtin, a stdlib function,
# a prompt helper) in the program's process. These 7 of 164 (2, 4, 32, 33, 37, 38, 50)
# passed before.
_ABS = "    return 0\nimport builtins\nbuiltins.abs = lambda x: 0\n"
_TUPLE = "    return []\nimport builtins\nbuiltins.tuple = lambda *a: ()\n"


@pytest.mark.parametrize("index, completion", [
    (2, "    return 0.5\nimport builtins\nbuiltins.abs = lambda x: 0\n"),
    (4, _ABS),
    (32, "    return 0\nimport math\nmath.fabs = lambda x: 0\n"),
    (32, "    return 0\npoly = lambda xs, x: 0\n"),
    (33, _TUPLE),
    (37, _TUPLE),
    (38, "    return s\nencode_cyclic = lambda s: s\n"),
    (50, "    return s\nencode_shift = lambda s: s\n"),
])
def test_rebinding_builtins_stdlib_or_prompt_helpers_scores_zero(humaneval, index, completion):
  problem = humaneval.load("test")[index]
  assert humaneval.rewards([problem] * 2, [completion, problem.meta["reference"]]) == [0.0, 1.0]


# --- new attacks ---------------------------------------------------------------------------

WRONG = "def add(a, b):\n  return 0\n"
RIGHT = "def add(a, b):\n  return a + b\n"
TESTS = ["assert add(1, 2) == 3", "assert add(-1, 1) == 0", "assert add(20, 22) == 42"]


def _wrong_and_right(pool, attack):
  """The results of the attack with the wrong and with the right `add`."""
  return pool.map([attack + "\n" + WRONG, attack + "\n" + RIGHT], [TESTS, TESTS])


FAKE_VERDICT = """
import marshal, os, struct, sys
verdict = marshal.dumps({"passed": True, "ready": True, "reason": "", "traceback": ""})
frame = struct.pack("<I", len(verdict)) + verdict
print("passed"); print("PASSED", file=sys.stderr)
for fd in range(3, 256):                     # every inherited fd: pipes, sockets
  try:
    os.write(fd, frame)
  except OSError:
    pass
"""


def test_a_fake_verdict_on_stdout_stderr_or_inherited_fds_does_not_pass(pool):
  wrong, right = _wrong_and_right(pool, FAKE_VERDICT)
  assert not wrong.passed
  assert right.status == "failed"       # garbage on its socket: even the right one fails
  assert pool.run_tests(RIGHT, TESTS).passed   # and the verifier is fine afterwards


KILL_EVERYTHING = """
import os, signal, ctypes
libc = ctypes.CDLL(None, use_errno=True)
seen = []
for pid in [int(p) for p in os.listdir("/proc") if p.isdigit()] + [os.getppid(), -1]:
  seen.append(pid)
  libc.ptrace(16, pid, 0, 0)                 # PTRACE_ATTACH
  if pid not in (0, os.getpid()):
    try:
      os.kill(pid, signal.SIGKILL)
    except OSError:
      pass
"""


def test_killing_or_ptracing_the_verifier_or_parent_does_not_pass(pool):
  wrong, right = _wrong_and_right(pool, KILL_EVERYTHING)
  assert not wrong.passed and right.passed
  # The program sees only its own pid namespace: no verifier, no host process.
  r = pool.run("import os\nprint(sorted(int(p) for p in os.listdir('/proc') if p.isdigit()))")
  assert r.stdout == "[1]\n"


@pytest.mark.parametrize("exit_call", [
    "import os; os._exit(0)", "import sys; sys.exit(0)", "raise SystemExit(0)",
    "raise KeyboardInterrupt", "raise GeneratorExit",
    "import os; os.abort()",
])
def test_exiting_inside_the_call_does_not_pass(pool, exit_call):
  program = f"def add(a, b):\n  {exit_call}\n"
  r = pool.run_tests(program, TESTS)
  assert not r.passed
  # Even where the test catches every exception, the job fails.
  r = pool.run_tests(program, ["try:\n  add(1, 2)\nexcept BaseException:\n  pass"])
  assert not r.passed
  assert pool.run_tests(RIGHT, TESTS).passed


PATCH_BUILTINS = """
import builtins, sys, json, marshal, struct, socket
for name in ("type", "len", "isinstance", "issubclass", "iter", "next", "str", "id",
             "getattr", "min", "any", "list", "dict", "tuple", "int", "float"):
  setattr(builtins, name, lambda *a, **k: 3)
sys.modules["json"] = sys.modules["marshal"] = sys.modules["struct"] = None
socket.socket.sendall = lambda *a: None
"""


def test_patching_builtins_and_modules_used_by_the_encoder_changes_nothing(pool):
  wrong, right = _wrong_and_right(pool, PATCH_BUILTINS)
  assert not wrong.passed and right.passed, (wrong, right)


HIJACK_SERVER = """
import gc
def fake_encode(value, handle):
  return b"m" + (1).to_bytes(4, "little") + b"s" + (6).to_bytes(4, "little") + b"passed" + b"T"
for obj in gc.get_objects():
  if type(obj).__name__ == "_Server":
    obj.encode = fake_encode                 # every reply is {"passed": True}
"""


def test_hijacking_the_sandbox_side_encoder_does_not_pass(pool):
  wrong, right = _wrong_and_right(pool, HIJACK_SERVER)
  assert not wrong.passed and not right.passed
  assert pool.run_tests(RIGHT, TESTS).passed


STEAL_REQUESTS = """
import os, threading
def steal():
  for fd in range(3, 64):
    try:
      os.set_blocking(fd, True)
      while True:
        if not os.read(fd, 1 << 16):
          break
    except OSError:
      pass
threading.Thread(target=steal, daemon=True).start()
"""


def test_a_thread_that_steals_the_requests_does_not_pass(pool):
  start = time.monotonic()
  r = pool.run_tests(STEAL_REQUESTS + WRONG, TESTS, timeout_s=3)
  assert not r.passed and time.monotonic() - start < 10
  assert pool.run_tests(RIGHT, TESTS).passed


FORK_AND_HOOKS = """
import atexit, os, signal, sys, time
atexit.register(os._exit, 0)
for sig in (signal.SIGTERM, signal.SIGPIPE, signal.SIGHUP, signal.SIGINT):
  signal.signal(sig, signal.SIG_IGN)
sys.excepthook = lambda *a: None
if os.fork() == 0:                            # a child that lives on
  time.sleep(60)
  os._exit(0)
"""


def test_forked_children_signal_handlers_and_atexit_hooks_do_not_pass(pool):
  start = time.monotonic()
  wrong, right = _wrong_and_right(pool, FORK_AND_HOOKS)
  assert not wrong.passed and right.passed
  assert time.monotonic() - start < 15


def test_a_hanging_call_times_out(pool):
  r = pool.run_tests("def add(a, b):\n  import time\n  time.sleep(60)\n", TESTS, timeout_s=2)
  assert r.status == "timeout" and r.elapsed_s < 6
  assert pool.run_tests(RIGHT, TESTS).passed


GARBAGE_FRAME = """
import os
for fd in range(3, 64):
  try:
    os.write(fd, b"\\xff\\xff\\xff\\xff" + b"x" * 100)   # a 4 GiB frame header
  except OSError:
    pass
"""


def test_garbage_and_oversized_frames_do_not_pass(pool):
  wrong, right = _wrong_and_right(pool, GARBAGE_FRAME)
  assert not wrong.passed and not right.passed
  assert pool.run_tests(RIGHT, TESTS).passed


HASH_FLOOD = """
import os, stat, struct
def frame(payload):
  return struct.pack("<I", len(payload)) + payload
def big(v):
  raw = v.to_bytes((v.bit_length() + 8) // 8, "little", signed=True)
  return b"I" + struct.pack("<I", len(raw)) + raw
def text(s):
  return b"s" + struct.pack("<I", len(s)) + s
n = 60000                                     # all hash to 0: building the set is quadratic
colliding = b"e" + struct.pack("<I", n) + b"".join(big(k * ((1 << 61) - 1)) for k in range(n))
ready = (b"t" + struct.pack("<I", 3) + text(b"ready") + b"m" + struct.pack("<I", 1)
         + text(b"add") + colliding + b"N")
for fd in range(3, 64):
  try:
    if stat.S_ISSOCK(os.fstat(fd).st_mode):
      os.write(fd, frame(ready))
  except OSError:
    pass
"""


def test_a_hash_flood_that_stalls_the_verifier_times_out_and_it_restarts(pool):
  start = time.monotonic()
  r = pool.run_tests(HASH_FLOOD + WRONG, TESTS, timeout_s=2)
  assert not r.passed and r.status in ("timeout", "error"), r
  assert time.monotonic() - start < 12
  assert pool.run_tests(RIGHT, TESTS).passed
