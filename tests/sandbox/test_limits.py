"""Per-run limits of the code sandbox (issue 13, item 2): cgroups and tmpfs inodes (the
seccomp filter: tests/sandbox/test_seccomp.py).

Each attack is a real program run through the sandbox (no mocks) by a 1-slot pool, so that
consecutive runs share a slot (and, as root, its uid), as they do in training.
"""

import errno
import os
import pathlib
import signal
import subprocess
import sys
import time

import pytest

from score_jax import sandbox
from score_jax.sandbox import cgroups as sandbox_cgroups

MIB = 1 << 20


@pytest.fixture(scope="module")
def pool():
  with sandbox.SandboxPool(1, timeout_s=10.0) as p:
    yield p


def _slot(pool):
  return pool._cgroups.slots[0]  # pylint: disable=protected-access


# --- memory: one limit for the whole run -------------------------------------------------

def test_children_together_cannot_exceed_memory_mb(pool):
  # Six children each touch 100 MiB: 600 MiB against memory_mb=320. RLIMIT_AS (per process)
  # allows each of them; the run's cgroup must not. A child that has its 100 MiB says so on
  # a pipe; "held" counts those still alive a while later.
  program = "\n".join([
      "import os, time",
      "r, w = os.pipe()",
      "kids = []",
      "for _ in range(6):",
      "  pid = os.fork()",
      "  if pid == 0:",
      "    block = bytearray(b'x') * (100 << 20)",
      "    os.write(w, b'%8d' % os.getpid())",
      "    time.sleep(5)",
      "    os._exit(0)",
      "  kids.append(pid)",
      "os.close(w)",
      "time.sleep(2)",
      "os.set_blocking(r, False)",
      "try:",
      "  filled = {int(x) for x in os.read(r, 1000).split()}",
      "except BlockingIOError:",
      "  filled = set()",
      "held = [pid for pid in filled if os.waitpid(pid, os.WNOHANG)[0] == 0]",
      "print(len(filled), len(held))"])
  r = pool.run(program, memory_mb=320, processes=16)
  filled, held = map(int, r.stdout.split())
  assert held * 100 < 320, (r, filled, held)     # at most 3 of 100 MiB held at once
  usage = _slot(pool).last
  assert usage.peak_bytes <= 320 * MIB, usage


def test_an_oom_kill_of_the_driver_fails_the_run_with_the_reason(pool):
  program = "\n".join([
      "import os, time",
      "for _ in range(3):",
      "  if os.fork() == 0:",
      "    block = bytearray(b'x') * (60 << 20)",
      "    time.sleep(5)",
      "    os._exit(0)",
      "time.sleep(0.5)",
      "block = bytearray(b'x') * (250 << 20)",   # the largest process: the OOM victim
      "print('survived')"])
  r = pool.run(program, memory_mb=320, processes=16)
  assert (r.status, r.passed, r.stdout) == ("failed", False, ""), r
  assert r.reason.startswith("out of memory"), r.reason


def test_a_single_process_still_gets_memory_error(pool):
  r = pool.run("x = bytearray(8 * 1024 ** 3)", memory_mb=256)
  assert r.status == "failed" and "MemoryError" in r.stderr


# --- processes ---------------------------------------------------------------------------

def test_the_pids_cgroup_caps_every_process_of_the_run(monkeypatch):
  # With the rlimit at 16 processes, the cgroup alone (pids.max = 2 + 4 - 2 = 4 tasks:
  # bwrap, the driver and 2 children) stops the fork loop.
  fresh = sandbox.SandboxPool(1, timeout_s=10.0)    # no zombies of earlier runs in its slot
  monkeypatch.setattr(sandbox_cgroups, "PIDS_OVERHEAD", -12)
  program = "\n".join([
      "import os, time",
      "n = 0",
      "for _ in range(30):",
      "  try:",
      "    if os.fork() == 0:",
      "      time.sleep(5)",
      "      os._exit(0)",
      "    n += 1",
      "  except OSError:",
      "    break",
      "print(n)"])
  with fresh:
    r = fresh.run(program, processes=16)
    assert r.passed and int(r.stdout) == 2, r
    with open(os.path.join(_slot(fresh).pids_dir, "pids.max"), encoding="ascii") as f:
      assert int(f.read()) == 4


def test_a_fork_bomb_stays_in_its_cgroup_and_is_gone_after(pool):
  start = time.monotonic()
  r = pool.run("import os\nwhile True:\n  try:\n    os.fork()\n  except OSError:\n    pass",
               timeout_s=2, processes=8)
  assert r.status == "timeout" and time.monotonic() - start < 6
  slot = _slot(pool)
  assert not sandbox_cgroups._pids(slot.dirs)  # pylint: disable=protected-access
  with open(os.path.join(slot.pids_dir, "pids.peak"), encoding="ascii") as f:
    assert int(f.read()) <= 8 + sandbox_cgroups.PIDS_OVERHEAD


