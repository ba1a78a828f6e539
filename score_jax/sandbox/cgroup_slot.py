"""The cgroup(s) of one sandbox pool slot: limits before a run, kill and usage after it.

See `score_jax.sandbox.cgroups` (which creates them) for the design. A `Slot` is used by one
run at a time (the pool hands slots out through a queue); `enter_files` are what the run's
`preexec_fn` writes "0" to, so that the child (and everything it starts) joins the slot.
"""

from __future__ import annotations

import atexit
import dataclasses
import errno
import logging
import os
import signal
import threading
import time

_LOG = logging.getLogger(__name__)
KILL_WAIT_S = 5.0


def _read(path: str) -> str:
  with open(path, encoding="ascii") as f:
    return f.read()


def _write(path: str, value: str) -> None:
  fd = os.open(path, os.O_WRONLY)
  try:
    os.write(fd, value.encode())
  finally:
    os.close(fd)


def _keyed(text: str, key: str) -> int:
  for line in text.splitlines():
    name, _, value = line.partition(" ")
    if name == key:
      return int(value)
  return 0


def _pids(dirs) -> set[int]:
  pids = set()
  for d in dirs:
    try:
      pids.update(int(p) for p in _read(os.path.join(d, "cgroup.procs")).split())
    except FileNotFoundError:
      pass
  return pids


@dataclasses.dataclass(frozen=True)
class Usage:
  """What a run used, read from its slot's cgroup after the run.

  Attributes:
    oom_kills: processes the kernel killed because the run was over its memory limit.
    peak_bytes: the most memory the run held at once (None where the kernel does not say).
    stragglers: processes still in the cgroup after the sandbox exited (killed here).
  """
  oom_kills: int
  peak_bytes: int | None
  stragglers: int


