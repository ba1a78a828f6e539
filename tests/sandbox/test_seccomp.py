"""The sandbox's seccomp filter (issue 13, item 2): denied calls answer EPERM (nothing leaks to
the next run in the same slot), foreign ABIs are killed, and the filter program itself decides
as intended for every listed call on x86_64 and aarch64.

Each attack is a real program run through a 1-slot pool (consecutive runs share a slot).
"""

import ctypes
import ctypes.util
import errno
import platform
import signal

import pytest

from score_jax import sandbox
from score_jax.sandbox import seccomp

COLUMN = {"x86_64": 0, "aarch64": 1, "arm64": 1}.get(platform.machine())


@pytest.fixture(scope="module")
def pool():
  with sandbox.SandboxPool(1, timeout_s=10.0) as p:
    yield p


def _nr(name: str) -> int:
  table = {**seccomp.DENIED, **seccomp.NOT_IMPLEMENTED, **seccomp.CLONE}
  return table[name][COLUMN]


# A prelude for programs that make raw system calls: syscall(name, *args) -> (result, errno).
SYSCALL = """
import ctypes, os
_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long
NR = {nr!r}
def syscall(name, *args):
  ctypes.set_errno(0)
  ret = _libc.syscall(ctypes.c_long(NR[name]), *[ctypes.c_long(a) if isinstance(a, int) else a
                                                  for a in args])
  return ret, ctypes.get_errno()
"""


def _prelude(*names) -> str:
  return SYSCALL.format(nr={n: _nr(n) for n in names})


needs_known_arch = pytest.mark.skipif(COLUMN is None, reason="seccomp numbers: x86_64/aarch64")


# --- seccomp -----------------------------------------------------------------------------

@needs_known_arch
def test_the_keyring_is_denied_and_nothing_leaks_to_the_next_run(pool):
  add = _prelude("add_key") + "\n".join([
      "KEY_SPEC_USER_KEYRING = -4",
      "print(*syscall('add_key', b'user', b'score_leak', b'hunter2', 7, KEY_SPEC_USER_KEYRING))"])
  r = pool.run(add)
  assert r.passed and r.stdout.split() == ["-1", str(errno.EPERM)], r
  find = _prelude("keyctl", "request_key") + "\n".join([
      "KEYCTL_SEARCH, KEY_SPEC_USER_KEYRING = 10, -4",
      "print(*syscall('keyctl', KEYCTL_SEARCH, KEY_SPEC_USER_KEYRING, b'user', b'score_leak', 0))",
      "print(*syscall('request_key', b'user', b'score_leak', None, 0))"])
  r = pool.run(find)
  assert r.passed and r.stdout.split() == ["-1", str(errno.EPERM)] * 2, r


@needs_known_arch
def test_io_uring_is_denied(pool):
  program = _prelude("io_uring_setup") + "\n".join([
      "params = ctypes.create_string_buffer(120)",
      "print(*syscall('io_uring_setup', 4, params))"])
  r = pool.run(program)
  assert r.passed and r.stdout.split() == ["-1", str(errno.EPERM)], r


@needs_known_arch
def test_ptrace_and_cross_process_memory_access_are_denied(pool):
  program = _prelude("ptrace", "process_vm_readv") + "\n".join([
      "import time",
      "PTRACE_TRACEME, PTRACE_ATTACH = 0, 16",
      "child = os.fork()",
      "if child == 0:",
      "  time.sleep(3)",
      "  os._exit(0)",
      "time.sleep(0.1)",
      "print(*syscall('ptrace', PTRACE_ATTACH, child, 0, 0))",
      "print(*syscall('ptrace', PTRACE_TRACEME, 0, 0, 0))",
      "buf = ctypes.create_string_buffer(8)",
      "iov = (ctypes.c_void_p * 2)(ctypes.addressof(buf), 8)",
      "print(*syscall('process_vm_readv', child, iov, 1, iov, 1, 0))",
      "os.kill(child, 9)"])
  r = pool.run(program)
  assert r.passed and r.stdout.split() == ["-1", str(errno.EPERM)] * 3, r


