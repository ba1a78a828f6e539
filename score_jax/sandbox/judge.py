"""Host side of the verifier: one trusted verifier process per pool slot, and its jobs.

    judge = Judge()                   # starts `python -I -B -c BOOTSTRAP` lazily
    judge.submit(tests, sock)         # tests: `testcode.Tests`; sock: the verifier's end
    ... select on judge.fileno() ...; judge.poll() -> verdict dict, False (not yet), None
    judge.await_verdict(timeout_s)    # after the program's process is gone
    judge.kill()                      # a hung or dead verifier; the next job restarts it

The verifier process (`score_jax.sandbox.verifier`) runs only the task's test code, never
model-written code; it gets its code (and the codec's) as code objects over its control
socket, so it imports nothing from this package and no PYTHON* variable (isolated mode
`-I`) reaches it. Each job hands it one end of a fresh socketpair (SCM_RIGHTS) whose other
end goes to the sandboxed program; its verdict comes back on the control socket, and is
the only thing the pool reads to decide pass or fail.
"""

from __future__ import annotations

import marshal
import os
import pathlib
import selectors
import socket
import struct
import subprocess
import sys
import time

from score_jax.sandbox import testcode
from score_jax.sandbox.bwrap import SandboxUnavailableError

_HERE = pathlib.Path(__file__).parent
CODEC_CODE = compile((_HERE / "codec.py").read_text(), "<sandbox codec>", "exec",
                     dont_inherit=True, optimize=0)
VERIFIER_CODE = compile((_HERE / "verifier.py").read_text(), "<sandbox verifier>", "exec",
                        dont_inherit=True, optimize=0)
# Reads the verifier's code object (the first frame on stdin, the control socket), runs it.
BOOTSTRAP = ("import marshal,socket,struct;s=socket.socket(fileno=0);"
             "r=lambda n:s.recv(n,socket.MSG_WAITALL);"
             "exec(marshal.loads(r(struct.unpack('<I',r(4))[0])),{'__name__':'__main__'})")
VERIFIER_MEMORY_MB = 4096
_U32 = struct.Struct("<I")


class VerifierError(RuntimeError):
  """The verifier process could not be started or died; the job's result is an error."""


class Judge:
  """One verifier process (started on first use, restarted after `kill`)."""

  def __init__(self, memory_mb: int = VERIFIER_MEMORY_MB):
    self.memory_mb = memory_mb
    self.proc: subprocess.Popen | None = None
    self.ctrl: socket.socket | None = None
    self._buffer = bytearray()
    self._job = 0        # verdicts carry their job's number: a stale one is never taken

  def _start(self) -> None:
    host_end, child_end = socket.socketpair()
    try:
      self.proc = subprocess.Popen(
          [sys.executable, "-I", "-B", "-c", BOOTSTRAP], stdin=child_end,
          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, close_fds=True,
          start_new_session=True, env={"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"})
    except OSError as e:
      host_end.close()
      raise VerifierError(f"could not start the verifier ({sys.executable}): {e}") from e
    finally:
      child_end.close()
    self.ctrl = host_end
    boot = marshal.dumps(VERIFIER_CODE)
    config = marshal.dumps((CODEC_CODE, self.memory_mb << 20))
    host_end.sendall(_U32.pack(len(boot)) + boot + _U32.pack(len(config)) + config)

  def submit(self, tests: testcode.Tests, sock: socket.socket) -> None:
    """Sends a job; the verifier gets its own copy of `sock` (close yours after this).

    A verifier that does not take it is restarted once; then this raises
    SandboxUnavailableError.
    """
    try:
      self._submit(tests, sock)
    except VerifierError:
      try:
        self._submit(tests, sock)
      except VerifierError as e:
        raise SandboxUnavailableError(str(e)) from e

  def _submit(self, tests: testcode.Tests, sock: socket.socket) -> None:
    if self.proc is None or self.proc.poll() is not None:
      self.kill()
      self._start()
    self._job += 1
    job = marshal.dumps({"id": self._job, "source": tests.source,
                         "names": list(tests.names), "modules": list(tests.modules)})
    try:
      socket.send_fds(self.ctrl, [_U32.pack(len(job))], [sock.fileno()])
      self.ctrl.sendall(job)
    except OSError as e:
      self.kill()
      raise VerifierError(f"the verifier did not take the job: {e}") from e

  def fileno(self) -> int:
    return self.ctrl.fileno()

  def feed(self) -> dict | None:
    """Reads what is available; the verdict once complete, else None.

    Raises:
      VerifierError: the verifier closed its socket (it died).
    """
    chunk = self.ctrl.recv(65536)
    if not chunk:
      self.kill()
      raise VerifierError("the verifier process died")
    self._buffer += chunk
    while len(self._buffer) >= 4:
      size = _U32.unpack_from(self._buffer)[0]
      if len(self._buffer) < 4 + size:
        break
      verdict = marshal.loads(bytes(self._buffer[4:4 + size]))
      del self._buffer[:4 + size]
      if verdict.get("id") == self._job:
        return verdict
    return None

  def poll(self):
    """After the control socket polled readable: the verdict; None if the verifier died
    (the next job restarts it); False if it is not complete yet."""
    try:
      verdict = self.feed()
    except VerifierError:
      return None
    return False if verdict is None else verdict

  def await_verdict(self, timeout_s: float):
    """The verdict within `timeout_s` (None if none: the verifier is then killed)."""
    until = time.monotonic() + timeout_s
    with selectors.DefaultSelector() as sel:
      sel.register(self.fileno(), selectors.EVENT_READ)
      while (remaining := until - time.monotonic()) > 0:
        if not sel.select(remaining):
          break
        verdict = self.poll()
        if verdict is not False:
          return verdict
    self.kill()
    return None

  def kill(self) -> None:
    """Stops the verifier (a hung job); the next `submit` starts a fresh one."""
    if self.ctrl is not None:
      self.ctrl.close()
      self.ctrl = None
    if self.proc is not None:
      try:
        os.killpg(self.proc.pid, 9)
      except ProcessLookupError:
        pass
      self.proc.wait()
      self.proc = None
    self._buffer.clear()

  def close(self) -> None:
    """Ends the verifier (closing its control socket ends its loop)."""
    if self.ctrl is not None:
      self.ctrl.close()
      self.ctrl = None
    if self.proc is not None:
      try:
        self.proc.wait(timeout=2)
      except subprocess.TimeoutExpired:
        self.kill()
      self.proc = None
