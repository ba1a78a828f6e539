"""Runs untrusted (model-written) Python programs in a bubblewrap sandbox.

    result = sandbox.run_tests(program, ["assert add(1, 2) == 3"], timeout_s=5)
    result.passed, result.status, result.stdout, result.stderr

One isolated process per program (see `score_jax.sandbox.bwrap` for the isolation and
`score_jax.sandbox.driver` for what runs inside): no network, read-only system, private
size-limited tmpfs, rlimits, a dedicated uid per pool slot (as root), wall-clock kill of the
whole sandbox, stdout/stderr read incrementally and capped. `run_tests` passes only if the
process exits 0 *and* prints a per-run random token that the driver writes after the last
test (so `os._exit(0)` / `sys.exit(0)` before the asserts fails), and asserted values are
type-checked before they are compared (`score_jax.sandbox.asserts`).

If bubblewrap is missing or cannot create its namespaces, this raises
`SandboxUnavailableError` with the reason: code is never run unsandboxed.

Public API:
  run(program, *, timeout_s=10.0, memory_mb=1024, ...) -> ExecResult
  run_tests(program, tests, *, setup="", timeout_s=10.0, ...) -> ExecResult
  SandboxPool(workers=None, **limits): .run, .run_tests, .map(programs, tests=None, ...)
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import fcntl
import functools
import marshal
import os
import pwd
import queue
import secrets
import selectors
import signal
import subprocess
import threading
import time
from typing import Sequence

from score_jax.sandbox import asserts
from score_jax.sandbox import bwrap
from score_jax.sandbox.bwrap import Limits, SandboxUnavailableError

__all__ = ["ExecResult", "Limits", "SandboxPool", "SandboxUnavailableError", "run",
           "run_tests"]

STATUSES = ("passed", "failed", "timeout", "error")


@dataclasses.dataclass(frozen=True)
class ExecResult:
  """The outcome of one sandboxed run.

  Attributes:
    passed: `status == "passed"`.
    status: "passed" (exit 0, and for `run_tests` the pass token was printed), "failed"
      (non-zero exit, an assert or type check failed, or exit 0 before the tests ended),
      "timeout" (wall-clock or CPU limit) or "error" (stopped by the sandbox: output cap).
    stdout: captured stdout (at most `Limits.output_bytes`; the pass token removed).
    stderr: captured stderr (same cap).
    returncode: the sandbox's exit status; negative when the host killed it (-9).
    elapsed_s: wall-clock seconds, sandbox start-up included.
    reason: one line saying why it did not pass ("" if it passed).
  """
  passed: bool
  status: str
  stdout: str
  stderr: str
  returncode: int | None
  elapsed_s: float
  reason: str = ""


@functools.cache
def _layout() -> bwrap.Layout:
  return bwrap.layout()


def _claim_uids(n: int) -> list[tuple[int, int]]:
  """Claims `n` unused worker uids for this process: [(uid, lock fd)], held until closed."""
  slots_dir = bwrap.state_dir() / "slots"
  slots_dir.mkdir(mode=0o700, exist_ok=True)
  claimed = []
  for uid in range(bwrap.UID_BASE, bwrap.UID_BASE + bwrap.MAX_SLOTS):
    try:
      pwd.getpwuid(uid)
      continue                     # a real account: never borrow its uid
    except KeyError:
      pass
    fd = os.open(slots_dir / str(uid), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      os.close(fd)
      continue
    claimed.append((uid, fd))
    if len(claimed) == n:
      return claimed
  for _, fd in claimed:
    os.close(fd)
  raise SandboxUnavailableError(
      f"no free sandbox uids in {bwrap.UID_BASE}..+{bwrap.MAX_SLOTS} "
      "(set SCORE_JAX_SANDBOX_UID_BASE to another range)")


def _kill(proc: subprocess.Popen) -> None:
  """Kills the sandbox's process group (bwrap; --die-with-parent takes the rest)."""
  try:
    os.killpg(proc.pid, signal.SIGKILL)
  except ProcessLookupError:
    pass