def test_a_daemonised_child_is_gone_after_the_run(pool):
  marker = f"{os.getpid()}.{time.monotonic_ns() % 10 ** 6}"
  program = "\n".join([
      "import os, sys",
      "if os.fork() == 0:",
      "  os.setsid()",
      "  if os.fork() == 0:",
      f"    os.execv('/bin/sleep', ['sleep', '{marker}'])",
      "  os._exit(0)",
      "print('bye')"])
  r = pool.run(program)
  assert r.passed and r.stdout == "bye\n"
  slot = _slot(pool)
  assert slot.last.stragglers == 0
  assert not sandbox_cgroups._pids(slot.dirs)  # pylint: disable=protected-access
  out = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True, check=True).stdout
  assert marker not in out


def test_a_straggler_left_in_the_slot_cgroup_is_killed():
  # A process that is in the slot after the sandbox exited (here put there by hand) is
  # killed by `finish`; a process outside the slot is not touched.
  pools = sandbox_cgroups.create(1)
  try:
    slot = pools.slots[0]
    inside = subprocess.Popen(["sleep", "60"])
    outside = subprocess.Popen(["sleep", "60"])
    for path in slot.enter_files:
      with open(path, "w", encoding="ascii") as f:
        f.write(str(inside.pid))
    slot.prepare(64 * MIB, 8)
    assert slot.finish().stragglers == 1
    assert inside.wait(timeout=5) == -signal.SIGKILL
    assert outside.poll() is None
    outside.kill()
    outside.wait()
  finally:
    pools.close()
  assert not any(os.path.exists(root) for root in pools.roots)


# --- tmpfs inodes ------------------------------------------------------------------------

@pytest.mark.parametrize("where", ["/tmp", "/dev/shm"])
def test_an_inode_flood_is_capped(pool, where):
  if os.geteuid() != 0:
    pytest.skip("nr_inodes is set on the tmpfs mounted as root")
  program = "\n".join([
      "import os",
      f"os.mkdir('{where}/flood')",
      "n = 0",
      "try:",
      "  while n < 100000:",
      f"    os.close(os.open('{where}/flood/%d' % n, os.O_CREAT | os.O_WRONLY))",
      "    n += 1",
      "except OSError as e:",
      "  print(n, e.errno)",
      "else:",
      "  print(n, 0)"])
  r = pool.run(program, memory_mb=256)          # the default tmp_inodes: 4096
  n, err = map(int, r.stdout.split())
  assert n < 4096 and err == errno.ENOSPC, r
  assert _slot(pool).last.peak_bytes <= 256 * MIB


def test_an_inode_flood_is_charged_to_the_run(pool):
  # With a high inode limit, the kernel memory of the inodes counts against memory_mb.
  if os.geteuid() != 0:
    pytest.skip("nr_inodes is set on the tmpfs mounted as root")
  program = "\n".join([
      "import os",
      "os.mkdir('/tmp/flood')",
      "for n in range(60000):",
      "  os.close(os.open('/tmp/flood/%06d' % n, os.O_CREAT | os.O_WRONLY))",
      "print(n)"])
  r = pool.run(program, tmp_inodes=100000, memory_mb=256)
  assert r.passed, r
  peak = _slot(pool).last.peak_bytes
  r = pool.run("import os\nos.mkdir('/tmp/flood')", tmp_inodes=100000, memory_mb=256)
  base = _slot(pool).last.peak_bytes
  assert peak - base > 60000 * 300, (peak, base)   # >= 300 bytes per inode + dentry


def test_honest_programs_with_threads_subprocesses_and_tmp_files_still_pass(pool):
  program = "\n".join([
      "import concurrent.futures, os, subprocess, sys, tempfile, threading",
      "from multiprocessing import shared_memory",
      "with concurrent.futures.ThreadPoolExecutor(4) as ex:",
      "  assert list(ex.map(lambda x: x * x, range(10))) == [x * x for x in range(10)]",
      "out = subprocess.run([sys.executable, '-c', 'print(6 * 7)'], capture_output=True,",
      "                     text=True, check=True).stdout",
      "assert out == '42\\n', out",
      "with tempfile.TemporaryDirectory() as d:",
      "  for i in range(100):",
      "    open(os.path.join(d, str(i)), 'w').write('x' * 1000)",
      "shm = shared_memory.SharedMemory(create=True, size=1 << 20)",
      "shm.buf[:3] = b'abc'",
      "shm.close()",
      "shm.unlink()",
      "pid = os.fork()",
      "if pid == 0:",
      "  os._exit(7)",
      "assert os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) == 7",
      "print('ok')"])
  r = pool.run(program)
  assert r.passed and r.stdout == "ok\n", r


# --- start-up and clean-up ---------------------------------------------------------------

