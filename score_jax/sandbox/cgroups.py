"""Per-run resource limits: one cgroup per sandbox pool slot.

Every process of a run (bubblewrap, the driver, everything the program forks) lives in its
slot's cgroup: the child that will exec bwrap moves itself there first (it writes "0" to
`cgroup.procs` in its `preexec_fn`, before exec), and everything it starts inherits it.
The cgroup holds

* `memory_mb` for the whole run, all processes together, and what the kernel charges to them:
  tmpfs pages, inodes and dentries, page tables, pipe buffers (v2 `memory.max` with
  `memory.swap.max = 0`; v1 `memory.limit_in_bytes` and `memory.memsw.limit_in_bytes`);
  past it the kernel reclaims, then OOM-kills inside the cgroup only;
* `processes + PIDS_OVERHEAD` tasks (`pids.max`; threads count);

and after every run, whatever is left in it is killed (v2 `cgroup.kill`; v1 SIGKILL through
a pidfd to every pid in `cgroup.procs`, until it is empty), so nothing of a run survives into
the next one in the same slot.

Hierarchies: cgroup v2 is used when its `memory` and `pids` controllers can be enabled below
this process's own cgroup (a delegated subtree) or at the root of the mount; else cgroup v1
(`memory` and `pids` hierarchies, nested under this process's cgroup when writable, else at
their root). Layout: `<parent>/score_jax_sandbox.<pid ns inode>.<pid>.<n>/slot<i>`, removed
when the pool closes (and at exit); those of dead processes of the same pid namespace are
removed by the next pool.

When neither is usable, `create` raises `SandboxUnavailableError` naming what is missing and
`SandboxPool(cgroups=False)` (config: `task.sandbox_cgroups=False`) runs without: memory_mb and
processes are then per-process rlimits only (one run of N processes can hold N x memory_mb),
and kernel memory (tmpfs inodes) is not charged to the run.
"""

from __future__ import annotations

import itertools
import os
import signal
import time

from score_jax.sandbox.bwrap import SandboxUnavailableError
from score_jax.sandbox.cgroup_slot import PoolCgroups, Slot, Usage, _pids, _read, _write

__all__ = ["PIDS_OVERHEAD", "PoolCgroups", "Slot", "Usage", "create"]
PREFIX = "score_jax_sandbox."
# Tasks of a run besides the program's: the outer bwrap process and the driver (pid 1).
PIDS_OVERHEAD = 2
OFF_MESSAGE = ("pass SandboxPool(cgroups=False) (config: --config.task.sandbox_cgroups=False) "
               "to run without them; then memory_mb and processes are per-process rlimits only "
               "(a run of N processes can hold N x memory_mb) and the kernel memory of its tmpfs "
               "inodes is not charged to the run")
_COUNTER = itertools.count()


# --- discovery ---------------------------------------------------------------------------

def _mounts() -> list[tuple[str, str, str, set[str]]]:
  """(mount point, root within the hierarchy, fs type, super options) of cgroup mounts."""
  out = []
  for line in _read("/proc/self/mountinfo").splitlines():
    fields = line.split()
    sep = fields.index("-")
    fstype = fields[sep + 1]
    if fstype in ("cgroup", "cgroup2"):
      out.append((fields[4], fields[3], fstype, set(fields[sep + 3].split(","))))
  return out


def _own_paths() -> dict[str, str]:
  """This process's cgroup path per v1 controller, and under "" its v2 path."""
  out = {}
  for line in _read("/proc/self/cgroup").splitlines():
    _, controllers, path = line.split(":", 2)
    for c in controllers.split(",") if controllers else [""]:
      out[c] = path
  return out


def _candidates(mount_point: str, mount_root: str, own: str | None) -> list[str]:
  """This process's own cgroup directory in a mount (if it is there), then the mount's root."""
  dirs = []
  if own is not None:
    rel = os.path.relpath(own, mount_root) if own.startswith(mount_root) else None
    if rel is not None and rel != ".":
      path = os.path.normpath(os.path.join(mount_point, rel))
      if os.path.isdir(path):
        dirs.append(path)
  dirs.append(mount_point)
  return dirs


def _pid_namespace() -> int:
  return os.stat("/proc/self/ns/pid").st_ino


def _remove_stale(parent: str) -> None:
  """Removes pool directories left by processes of this pid namespace that no longer exist
  (named `PREFIX<pid namespace inode>.<pid>.<n>`; other namespaces' are never touched)."""
  try:
    names = os.listdir(parent)
  except OSError:
    return
  ns = f"{PREFIX}{_pid_namespace()}."
  for name in names:
    if not name.startswith(ns):
      continue
    try:
      pid = int(name[len(ns):].split(".")[0])
    except ValueError:
      continue
    if pid == os.getpid() or os.path.exists(f"/proc/{pid}"):
      continue
    root = os.path.join(parent, name)
    try:
      for slot in os.listdir(root):
        path = os.path.join(root, slot)
        if os.path.isdir(path):
          _kill_and_rmdir(path)
      os.rmdir(root)
    except OSError:
      pass