@needs_known_arch
def test_namespaces_and_mounts_are_denied(pool):
  program = _prelude("unshare", "setns", "mount", "clone") + "\n".join([
      "CLONE_NEWNS, CLONE_NEWUSER, CLONE_NEWNET = 0x20000, 0x10000000, 0x40000000",
      "for flags in (CLONE_NEWUSER, CLONE_NEWNS, CLONE_NEWNET):",
      "  print(*syscall('unshare', flags))",
      "fd = os.open('/proc/self/ns/mnt', os.O_RDONLY)",
      "print(*syscall('setns', fd, 0))",
      "print(*syscall('mount', b'none', b'/tmp', b'tmpfs', 0, None))",
      "print(*syscall('clone', CLONE_NEWUSER | 17, 0, 0, 0, 0))"])
  r = pool.run(program)
  assert r.passed and r.stdout.split() == ["-1", str(errno.EPERM)] * 6, r


@pytest.mark.skipif(platform.machine() != "x86_64", reason="the x32 ABI is x86_64's")
def test_the_x32_abi_kills_the_process(pool):
  # getpid (39) through the x32 ABI: the filter kills the caller with SIGSYS.
  program = "\n".join([
      "import subprocess, sys",
      "code = ('import ctypes; libc = ctypes.CDLL(None); '",
      "        'print(libc.syscall(ctypes.c_long(0x40000000 | 39)))')",
      "p = subprocess.run([sys.executable, '-I', '-S', '-c', code], capture_output=True)",
      "print(p.returncode)"])
  r = pool.run(program)
  assert r.passed and int(r.stdout) == -signal.SIGSYS, r


def test_the_filter_program_decides_as_intended():
  prog = seccomp.program()
  allow, eperm = seccomp.RET_ALLOW, seccomp.RET_ERRNO | errno.EPERM
  for arch, column in ((seccomp.AUDIT_ARCH_X86_64, 0), (seccomp.AUDIT_ARCH_AARCH64, 1)):
    for name, numbers in seccomp.DENIED.items():
      assert seccomp.evaluate(prog, numbers[column], arch) == eperm, name
    for nr in (0, 1, 2, 3, 39, 57, 59, 63, 172, 231, 334, 435 - 1):   # read, write, ...
      if nr not in {n[column] for n in seccomp.DENIED.values()}:
        assert seccomp.evaluate(prog, nr, arch) == allow, nr
    clone = seccomp.CLONE["clone"][column]
    assert seccomp.evaluate(prog, clone, arch, (0x01200011,)) == allow      # fork()
    assert seccomp.evaluate(prog, clone, arch, (0x003D0F00,)) == allow      # pthread_create
    assert seccomp.evaluate(prog, clone, arch, (0x10000011,)) == eperm      # CLONE_NEWUSER
    assert seccomp.evaluate(prog, seccomp.NOT_IMPLEMENTED["clone3"][column], arch) == (
        seccomp.RET_ERRNO | errno.ENOSYS)
  kill = seccomp.RET_KILL_PROCESS
  assert seccomp.evaluate(prog, 39, 0x12345678) == kill                       # unknown
  assert seccomp.evaluate(prog, 20, 0x40000003) == kill                       # i386
  assert seccomp.evaluate(prog, 20, 0x40000028) == kill                       # arm (32-bit)
  assert seccomp.evaluate(prog, seccomp.X32_SYSCALL_BIT | 39, seccomp.AUDIT_ARCH_X86_64) == kill


def test_the_syscall_numbers_match_libseccomp():
  path = ctypes.util.find_library("seccomp")
  if path is None:
    pytest.skip("libseccomp is not installed")
  lib = ctypes.CDLL(path)
  lib.seccomp_syscall_resolve_name_arch.argtypes = [ctypes.c_uint32, ctypes.c_char_p]
  for table in (seccomp.DENIED, seccomp.NOT_IMPLEMENTED, seccomp.CLONE):
    for name, numbers in table.items():
      for arch, nr in zip((seccomp.AUDIT_ARCH_X86_64, seccomp.AUDIT_ARCH_AARCH64), numbers):
        known = lib.seccomp_syscall_resolve_name_arch(arch, name.encode())
        if known >= 0:                  # an older libseccomp may not know the newest calls
          assert known == nr, (name, hex(arch), nr, known)