def _execute(lay: bwrap.Layout, limits: Limits, uid: int, program: str,
             tests: tuple | None) -> ExecResult:
  """One sandboxed run of `program` (then `tests`, a (code, source) pair, if given)."""
  token = secrets.token_hex(16) if tests is not None else None
  job = marshal.dumps((bwrap.DRIVER_CODE, {
      "program": program, "tests": tests, "token": token, "limits": limits.rlimits(),
      "sys_path": list(lay.sys_path)}))
  job_fd = os.memfd_create("score_jax_sandbox_job")
  status_r, status_w = os.pipe()
  try:
    os.write(job_fd, job)
    os.lseek(job_fd, 0, os.SEEK_SET)
    gid = uid if lay.as_root else os.getgid()
    cmd = bwrap.bwrap_command(lay, limits, uid=uid, gid=gid, job_fd=job_fd,
                                      status_fd=status_w)
    start = time.monotonic()
    try:
      proc = subprocess.Popen(
          cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
          pass_fds=(job_fd, status_w), start_new_session=True, env={"PATH": "/usr/bin:/bin"},
          preexec_fn=bwrap.preexec(lay, uid, limits) if lay.as_root else None)
    except (OSError, subprocess.SubprocessError) as e:
      os.close(status_r)
      raise SandboxUnavailableError(
          f"could not start bwrap ({e}); as root the sandbox needs CAP_SYS_ADMIN for a "
          "private mount namespace and CAP_SETUID to drop to the worker uid") from e
  finally:
    os.close(job_fd)
    os.close(status_w)
  with proc:
    streams, started, timed_out, overflow = _collect(proc, status_r, start, limits)
    returncode = proc.returncode
  elapsed = time.monotonic() - start
  stdout, stderr = (s.decode("utf-8", "replace") for s in streams)
  if not (started or timed_out or overflow):
    raise SandboxUnavailableError(
        f"the sandbox did not start (bwrap exit status {returncode}): {stderr.strip()!r}. "
        "bubblewrap needs user namespaces (sysctl user.max_user_namespaces > 0, and "
        "kernel.unprivileged_userns_clone=1 where that exists); a too small memory_mb also "
        "stops Python from starting")
  if token is not None:
    passed_token = token + "\n" in stdout
    stdout = stdout.replace(token + "\n", "")
  else:
    passed_token = True
  if timed_out:
    status, reason = "timeout", f"wall-clock limit of {limits.timeout_s:g} s"
  elif overflow:
    status, reason = "error", f"output over the {limits.output_bytes} byte cap"
  elif returncode in (128 + signal.SIGXCPU, 128 + signal.SIGKILL):
    # The driver is pid 1 of its namespace: only the kernel can kill it, here at the hard
    # RLIMIT_CPU (an OOM kill would look the same; RLIMIT_AS makes that unlikely).
    status, reason = "timeout", "CPU time limit"
  elif returncode == 0 and passed_token:
    status, reason = "passed", ""
  elif returncode == 0:
    status, reason = "failed", "exited 0 before the tests finished (no pass token)"
  else:
    status, reason = "failed", f"exit status {returncode}"
  return ExecResult(status == "passed", status, stdout, stderr, returncode, elapsed, reason)


def _collect(proc: subprocess.Popen, status_r: int, start: float, limits: Limits):
  """Reads stdout/stderr (capped) and the status pipe until exit or the deadline."""
  deadline = start + limits.timeout_s
  out, err, status = bytearray(), bytearray(), bytearray()
  buffers = {proc.stdout.fileno(): out, proc.stderr.fileno(): err, status_r: status}
  timed_out = overflow = False
  with selectors.DefaultSelector() as sel:
    for fd in buffers:
      sel.register(fd, selectors.EVENT_READ)
    try:
      while sel.get_map() and not overflow:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
          timed_out = True
          break
        for key, _ in sel.select(remaining):
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
          proc.wait(timeout=max(deadline - time.monotonic(), 0.0))
        except subprocess.TimeoutExpired:
          timed_out = True
      if timed_out or overflow:
        _kill(proc)
      proc.wait()
    finally:
      os.close(status_r)
  cap = limits.output_bytes
  return (bytes(out[:cap]), bytes(err[:cap])), bool(status), timed_out, overflow


def _limits(base: Limits, overrides: dict) -> Limits:
  fields = {k: v for k, v in overrides.items() if v is not None}
  unknown = set(fields) - {f.name for f in dataclasses.fields(Limits)}
  if unknown:
    raise TypeError(f"unknown sandbox limit(s) {sorted(unknown)}; "
                    f"known: {[f.name for f in dataclasses.fields(Limits)]}")
  return dataclasses.replace(base, **fields) if fields else base


def _test_source(tests: Sequence[str] | str, setup: str) -> str:
  if isinstance(tests, str):
    body = tests
  else:
    if not all(isinstance(t, str) for t in tests):
      raise TypeError(f"tests must be a str or a list of str, got {tests!r}")
    body = "\n".join(tests)
  return f"{setup}\n{body}\n" if setup else body + "\n"


_CHECKED = threading.Event()


