"""Worker processes for math grading: a warm "zygote" that forks graders on request.

Starting a Python process that imports sympy + math-verify and warms the LaTeX parser
costs 1-2 s of CPU. A grader that runs over its time is killed, so new graders are needed
often enough that this matters. So each pool starts one zygote subprocess (`python -c`: it
imports neither JAX nor the caller's `__main__`), which imports and warms everything once,
then `fork()`s a ready grader in milliseconds whenever the pool asks. The zygote is single
threaded, so forking it is safe (forking the JAX process itself would not be).

Channels (Unix sockets):
  pool <-> zygote: SOCK_SEQPACKET. `fork` + one socket end (SCM_RIGHTS) -> the zygote forks a
    grader serving that socket and answers its pid; `kill PID` -> the zygote SIGKILLs and
    reaps it. The zygote reaps only on `kill`, so the pid stays ours until then; the pool
    also holds a pidfd per grader, so a grader can be killed even after its zygote died.
  pool <-> grader: a stream socket, JSON lines: `[index, pred, gold]` -> `[index, verdict]`,
    one item in flight per grader.
The zygote and its graders run under RLIMIT_AS; all of them exit when the pool goes away.
"""

from __future__ import annotations

import json
import os
import pathlib
import signal
import socket
import subprocess
import sys

from score_jax.tasks.math import answer as math_answer

_PACKAGE_ROOT = str(pathlib.Path(__file__).resolve().parents[3])
# Answers of the common shapes, graded once in the zygote: the first parse of each construct
# costs the LaTeX (ANTLR) parser far more than later ones, and forked graders inherit this.
_WARMUP = (
    ("\\left( 3, \\frac{\\pi}{2} \\right)", "(3, \\pi/2)"),
    ("\\frac{3\\sqrt{3}}{4}", "1 \\pm \\sqrt{19}"),
    ("[-2, 7)", "(0,9) \\cup (9,\\infty)"),
    ("\\{1, -2\\}", "-2 + 7i"),
    ("\\begin{pmatrix} 1 \\\\ -2 \\end{pmatrix}",
     "\\begin{pmatrix} 1/3 & 0 \\\\ 0 & 1 \\end{pmatrix}"),
    ("x^2 + 2x - 1", "y = 2x + 3"),
    ("\\cot x", "90^\\circ"),
    ("1\\frac{4}{5}", "4210_{5}"),
)


# ------------------------------------------------------------ inside the zygote / graders

def _serve(sock: socket.socket, alarm_s: float) -> None:
  """A grader's loop: JSON-line items in, verdicts out, until EOF."""
  rfile, wfile = sock.makefile("rb"), sock.makefile("wb")
  for line in rfile:
    index, pred, gold = json.loads(line)
    try:
      ok = math_answer.is_equivalent(pred, gold, timeout_s=alarm_s)
    except BaseException:  # pylint: disable=broad-except
      ok = False  # a crash on an odd answer means "not shown equivalent"
    wfile.write((json.dumps([index, bool(ok)]) + "\n").encode())
    wfile.flush()


def zygote_main(ctrl_fd: int, memory_limit_bytes: int, alarm_s: float) -> None:
  """The zygote: imports and warms up, then forks graders on request (see module doc)."""
  if memory_limit_bytes > 0:
    import resource  # pylint: disable=import-outside-toplevel
    resource.setrlimit(resource.RLIMIT_AS, (memory_limit_bytes, memory_limit_bytes))
  os.dup2(sys.stderr.fileno(), sys.stdout.fileno())  # library prints must not go anywhere odd
  import logging  # pylint: disable=import-outside-toplevel
  logging.getLogger("math_verify").setLevel(logging.CRITICAL)
  math_answer.speed_up_math_verify()
  for a, b in _WARMUP:
    math_answer.is_equivalent(a, b, timeout_s=alarm_s)
  ctrl = socket.socket(fileno=ctrl_fd)
  ctrl.send(b"ready")
  children: set[int] = set()
  while True:
    try:
      msg, fds, _, _ = socket.recv_fds(ctrl, 64, 1)
    except OSError:
      msg, fds = b"", []
    if not msg:  # the pool is gone
      for pid in children:
        os.kill(pid, signal.SIGKILL)
      os._exit(0)  # pylint: disable=protected-access
    cmd, _, arg = msg.decode().partition(" ")
    if cmd == "fork" and len(fds) == 1:
      pid = os.fork()
      if pid == 0:
        ctrl.close()
        try:
          _serve(socket.socket(fileno=fds[0]), alarm_s)
        finally:
          os._exit(0)  # pylint: disable=protected-access
      os.close(fds[0])
      children.add(pid)
      ctrl.send(str(pid).encode())
    elif cmd == "kill" and int(arg) in children:
      pid = int(arg)
      os.kill(pid, signal.SIGKILL)
      os.waitpid(pid, 0)
      children.discard(pid)
    else:
      for fd in fds:
        os.close(fd)