def test_without_cgroups_start_up_fails_with_the_flag_to_run_without(monkeypatch):
  monkeypatch.setattr(sandbox_cgroups, "_mounts", lambda: [])
  with pytest.raises(sandbox.SandboxUnavailableError) as info:
    sandbox.SandboxPool(1)
  message = str(info.value)
  for words in ("cgroup v2: not mounted", "no memory hierarchy", "SandboxPool(cgroups=False)",
                "sandbox_cgroups=False", "per-process rlimits only"):
    assert words in message, message
  with sandbox.SandboxPool(1, cgroups=False) as p:
    assert p._cgroups is None  # pylint: disable=protected-access
    assert p.run("print('ok')").stdout == "ok\n"


def test_closing_the_pool_removes_its_cgroups():
  with sandbox.SandboxPool(2) as p:
    roots = p._cgroups.roots  # pylint: disable=protected-access
    assert p.run("print(1)").passed
    assert all(os.path.isdir(r) for r in roots)
  assert not any(os.path.exists(r) for r in roots)


def test_cgroup_directories_of_a_dead_process_are_removed():
  pools = sandbox_cgroups.create(1)
  dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                        capture_output=True, text=True, check=True).stdout.strip()
  stale = []
  for root in pools.roots:
    ns = os.stat("/proc/self/ns/pid").st_ino
    path = os.path.join(os.path.dirname(root), f"{sandbox_cgroups.PREFIX}{ns}.{dead}.0")
    os.mkdir(path)
    os.mkdir(os.path.join(path, "slot0"))
    stale.append(path)
  other = os.path.join(os.path.dirname(pools.roots[0]), f"{sandbox_cgroups.PREFIX}1.{dead}.0")
  os.mkdir(other)                       # another pid namespace's: never touched
  pools.close()
  again = sandbox_cgroups.create(1)
  again.close()
  assert not any(os.path.exists(p) for p in stale)
  assert os.path.isdir(other)
  os.rmdir(other)


def test_cgroup_v2_is_preferred_and_configured(tmp_path, monkeypatch):
  # This machine's cgroup v2 has no controllers (they are bound to v1), so the v2 path runs
  # on a directory tree that imitates cgroupfs: mkdir creates the interface files.
  interface = {"cgroup.procs": "", "cgroup.controllers": "memory pids",
               "cgroup.subtree_control": "", "cgroup.kill": "", "memory.events": "oom_kill 0\n",
               "memory.max": "", "memory.swap.max": "", "memory.peak": "0",
               "pids.max": "", "pids.current": "0"}
  real_mkdir, real_rmdir = os.mkdir, os.rmdir

  def mkdir(path, mode=0o777):
    real_mkdir(path, mode)
    if str(path).startswith(str(tmp_path)):
      for name, text in interface.items():
        pathlib.Path(path, name).write_text(text)

  own = tmp_path / "service"
  mkdir(own)
  monkeypatch.setattr(os, "mkdir", mkdir)

  def rmdir(path):
    for name in interface:
      pathlib.Path(path, name).unlink(missing_ok=True)
    real_rmdir(path)

  monkeypatch.setattr(os, "rmdir", rmdir)
  monkeypatch.setattr(sandbox_cgroups, "_own_paths", lambda: {"": "/service", "memory": "/"})
  monkeypatch.setattr(sandbox_cgroups, "_mounts", lambda: [
      (str(tmp_path), "/", "cgroup2", {"rw"}),
      (str(tmp_path / "v1"), "/", "cgroup", {"rw", "memory"})])
  made = sandbox_cgroups.create(2)
  assert made.version == 2 and len(made.slots) == 2
  (root,) = made.roots
  assert os.path.dirname(root) == str(own)                     # nested under its own cgroup
  assert (own / "cgroup.subtree_control").read_text() == "+memory +pids"
  assert pathlib.Path(root, "cgroup.subtree_control").read_text() == "+memory +pids"
  slot = made.slots[0]
  assert slot.enter_files == (os.path.join(root, "slot0", "cgroup.procs").encode(),)
  slot.prepare(300 * MIB, 10)
  files = {n: pathlib.Path(root, "slot0", n).read_text()
           for n in ("memory.max", "memory.swap.max", "pids.max")}
  assert files == {"memory.max": str(300 * MIB), "memory.swap.max": "0", "pids.max": "10"}
  assert slot.finish() == sandbox_cgroups.Usage(0, 0, 0)
  made.close()
  assert not os.path.exists(root)
  # Without the controllers there, v2 is skipped with the reason, and v1 is tried.
  (own / "cgroup.controllers").write_text("cpu")
  with pytest.raises(sandbox.SandboxUnavailableError,
                     match=r"controller\(s\) memory, pids not available.*; cgroup v1 "):
    sandbox_cgroups.create(1)


def test_the_config_flag_reaches_the_pool():
  from score_jax.tasks import code  # pylint: disable=import-outside-toplevel
  task = code.HumanEvalTask.from_config({"data_dir": None, "workers": 1, "timeout_s": 5.0,
                                         "sandbox_cgroups": False})
  try:
    assert task.sandbox_cgroups is False
    assert task.pool._cgroups is None  # pylint: disable=protected-access
  finally:
    task.pool.close()
