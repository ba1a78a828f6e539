"""Reads one sandboxed run to its end: stdout / stderr (capped), status pipe, verdict.

`collect` is the host's wait loop for `score_jax.sandbox.pool`: it returns when the
sandboxed process has exited (or was killed at the deadline / output cap) and, for
`run_tests`, the slot's verifier (`score_jax.sandbox.judge`) has given its verdict.
"""

from __future__ import annotations

import os
import selectors
import subprocess
import time
from typing import Callable

from score_jax.sandbox import judge as judge_lib
from score_jax.sandbox.bwrap import Limits

VERDICT_GRACE_S = 1.0    # after the verdict, how long the program's process may take to end
JUDGE_GRACE_S = 3.0      # after the program's process ended, how long a verdict may take


def collect(proc: subprocess.Popen, status_r: int, start: float, limits: Limits,
            judge: judge_lib.Judge | None, kill: Callable[[subprocess.Popen], None]):
  """Reads stdout/stderr (capped), the status pipe and the verdict (with a judge).

  Without a judge, until the process exits or the deadline. With one, until its verdict and
  the end of the process (at most `VERDICT_GRACE_S` later, then it is killed), or the
  deadline; after a kill the verdict is still awaited (`JUDGE_GRACE_S`, else the verifier
  is restarted) so that the verifier is idle for the next job.
  """
  deadline = start + limits.timeout_s
  out, err, status = bytearray(), bytearray(), bytearray()
  buffers = {proc.stdout.fileno(): out, proc.stderr.fileno(): err, status_r: status}
  timed_out = overflow = False
  verdict = None
  pending = judge is not None     # the verifier has not answered (verdict, or died) yet
  end = deadline
  with selectors.DefaultSelector() as sel:
    for fd in buffers:
      sel.register(fd, selectors.EVENT_READ)
    if judge is not None:
      sel.register(judge.fileno(), selectors.EVENT_READ, "judge")
    try:
      while sel.get_map() and not overflow:
        remaining = end - time.monotonic()
        if remaining <= 0:
          timed_out = pending or judge is None
          break
        for key, _ in sel.select(remaining):
          if key.data == "judge":
            answer = judge.poll()
            if answer is not False:
              verdict, pending = answer, False
              sel.unregister(key.fd)
              end = min(deadline, time.monotonic() + VERDICT_GRACE_S)
            continue
          chunk = os.read(key.fd, 65536)
          if not chunk:
            sel.unregister(key.fd)
            continue
          buf = buffers[key.fd]
          buf += chunk
          if key.fd != status_r and len(out) + len(err) > limits.output_bytes:
            overflow = True
      if not (timed_out or overflow):
        try:
          proc.wait(timeout=max(end - time.monotonic(), 0.0))
        except subprocess.TimeoutExpired:
          timed_out = pending or judge is None
          kill(proc)
      if timed_out or overflow:
        kill(proc)
      proc.wait()
      if pending:
        verdict = judge.await_verdict(JUDGE_GRACE_S)
    finally:
      os.close(status_r)
  cap = limits.output_bytes
  return (bytes(out[:cap]), bytes(err[:cap])), bool(status), timed_out, overflow, verdict
