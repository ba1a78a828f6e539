"""Runs untrusted (model-written) Python programs in a bubblewrap sandbox.

    result = sandbox.run_tests(program, ["assert add(1, 2) == 3"], timeout_s=5)
    result.passed, result.status, result.stdout, result.stderr

One isolated process per program (see `score_jax.sandbox.bwrap` for the isolation and
`score_jax.sandbox.driver` for what runs inside): no network, read-only system, private
size-limited tmpfs, rlimits, a dedicated uid per pool slot (as root), wall-clock kill of the
whole sandbox, stdout/stderr read incrementally and capped. `run` passes if the program
exits 0. `run_tests` never asks the sandbox for a verdict: the tests run in the slot's
trusted verifier process (`score_jax.sandbox.judge`, `verifier`), which calls the program's
functions in the sandbox over a socket and gets plain data back (`codec`); the verdict is
the verifier's, whatever the sandboxed process prints or exits with.

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
import signal
import socket
import subprocess
import threading
import time
from typing import Sequence

from score_jax.sandbox import bwrap
from score_jax.sandbox import judge as judge_lib
from score_jax.sandbox import streams as streams_lib
from score_jax.sandbox import testcode
from score_jax.sandbox import cgroups as sandbox_cgroups
from score_jax.sandbox.bwrap import Limits, SandboxUnavailableError

__all__ = ["ExecResult", "Limits", "SandboxPool", "SandboxUnavailableError", "run",
           "run_tests"]

STATUSES = ("passed", "failed", "timeout", "error")


@dataclasses.dataclass(frozen=True)
class ExecResult:
  """The outcome of one sandboxed run.

  Attributes:
    passed: `status == "passed"`.
    status: "passed" (`run`: exit 0; `run_tests`: the verifier passed every test), "failed"
      (non-zero exit, the program did not run to its end, a test failed), "timeout"
      (wall-clock or CPU limit) or "error" (stopped by the sandbox: output cap; the
      verifier died).
    stdout: captured stdout (at most `Limits.output_bytes`).
    stderr: captured stderr (same cap); for a failed test, the verifier's traceback of the
      test code follows.
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
             tests: testcode.Tests | None, cgroup: sandbox_cgroups.Slot | None = None,
             judge: judge_lib.Judge | None = None) -> ExecResult:
  """One sandboxed run of `program` (and with `tests`, the slot's `judge` runs them)."""
  serve = sock = None
  if tests is not None:
    sock, judge_sock = socket.socketpair()
    serve = {"fd": sock.fileno(), "codec": judge_lib.CODEC_CODE, "names": list(tests.names)}
    try:
      judge.submit(tests, judge_sock)
    except BaseException:
      sock.close()
      raise
    finally:
      judge_sock.close()
  job = marshal.dumps((bwrap.DRIVER_CODE, {
      "program": program, "serve": serve, "limits": limits.rlimits(),
      "sys_path": list(lay.sys_path)}))
  job_fd = os.memfd_create("score_jax_sandbox_job")
  status_r, status_w = os.pipe()
  seccomp_fd = bwrap.seccomp_fd()
  try:
    os.write(job_fd, job)
    os.lseek(job_fd, 0, os.SEEK_SET)
    gid = uid if lay.as_root else os.getgid()
    cmd = bwrap.bwrap_command(lay, limits, uid=uid, gid=gid, job_fd=job_fd,
                                      status_fd=status_w, seccomp_fd=seccomp_fd)
    if cgroup is not None:
      cgroup.prepare(limits.memory_mb << 20, limits.processes + sandbox_cgroups.PIDS_OVERHEAD)
    start = time.monotonic()
    try:
      proc = subprocess.Popen(
          cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
          pass_fds=(job_fd, status_w, seccomp_fd) + ((sock.fileno(),) if sock else ()),
          start_new_session=True,
          env={"PATH": "/usr/bin:/bin"}, preexec_fn=bwrap.preexec(lay, uid, limits, cgroup))
    except (OSError, subprocess.SubprocessError) as e:
      os.close(status_r)
      if judge is not None:
        judge.kill()
      raise SandboxUnavailableError(
          f"could not start bwrap ({e}); as root the sandbox needs CAP_SYS_ADMIN for a "
          "private mount namespace and CAP_SETUID to drop to the worker uid") from e
  finally:
    os.close(job_fd)
    os.close(status_w)
    os.close(seccomp_fd)
    if sock is not None:
      sock.close()
  with proc:
    streams, started, timed_out, overflow, verdict = streams_lib.collect(
        proc, status_r, start, limits, judge, _kill)
    returncode = proc.returncode
  # Kills whatever of the run is left in its cgroup; reads OOM kills and the peak.
  usage = cgroup.finish() if cgroup is not None else None
  elapsed = time.monotonic() - start
  stdout, stderr = (s.decode("utf-8", "replace") for s in streams)
  if not (started or timed_out or overflow):
    raise SandboxUnavailableError(
        f"the sandbox did not start (bwrap exit status {returncode}): {stderr.strip()!r}. "
        "bubblewrap needs user namespaces (sysctl user.max_user_namespaces > 0, and "
        "kernel.unprivileged_userns_clone=1 where that exists); a too small memory_mb also "
        "stops Python from starting")
  if verdict and verdict["traceback"]:
    stderr += verdict["traceback"]
  if timed_out:
    status, reason = "timeout", f"wall-clock limit of {limits.timeout_s:g} s"
  elif overflow:
    status, reason = "error", f"output over the {limits.output_bytes} byte cap"
  elif tests is not None and verdict is not None and verdict["passed"]:
    status, reason = "passed", ""
  elif usage is not None and usage.oom_kills and returncode in (128 + signal.SIGKILL,
                                                               -signal.SIGKILL):
    status, reason = "failed", f"out of memory (the run's processes over {limits.memory_mb} MiB)"
  elif returncode in (128 + signal.SIGXCPU, 128 + signal.SIGKILL):
    # The driver is pid 1 of its namespace: only the kernel can kill it, here at the hard
    # RLIMIT_CPU (an OOM kill would look the same; RLIMIT_AS makes that unlikely).
    status, reason = "timeout", "CPU time limit"
  elif tests is None and returncode == 0:
    status, reason = "passed", ""
  elif tests is not None and verdict is None:
    status, reason = "error", "the verifier gave no verdict (it died or hung; restarted)"
  elif tests is not None and verdict["ready"]:
    status, reason = "failed", verdict["reason"]
  elif tests is not None and returncode == 0:
    status, reason = "failed", "the program exited before the tests ran"
  else:
    status, reason = "failed", f"exit status {returncode}"
  return ExecResult(status == "passed", status, stdout, stderr, returncode, elapsed, reason)