class Slot:
  """The cgroup (v2) or the memory + pids cgroups (v1) of one pool slot."""

  def __init__(self, version: int, memory_dir: str, pids_dir: str):
    self.version = version
    self.memory_dir, self.pids_dir = memory_dir, pids_dir
    self.dirs = tuple(dict.fromkeys((memory_dir, pids_dir)))
    # What the preexec function writes to: "0" moves the writing process.
    self.enter_files = tuple(os.path.join(d, "cgroup.procs").encode() for d in self.dirs)
    self._limits: tuple[int, int] | None = None
    self._oom_kills = self._oom_count()
    self.last: Usage | None = None          # the last run's usage (for tests and logs)
    # ".../<pool dir>/slot<i>": how this slot's path ends in /proc/PID/cgroup.
    self._tail = "/" + "/".join(memory_dir.rstrip("/").split("/")[-2:])

  def _memory(self, name: str) -> str:
    return os.path.join(self.memory_dir, name)

  def _oom_count(self) -> int:
    if self.version == 2:
      return _keyed(_read(self._memory("memory.events")), "oom_kill")
    return _keyed(_read(self._memory("memory.oom_control")), "oom_kill")

  def _set_memory(self, limit: int) -> None:
    if self.version == 2:
      _write(self._memory("memory.max"), str(limit))
      if os.path.exists(self._memory("memory.swap.max")):
        _write(self._memory("memory.swap.max"), "0")
      return
    files = [self._memory("memory.limit_in_bytes")]
    if os.path.exists(self._memory("memory.memsw.limit_in_bytes")):
      files.append(self._memory("memory.memsw.limit_in_bytes"))   # memory + swap
    try:
      for f in files:          # lowering: memory first (memsw must stay >= memory)
        _write(f, str(limit))
    except OSError as e:
      if e.errno != errno.EINVAL:
        raise
      for f in reversed(files):  # raising: memsw first
        _write(f, str(limit))

  def prepare(self, memory_bytes: int, pids: int) -> None:
    """Sets the limits of the next run (only when they change) and resets the peak.

    pids.max is `pids` plus the zombies of earlier runs that are still charged to the slot:
    a run killed at its deadline leaves its driver (pid 1 of the sandbox, whose parent
    bwrap was killed) to the host's init, which reaps it within seconds.
    """
    try:
      pids += int(_read(os.path.join(self.pids_dir, "pids.current")))
    except (OSError, ValueError):
      pass
    if self._limits != (memory_bytes, pids):
      if self._limits is None or self._limits[0] != memory_bytes:
        self._set_memory(memory_bytes)
      _write(os.path.join(self.pids_dir, "pids.max"), str(pids))
      self._limits = (memory_bytes, pids)
    if self.version == 1:
      _write(self._memory("memory.max_usage_in_bytes"), "0")

  def _peak(self) -> int | None:
    name = "memory.max_usage_in_bytes" if self.version == 1 else "memory.peak"
    try:
      return int(_read(self._memory(name)))
    except (OSError, ValueError):
      return None

  def kill_all(self, wait_s: float = KILL_WAIT_S) -> int:
    """Kills every process in the slot; waits until none is left. Returns how many were."""
    pids = _pids(self.dirs)
    if not pids:
      return 0
    found = len(pids)
    kill_file = os.path.join(self.memory_dir, "cgroup.kill")
    deadline, pause = time.monotonic() + wait_s, 0.0005
    while pids:
      if self.version == 2 and os.path.exists(kill_file):
        _write(kill_file, "1")
      else:
        for pid in pids:
          self._kill(pid)
      if time.monotonic() > deadline:
        _LOG.warning("sandbox cgroup %s: %d process(es) did not die within %.0f s: %s",
                     self.dirs[0], len(pids), wait_s, sorted(pids))
        break
      time.sleep(pause)
      pause = min(pause * 2, 0.05)
      pids = _pids(self.dirs)
      found = max(found, len(pids))
    return found

  def _kill(self, pid: int) -> None:
    """SIGKILL to `pid` if it still is a process of this slot (a pidfd pins which one)."""
    try:
      fd = os.pidfd_open(pid)
    except OSError:
      return                                     # already gone
    try:
      paths = [line.split(":", 2)[2].strip() for line in
               _read(f"/proc/{pid}/cgroup").splitlines()]
      if any(p.endswith(self._tail) for p in paths):
        signal.pidfd_send_signal(fd, signal.SIGKILL)
    except OSError:
      pass
    finally:
      os.close(fd)

  def finish(self) -> Usage:
    """After a run: kills what is left, reads the OOM kills and the peak."""
    stragglers = self.kill_all()
    count = self._oom_count()
    usage = Usage(count - self._oom_kills, self._peak(), stragglers)
    self._oom_kills = count
    self.last = usage
    return usage

  def remove(self) -> None:
    self.kill_all()
    for d in self.dirs:
      try:
        os.rmdir(d)
      except FileNotFoundError:
        pass


@dataclasses.dataclass
class PoolCgroups:
  """The cgroups of one pool: `slots[i]` for slot i; `close` removes them."""
  version: int
  roots: tuple[str, ...]
  slots: list[Slot]
  _closed: bool = False
  _lock: threading.Lock = dataclasses.field(default_factory=threading.Lock)

  def __post_init__(self):
    self._owner = os.getpid()
    atexit.register(self.close)          # e.g. the never-closed default pool

  def close(self) -> None:
    with self._lock:
      if self._closed or os.getpid() != self._owner:   # a forked child's atexit: not ours
        return
      self._closed = True
    atexit.unregister(self.close)
    errors = []
    for slot in self.slots:
      try:
        slot.remove()
      except OSError as e:
        errors.append(str(e))
    for root in self.roots:
      try:
        os.rmdir(root)
      except OSError as e:
        if e.errno != errno.ENOENT:
          errors.append(f"{root}: {e}")
    if errors:
      _LOG.warning("sandbox cgroups not fully removed: %s", "; ".join(errors))
