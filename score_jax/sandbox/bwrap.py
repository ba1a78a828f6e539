"""Host side of the code sandbox: the bubblewrap command line, worker uids, privilege drop.

One sandboxed run is `bwrap ... python -I -S -B -X utf8 -c BOOTSTRAP /tmp/.job FD`:

* all namespaces unshared (`--unshare-all --unshare-user`: no network, own pid / ipc / uts /
  cgroup / mount / user namespaces), `--disable-userns` (no nested user namespaces),
  `--die-with-parent`, `--new-session`, `--as-pid-1` (the driver is pid 1: when it exits,
  the kernel kills every process left in the sandbox, and no zombie outlives the run);
* a read-only system: `/usr` and the top-level `/bin`, `/lib*`, `/sbin` links, the
  interpreter's own directories (for pyenv: `/root/.pyenv/versions/X`, nothing else of
  `/root`), `/etc/ld.so.cache`; size- and inode-limited private tmpfs on `/tmp` and
  `/dev/shm` are the only writable places (`/` and `/dev` are remounted read-only);
  `--clearenv`;
* a seccomp filter (`score_jax.sandbox.seccomp`, `--seccomp FD`): no keyring, io_uring,
  ptrace, bpf, perf, userfaultfd, mounts or namespaces, unknown architectures killed;
* the run's cgroup (`score_jax.sandbox.cgroups`): the child moves itself into its slot's
  cgroup first thing in its `preexec_fn`, so every process of the run shares one memory and
  one pids limit, and what is left after the run is killed.
* As root, each pool slot drops to its own uid before exec (a `preexec_fn`: setgroups,
  setgid, setuid, rlimits), so that the process-count rlimit applies (it is ignored for
  root) and a sandbox escape would hold no privilege. bubblewrap then runs unprivileged,
  so it cannot read directories that are closed to other users (pyenv's Python under
  `/root`, mode 0700): such directories are first bind-mounted, in a private mount
  namespace of the child (nothing changes on the host), onto a world-readable staging dir.
  In the same namespace the child mounts the run's two tmpfs with `size=` and `nr_inodes=`
  (bwrap's `--tmpfs` has no inode limit) on staging dirs that bwrap binds to `/tmp` and
  `/dev/shm`; each run gets fresh ones, gone with its mount namespace.
* Not as root, all slots share the caller's uid; the driver still sets the rlimits inside
  the sandbox's own user namespace (the process limit then counts only its processes), and
  the tmpfs are bwrap's (size-limited; their inodes are charged to the run's memory cgroup).
"""

from __future__ import annotations

import ctypes
import dataclasses
import os
import pathlib
import platform
import resource
import shutil
import site
import stat
import sys
import tempfile

from score_jax.sandbox import seccomp

JOB_PATH = "/tmp/.job"
UID_BASE = int(os.environ.get("SCORE_JAX_SANDBOX_UID_BASE", "2000000000"))
MAX_SLOTS = 4096
DRIVER_CODE = compile(pathlib.Path(__file__).with_name("driver.py").read_text(),
                      "<sandbox driver>", "exec", dont_inherit=True)
# Runs the driver code object stored first in the job file (see score_jax.sandbox.driver).
BOOTSTRAP = "import marshal,sys;exec(marshal.loads(open(sys.argv[1],'rb').read())[0])"
_SYSTEM_TOP = ("bin", "sbin", "lib", "lib32", "lib64", "libx32")
_CLONE_NEWNS = 0x00020000
_MS_NOSUID, _MS_NODEV, _MS_BIND, _MS_REC, _MS_PRIVATE = 2, 4, 4096, 16384, 1 << 18


class SandboxUnavailableError(RuntimeError):
  """The sandbox cannot run here; the message says why and how to fix it."""