def _limits(base: Limits, overrides: dict) -> Limits:
  fields = {k: v for k, v in overrides.items() if v is not None}
  unknown = set(fields) - {f.name for f in dataclasses.fields(Limits)}
  if unknown:
    raise TypeError(f"unknown sandbox limit(s) {sorted(unknown)}; "
                    f"known: {[f.name for f in dataclasses.fields(Limits)]}")
  return dataclasses.replace(base, **fields) if fields else base


_CHECKED = threading.Event()


class SandboxPool:
  """`workers` sandbox slots (one uid each, as root) run programs concurrently.

  Limits given here are the pool's defaults; every call may override them by keyword
  (`timeout_s=`, `memory_mb=`, ... see `Limits`). `cgroups=False` runs without the per-slot
  cgroups (see `score_jax.sandbox.cgroups`): memory_mb and processes are then per process.
  """

  def __init__(self, workers: int | None = None, *, limits: Limits | None = None,
               cgroups: bool = True, **limit_fields):
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
    # One cgroup per slot: memory_mb and processes hold for the whole run (see cgroups).
    self._cgroups = sandbox_cgroups.create(self.workers) if cgroups else None
    for i, (uid, _) in enumerate(self._claims):
      self._slots.put((uid, self._cgroups.slots[i] if self._cgroups else None))
    # One trusted verifier process per slot (started on first use) runs the tests.
    self._judges: queue.SimpleQueue = queue.SimpleQueue()
    for _ in range(self.workers):
      self._judges.put(judge_lib.Judge())
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

  def _run(self, program: str, tests: testcode.Tests | None, overrides: dict) -> ExecResult:
    if self._closed:
      raise RuntimeError("this SandboxPool is closed")
    if not isinstance(program, str):
      raise TypeError(f"program must be a str, got {type(program).__name__}")
    limits = _limits(self.limits, overrides)
    uid, cgroup = self._slots.get()
    judge = self._judges.get() if tests is not None else None
    try:
      return _execute(self._layout, limits, uid, program, tests, cgroup, judge)
    finally:
      if judge is not None:
        self._judges.put(judge)
      self._slots.put((uid, cgroup))

  def run(self, program: str, **limits) -> ExecResult:
    """Runs `program` as `__main__`; passed = exit status 0."""
    return self._run(program, None, limits)

  def run_tests(self, program: str, tests: Sequence[str] | str, *, setup: str = "",
                names: Sequence[str] = (), **limits) -> ExecResult:
    """Runs `program` in the sandbox and `setup` + `tests` in the slot's verifier.

    The tests run in a namespace of their own (pristine builtins and stdlib modules, `setup`'s
    definitions); the names they read but do not define are the program's (see
    `score_jax.sandbox.testcode`), plus `names` even where a builtin has that name.
    passed = the verifier ran every test without an error.
    Raises ValueError if the test code does not parse (it comes from task data).
    """
    return self._run(program, testcode.prepare(tests, setup, names), limits)

  def map(self, programs: Sequence[str], tests: Sequence[Sequence[str] | str] | None = None,
          setups: Sequence[str] | None = None, names: Sequence[Sequence[str]] | None = None,
          **limits) -> list[ExecResult]:
    """Runs many programs concurrently (`run`, or `run_tests` when `tests` is given)."""
    programs = list(programs)
    if tests is not None and len(tests) != len(programs):
      raise ValueError(f"map: {len(programs)} programs but {len(tests)} test lists")
    if setups is not None and (tests is None or len(setups) != len(programs)):
      raise ValueError("map: setups needs tests, one setup per program")
    if names is not None and (tests is None or len(names) != len(programs)):
      raise ValueError("map: names needs tests, one list of names per program")
    with self._lock:
      if self._executor is None:
        self._executor = concurrent.futures.ThreadPoolExecutor(
            self.workers, thread_name_prefix="sandbox")
    if tests is None:
      futures = [self._executor.submit(self.run, p, **limits) for p in programs]
    else:
      setups = setups if setups is not None else [""] * len(programs)
      names = names if names is not None else [()] * len(programs)
      futures = [self._executor.submit(self.run_tests, p, t, setup=s, names=n, **limits)
                 for p, t, s, n in zip(programs, tests, setups, names)]
    return [f.result() for f in futures]

  def close(self) -> None:
    """Waits for running programs, then ends the verifiers and releases the worker uids."""
    if self._closed:
      return
    self._closed = True
    if self._executor is not None:
      self._executor.shutdown(wait=True)
    while not self._judges.empty():
      self._judges.get().close()
    if self._cgroups is not None:
      self._cgroups.close()
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