# ------------------------------------------------------------ inside the pool's process

class ZygoteError(RuntimeError):
  """The zygote did not start or stopped answering."""


class Zygote:
  """Handle on a zygote subprocess (start-up waits until it is warm)."""

  def __init__(self, memory_limit_bytes: int | None, alarm_s: float, startup_timeout_s: float):
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (_PACKAGE_ROOT, env.get("PYTHONPATH")) if p)
    code = ("from score_jax.tasks.math.workers import zygote_main; "
            f"zygote_main({theirs.fileno()}, {int(memory_limit_bytes or 0)}, {float(alarm_s)!r})")
    self.proc = subprocess.Popen(  # pylint: disable=consider-using-with
        [sys.executable, "-c", code], pass_fds=[theirs.fileno()], env=env,
        stdin=subprocess.DEVNULL)
    theirs.close()
    self.ctrl = ours
    self.ctrl.settimeout(startup_timeout_s)
    try:
      ready = self.ctrl.recv(64)
    except OSError:
      ready = b""
    if ready != b"ready":
      self.close()
      raise ZygoteError(
          f"math grader zygote did not start (exit code {self.proc.poll()}); check that "
          f"`{sys.executable} -c 'import math_verify'` works and is fast enough")
    self.ctrl.settimeout(30.0)

  def fork(self) -> "Grader":
    """A new grader process, warm and ready."""
    ours, theirs = socket.socketpair()
    try:
      socket.send_fds(self.ctrl, [b"fork"], [theirs.fileno()])
      pid = int(self.ctrl.recv(64) or b"-1")
    except (OSError, ValueError) as e:
      ours.close()
      raise ZygoteError(f"math grader zygote stopped answering: {e}") from e
    finally:
      theirs.close()
    if pid <= 0:
      ours.close()
      raise ZygoteError("math grader zygote stopped answering")
    return Grader(self, ours, pid)

  def kill(self, pid: int) -> None:
    try:
      self.ctrl.send(f"kill {pid}".encode())
    except OSError:
      pass

  def close(self) -> None:
    self.ctrl.close()   # the zygote kills its graders and exits on EOF
    try:
      self.proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
      self.proc.kill()
      self.proc.wait()


class Grader:
  """One forked grader: a socket to it, its pid, and a pidfd to kill it by.

  The pidfd is opened while the zygote has not reaped the grader, so it refers to this
  process even if the grader died, and it still works if the zygote itself has died.
  """

  def __init__(self, zygote: Zygote, sock: socket.socket, pid: int):
    self.zygote, self.sock, self.pid = zygote, sock, pid
    try:
      self._pidfd: int | None = os.pidfd_open(pid)
    except (AttributeError, OSError):  # not Linux >= 5.3: the zygote alone kills
      self._pidfd = None
    self._rfile = sock.makefile("rb")
    self.item: int | None = None     # index of the item in flight (at most one)
    self.deadline = 0.0

  def fileno(self) -> int:
    return self.sock.fileno()

  def send(self, index: int, pred: str, gold: str) -> None:
    self.sock.sendall((json.dumps([index, pred, gold]) + "\n").encode())

  def recv(self) -> list | None:
    """The grader's answer (one line at most is pending); None if it died or garbled it."""
    try:
      line = self._rfile.readline()
      msg = json.loads(line) if line else None
    except (OSError, ValueError):
      return None
    return msg if isinstance(msg, list) and len(msg) == 2 else None

  def kill(self) -> None:
    """SIGKILLs the grader and lets the zygote reap it."""
    if self._pidfd is not None:
      try:
        signal.pidfd_send_signal(self._pidfd, signal.SIGKILL)
      except OSError:
        pass
      os.close(self._pidfd)
      self._pidfd = None
    self.zygote.kill(self.pid)
    self._rfile.close()
    self.sock.close()