@dataclasses.dataclass(frozen=True)
class Limits:
  """Resource limits of one sandboxed run.

  Attributes:
    timeout_s: wall-clock limit; the whole sandbox is killed when it passes.
    memory_mb: memory of the whole run, all its processes together and the kernel memory
      charged to them (tmpfs pages and inodes included; the slot's cgroup), and the
      address-space limit of each process (RLIMIT_AS).
    cpu_s: CPU-seconds per process (RLIMIT_CPU); None -> ceil(timeout_s) + 1.
    file_mb: largest file a process may write (RLIMIT_FSIZE).
    tmp_mb: size of each private tmpfs (`/tmp`, `/dev/shm`).
    tmp_inodes: files and directories each private tmpfs can hold (`nr_inodes`, as root).
    open_files: RLIMIT_NOFILE.
    processes: processes (and threads) in the sandbox (RLIMIT_NPROC).
    output_bytes: cap on stdout + stderr; a run that prints more is killed ("error").

  With cgroups (the default) one run holds at most `memory_mb` MiB in all; without
  (`SandboxPool(cgroups=False)`) rlimits are per process: one run can hold about
  `processes * memory_mb + 2 * tmp_mb` MiB (8.1 GiB with the defaults).
  """
  timeout_s: float = 10.0
  memory_mb: int = 1024
  cpu_s: int | None = None
  file_mb: int = 16
  tmp_mb: int = 64
  tmp_inodes: int = 4096
  open_files: int = 64
  processes: int = 8
  output_bytes: int = 64 * 1024

  def __post_init__(self):
    for field in dataclasses.fields(self):
      value = getattr(self, field.name)
      if value is not None and not value > 0:
        raise ValueError(f"sandbox Limits.{field.name}={value!r} must be > 0")

  def rlimits(self, *, processes_extra: int = 0) -> dict[str, int]:
    """The rlimits by `resource` constant name."""
    cpu = self.cpu_s if self.cpu_s is not None else int(-(-self.timeout_s // 1)) + 1
    mib = 1 << 20
    return {"RLIMIT_AS": self.memory_mb * mib, "RLIMIT_CPU": cpu,
            "RLIMIT_FSIZE": self.file_mb * mib, "RLIMIT_NOFILE": self.open_files,
            "RLIMIT_NPROC": self.processes + processes_extra, "RLIMIT_CORE": 0}


def find_bwrap() -> str:
  """The bwrap binary; raises with the install command if it is missing."""
  path = shutil.which("bwrap")
  if path is None:
    raise SandboxUnavailableError(
        "bubblewrap (bwrap) is not installed; install it with `apt-get install bubblewrap`. "
        "score_jax never runs model-written code unsandboxed.")
  return path


def _under(path: str, roots) -> bool:
  return any(path == r or path.startswith(r.rstrip("/") + "/") for r in roots)


def world_accessible(path: str) -> bool:
  """True if users other than the owner can reach and read `path` (mode bits only)."""
  p = pathlib.Path(path)
  for parent in reversed(p.parents):
    if not os.stat(parent).st_mode & stat.S_IXOTH:
      return False
  mode = os.stat(p).st_mode
  return bool(mode & stat.S_IROTH and (not stat.S_ISDIR(mode) or mode & stat.S_IXOTH))


def interpreter() -> tuple[str, list[str], list[str]]:
  """(python binary, directories to bind read-only, sys.path additions) for the sandbox.

  The sandbox runs this process's interpreter (`realpath(sys.executable)`) with `-S`;
  its site-packages are appended to sys.path (without running .pth files).
  """
  python = os.path.realpath(sys.executable)
  site_dirs = [os.path.realpath(d) for d in site.getsitepackages() if os.path.isdir(d)]
  wanted = {os.path.realpath(p) for p in (sys.base_prefix, sys.base_exec_prefix, sys.prefix,
                                          sys.exec_prefix)}
  wanted |= set(site_dirs) | {os.path.dirname(python)}
  binds = []
  for path in sorted(wanted, key=len):
    if os.path.isdir(path) and not _under(path, ["/usr"] + binds):
      binds.append(path)
  return python, binds, site_dirs


def state_dir() -> pathlib.Path:
  """A root-owned, world-readable directory for staging mount points and uid locks."""
  root = (pathlib.Path("/run") if os.access("/run", os.W_OK)
          else pathlib.Path(tempfile.gettempdir())) / "score_jax_sandbox"
  root.mkdir(mode=0o755, exist_ok=True)
  st = os.lstat(root)
  if not stat.S_ISDIR(st.st_mode) or st.st_uid != 0 or st.st_mode & 0o022:
    raise SandboxUnavailableError(f"{root} must be a directory owned by root and not "
                                  "writable by others; remove it and retry")
  os.chmod(root, 0o755)
  return root


@dataclasses.dataclass(frozen=True)
class Layout:
  """What every run of this process binds: interpreter, staging, system directories."""
  bwrap: str
  python: str
  binds: tuple[tuple[str, str], ...]      # (host source, sandbox destination)
  staged: tuple[tuple[str, str], ...]     # (real dir, staging dir) mounted by preexec
  sys_path: tuple[str, ...]
  as_root: bool
  tmpfs: tuple[str, ...] = ()             # (tmp, shm) mount points for preexec's tmpfs


def layout() -> Layout:
  """Works out the binds for this interpreter; stages dirs others cannot read (as root)."""
  bwrap = find_bwrap()
  if not seccomp.native_supported():
    raise SandboxUnavailableError(
        f"the sandbox's seccomp filter knows the system calls of x86_64 and aarch64 only, "
        f"not of this machine ({platform.machine()}); add its numbers to "
        "score_jax/sandbox/seccomp.py")
  python, dirs, sys_path = interpreter()
  as_root = os.geteuid() == 0
  binds, staged = [], []
  hidden = [d for d in dirs if as_root and not world_accessible(d)]
  if hidden:
    stage = state_dir()
    for i, d in enumerate(hidden):
      target = stage / f"stage{i}"
      target.mkdir(mode=0o755, exist_ok=True)
      staged.append((d, str(target)))
  for d in dirs:
    binds.append((dict(staged).get(d, d), d))
  tmpfs = ()
  if as_root:
    tmpfs = tuple(str(state_dir() / "tmpfs" / name) for name in ("tmp", "shm"))
    for path in tmpfs:
      os.makedirs(path, mode=0o755, exist_ok=True)
  return Layout(bwrap, python, tuple(binds), tuple(staged), tuple(sys_path), as_root, tmpfs)


def bwrap_command(lay: Layout, limits: Limits, *, uid: int, gid: int, job_fd: int,
                  status_fd: int, seccomp_fd: int | None = None) -> list[str]:
  """The full command line of one sandboxed run (`seccomp_fd`: see `seccomp_fd()`)."""
  size = str(limits.tmp_mb << 20)
  cmd = [lay.bwrap, "--unshare-all", "--unshare-user", "--disable-userns",
         "--die-with-parent", "--new-session", "--as-pid-1", "--hostname", "sandbox",
         "--uid", str(uid), "--gid", str(gid), "--ro-bind", "/usr", "/usr"]
  for name in _SYSTEM_TOP:
    path = "/" + name
    if os.path.islink(path):
      cmd += ["--symlink", os.readlink(path), path]
    elif os.path.isdir(path):
      cmd += ["--ro-bind", path, path]
  if lay.tmpfs:         # mounted by `preexec`, with nr_inodes
    shm = ["--bind", lay.tmpfs[1], "/dev/shm"]
    tmp = ["--bind", lay.tmpfs[0], "/tmp"]
  else:
    shm = ["--size", size, "--tmpfs", "/dev/shm"]
    tmp = ["--size", size, "--tmpfs", "/tmp"]
  cmd += ["--ro-bind-try", "/etc/ld.so.cache", "/etc/ld.so.cache",
          "--proc", "/proc", "--dev", "/dev", *shm, "--remount-ro", "/dev", *tmp]
  for src, dst in lay.binds:
    cmd += ["--ro-bind", src, dst]
  cmd += ["--file", str(job_fd), JOB_PATH, "--remount-ro", "/", "--chdir", "/tmp",
          "--clearenv", "--setenv", "PATH", "/usr/local/bin:/usr/bin:/bin",
          "--setenv", "HOME", "/tmp", "--setenv", "TMPDIR", "/tmp",
          "--setenv", "LANG", "C.UTF-8"]
  if seccomp_fd is not None:
    cmd += ["--seccomp", str(seccomp_fd)]
  cmd += ["--", lay.python, "-I", "-S", "-B", "-X", "utf8", "-c", BOOTSTRAP, JOB_PATH,
          str(status_fd)]
  return cmd


_LIBC = []


def _libc():
  if not _LIBC:
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong,
                           ctypes.c_void_p]
    libc.unshare.argtypes = [ctypes.c_int]
    _LIBC.append(libc)
  return _LIBC[0]


def seccomp_fd() -> int:
  """A fresh fd to pass as `bwrap --seccomp FD` (bwrap reads it to its end: one per run)."""
  r, w = os.pipe()
  try:
    os.write(w, seccomp.program())       # ~1 KiB: fits a pipe's buffer, never blocks
  finally:
    os.close(w)
  return r


def _join(cgroup_procs_files) -> None:
  """Moves the calling process into each cgroup (writes "0" to its cgroup.procs)."""
  for path in cgroup_procs_files:
    fd = os.open(path, os.O_WRONLY)
    try:
      os.write(fd, b"0")
    finally:
      os.close(fd)


def preexec(lay: Layout, uid: int, limits: Limits, cgroup=None):
  """The `preexec_fn` of a run: join the slot's cgroup; as root also stage hidden dirs, mount
  the run's tmpfs, drop to `uid`, set rlimits. None when there is nothing to do.

  `cgroup` is the slot's `score_jax.sandbox.cgroups.Slot` (None without cgroups): the child
  writes "0" (itself) to its `cgroup.procs` files before anything else, so bwrap and every
  process of the run are in it.

  Runs in the forked child before exec; it only calls pre-resolved C functions (no imports,
  no locks), which keeps it safe in a threaded parent. (With a preexec_fn, subprocess forks
  instead of using vfork: in a parent with a large heap that costs the page-table copy.)
  """
  enter = tuple(cgroup.enter_files) if cgroup is not None else ()
  if not lay.as_root:
    if not enter:
      return None

    return lambda: _join(enter)
  libc = _libc()
  staged = [(src.encode(), dst.encode()) for src, dst in lay.staged]
  options = (f"size={limits.tmp_mb << 20},nr_inodes={limits.tmp_inodes},mode=0755,"
             f"uid={uid},gid={uid}").encode()
  tmpfs = [path.encode() for path in lay.tmpfs]
  # A backstop for the slot uid: the driver sets the exact per-run process limit inside the
  # sandbox's user namespace; this one leaves room for the outer bwrap and for the pid-1
  # zombies of killed runs that the host's init has not reaped yet.
  rlimits = [(getattr(resource, k), v) for k, v in limits.rlimits(processes_extra=64).items()]

  def fn():
    _join(enter)
    if staged or tmpfs:
      if libc.unshare(_CLONE_NEWNS) != 0:
        raise OSError(ctypes.get_errno(), "unshare(CLONE_NEWNS)")
      if libc.mount(None, b"/", None, _MS_REC | _MS_PRIVATE, None) != 0:
        raise OSError(ctypes.get_errno(), "mount --make-rprivate /")
      for src, dst in staged:
        if libc.mount(src, dst, None, _MS_BIND | _MS_REC, None) != 0:
          raise OSError(ctypes.get_errno(), "bind mount")
      for dst in tmpfs:
        if libc.mount(b"tmpfs", dst, b"tmpfs", _MS_NOSUID | _MS_NODEV, options) != 0:
          raise OSError(ctypes.get_errno(), "mount tmpfs")
    os.setgroups([])
    os.setgid(uid)
    os.setuid(uid)
    for res, value in rlimits:
      resource.setrlimit(res, (value, value))

  return fn