class SandboxPool:
  """`workers` sandbox slots (one uid each, as root) run programs concurrently.

  Limits given here are the pool's defaults; every call may override them by keyword
  (`timeout_s=`, `memory_mb=`, ... see `Limits`).
  """

  def __init__(self, workers: int | None = None, *, limits: Limits | None = None,
               **limit_fields):
    self.workers = int(workers or os.cpu_count() or 1)
    if self.workers < 1:
      raise ValueError(f"SandboxPool(workers={workers!r}) needs at least one worker")
    self.limits = _limits(limits or Limits(), limit_fields)
    self._layout = _layout()
    if self._layout.as_root:
      self._claims = _claim_uids(self.workers)
    else:
      self._claims = [(os.getuid(), None)] * self.workers
    self._slots: queue.SimpleQueue = queue.SimpleQueue()
    for uid, _ in self._claims:
      self._slots.put(uid)
    self._executor = None
    self._lock = threading.Lock()
    self._closed = False
    if not _CHECKED.is_set():
      self._self_check()

  def _self_check(self) -> None:
    result = self.run("import sys\nsys.exit(0)", timeout_s=max(self.limits.timeout_s, 30.0))
    if not result.passed:
      raise SandboxUnavailableError(f"sandbox self-check failed: {result.reason}; "
                                    f"stderr: {result.stderr.strip()!r}")
    _CHECKED.set()

  def _run(self, program: str, tests: tuple | None, overrides: dict) -> ExecResult:
    if self._closed:
      raise RuntimeError("this SandboxPool is closed")
    if not isinstance(program, str):
      raise TypeError(f"program must be a str, got {type(program).__name__}")
    limits = _limits(self.limits, overrides)
    uid = self._slots.get()
    try:
      return _execute(self._layout, limits, uid, program, tests)
    finally:
      self._slots.put(uid)

  def run(self, program: str, **limits) -> ExecResult:
    """Runs `program` as `__main__`; passed = exit status 0."""
    return self._run(program, None, limits)

  def run_tests(self, program: str, tests: Sequence[str] | str, *, setup: str = "",
                **limits) -> ExecResult:
    """Runs `program`, then `setup` and `tests` (asserts, guarded) in a copy of its globals.

    passed = exit status 0 and the per-run token printed after the last test.
    Raises ValueError if the test code does not parse (it comes from task data).
    """
    source = _test_source(tests, setup)
    return self._run(program, (asserts.compile_tests(source), source), limits)

  def map(self, programs: Sequence[str], tests: Sequence[Sequence[str] | str] | None = None,
          setups: Sequence[str] | None = None, **limits) -> list[ExecResult]:
    """Runs many programs concurrently (`run`, or `run_tests` when `tests` is given)."""
    programs = list(programs)
    if tests is not None and len(tests) != len(programs):
      raise ValueError(f"map: {len(programs)} programs but {len(tests)} test lists")
    if setups is not None and (tests is None or len(setups) != len(programs)):
      raise ValueError("map: setups needs tests, one setup per program")
    with self._lock:
      if self._executor is None:
        self._executor = concurrent.futures.ThreadPoolExecutor(
            self.workers, thread_name_prefix="sandbox")
    if tests is None:
      futures = [self._executor.submit(self.run, p, **limits) for p in programs]
    else:
      setups = setups if setups is not None else [""] * len(programs)
      futures = [self._executor.submit(self.run_tests, p, t, setup=s, **limits)
                 for p, t, s in zip(programs, tests, setups)]
    return [f.result() for f in futures]

  def close(self) -> None:
    """Waits for running programs, then releases the worker uids."""
    if self._closed:
      return
    self._closed = True
    if self._executor is not None:
      self._executor.shutdown(wait=True)
    for _, fd in self._claims:
      if fd is not None:
        os.close(fd)

  def __enter__(self) -> "SandboxPool":
    return self

  def __exit__(self, *exc) -> None:
    self.close()


_DEFAULT: list[SandboxPool] = []
_DEFAULT_LOCK = threading.Lock()


def default_pool() -> SandboxPool:
  """The process-wide pool behind `run` / `run_tests` (os.cpu_count() slots)."""
  with _DEFAULT_LOCK:
    if not _DEFAULT:
      _DEFAULT.append(SandboxPool())
    return _DEFAULT[0]


def run(program: str, *, timeout_s: float = 10.0, memory_mb: int = 1024,
        **limits) -> ExecResult:
  """Runs `program` in the sandbox; other limits as in `Limits` (e.g. output_bytes=)."""
  return default_pool().run(program, timeout_s=timeout_s, memory_mb=memory_mb, **limits)


def run_tests(program: str, tests: Sequence[str] | str, *, setup: str = "",
              timeout_s: float = 10.0, memory_mb: int = 1024, **limits) -> ExecResult:
  """Runs `program` then `setup` + `tests` (see `SandboxPool.run_tests`)."""
  return default_pool().run_tests(program, tests, setup=setup, timeout_s=timeout_s,
                                  memory_mb=memory_mb, **limits)