def _kill_and_rmdir(path: str) -> None:
  deadline = time.monotonic() + 1.0
  while time.monotonic() < deadline:
    pids = _pids([path])
    if not pids:
      break
    for pid in pids:
      try:
        os.kill(pid, signal.SIGKILL)
      except OSError:
        pass
    time.sleep(0.01)
  os.rmdir(path)


def _make_root(parent: str, name: str, v2: bool) -> str:
  _remove_stale(parent)
  root = os.path.join(parent, name)
  os.mkdir(root, 0o755)
  if v2:
    try:
      _write(os.path.join(root, "cgroup.subtree_control"), "+memory +pids")
    except OSError:
      os.rmdir(root)
      raise
  return root


def _try_v2(mount: tuple, own: str | None, name: str, n: int, problems: list[str]):
  mount_point, mount_root, _, _ = mount
  for parent in _candidates(mount_point, mount_root, own):
    try:
      available = set(_read(os.path.join(parent, "cgroup.controllers")).split())
      missing = {"memory", "pids"} - available
      if missing:
        problems.append(f"cgroup v2 {parent}: controller(s) {', '.join(sorted(missing))} not "
                        "available there (bound to a v1 hierarchy, or not delegated)")
        continue
      enabled = set(_read(os.path.join(parent, "cgroup.subtree_control")).split())
      if not {"memory", "pids"} <= enabled:
        # EBUSY when `parent` holds processes (v2's no-internal-processes rule).
        _write(os.path.join(parent, "cgroup.subtree_control"), "+memory +pids")
      root = _make_root(parent, name, v2=True)
    except OSError as e:
      problems.append(f"cgroup v2 {parent}: {e.strerror or e}")
      continue
    slots = []
    try:
      for i in range(n):
        path = os.path.join(root, f"slot{i}")
        os.mkdir(path, 0o755)
        slots.append(Slot(2, path, path))
    except OSError as e:
      PoolCgroups(2, (root,), slots).close()
      problems.append(f"cgroup v2 {root}: {e.strerror or e}")
      continue
    return PoolCgroups(2, (root,), slots)
  return None


def _try_v1(mounts: list, own: dict, name: str, n: int, problems: list[str]):
  roots = {}
  for controller in ("memory", "pids"):
    mount = next((m for m in mounts if m[2] == "cgroup" and controller in m[3]), None)
    if mount is None:
      problems.append(f"cgroup v1: no {controller} hierarchy mounted")
      return None
    for parent in _candidates(mount[0], mount[1], own.get(controller)):
      try:
        roots[controller] = _make_root(parent, name, v2=False)
        break
      except OSError as e:
        problems.append(f"cgroup v1 {parent}: {e.strerror or e}")
    else:
      for root in roots.values():
        os.rmdir(root)
      return None
  made = PoolCgroups(1, tuple(roots.values()), [])
  try:
    for i in range(n):
      dirs = {}
      for controller, root in roots.items():
        dirs[controller] = os.path.join(root, f"slot{i}")
        os.mkdir(dirs[controller], 0o755)
      made.slots.append(Slot(1, dirs["memory"], dirs["pids"]))
  except OSError as e:
    made.close()
    problems.append(f"cgroup v1 {roots}: {e.strerror or e}")
    return None
  return made


def create(n: int) -> PoolCgroups:
  """`n` slot cgroups for one pool (v2 preferred, else v1); raises if neither is usable."""
  name = f"{PREFIX}{_pid_namespace()}.{os.getpid()}.{next(_COUNTER)}"
  problems: list[str] = []
  try:
    mounts, own = _mounts(), _own_paths()
  except OSError as e:
    raise SandboxUnavailableError(f"cannot read this process's cgroups ({e}); "
                                  + OFF_MESSAGE) from e
  made = None
  for mount in (m for m in mounts if m[2] == "cgroup2"):
    made = _try_v2(mount, own.get(""), name, n, problems)
    if made is not None:
      break
  if made is None:
    if not any(m[2] == "cgroup2" for m in mounts):
      problems.append("cgroup v2: not mounted")
    made = _try_v1(mounts, own, name, n, problems)
  if made is None:
    raise SandboxUnavailableError(
        "the sandbox needs a cgroup per pool slot for its per-run memory and process limits, "
        "and none can be created here: " + "; ".join(problems) + ". Run as root with the "
        "cgroup filesystem writable (v2 with the memory and pids controllers, or v1 memory "
        "and pids hierarchies), or delegate a cgroup v2 subtree to this user (systemd: "
        "Delegate=yes); or " + OFF_MESSAGE + ".")
  return made
