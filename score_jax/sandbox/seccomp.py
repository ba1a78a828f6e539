"""The sandbox's seccomp filter: a classic BPF program that bubblewrap installs (`--seccomp FD`).

bwrap loads the filter just before it execs the sandboxed interpreter (after its own mount and
namespace set-up, which needs some of the calls denied here), so every process of a run runs
under it and cannot remove it (filters are inherited and only ever added to).

What it does, for the two architectures the project runs on (x86_64 and aarch64):

* any other architecture in `seccomp_data.arch` (i386 via `int 0x80`, arm32 compat, ...) and
  the x32 ABI on x86_64 (syscall numbers with bit 30 set) kill the process;
* the calls in `DENIED` fail with EPERM: the kernel keyring (whose user keyring outlives a
  run and is shared by the runs of a slot), io_uring, ptrace and cross-process memory access,
  bpf, perf events, userfaultfd, mounts and namespaces (also `clone` with a CLONE_NEW* flag),
  kernel modules, kexec, swap, reboot, syslog, personality, and a few more that a test program
  never needs (most of them already need a capability the sandbox does not hold);
* `clone3` fails with ENOSYS (its flags sit behind a pointer a filter cannot read; glibc then
  falls back to `clone`, whose flags the filter checks);
* everything else is allowed.

Why hand-built BPF rather than a library: the Python bindings on PyPI are either unmaintained
(pyseccomp, last release 2021) or new and unvetted, and libseccomp's own bindings are not
pip-installable into a virtualenv. The program is a flat deny list of ~50 instructions, built
here with `struct`; `tests/sandbox/test_limits.py` checks its syscall numbers against
libseccomp's tables (where libseccomp.so.2 is installed, as on Debian, where apt needs it),
runs it through a small BPF interpreter, and checks the denials on real sandboxed programs.
"""

from __future__ import annotations

import errno
import functools
import platform
import struct

# <linux/audit.h>, <linux/seccomp.h>, <linux/filter.h>
AUDIT_ARCH_X86_64 = 0xC000003E
AUDIT_ARCH_AARCH64 = 0xC00000B7
X32_SYSCALL_BIT = 0x40000000
RET_KILL_PROCESS = 0x80000000
RET_ERRNO = 0x00050000
RET_ALLOW = 0x7FFF0000
_LD_W_ABS, _JEQ_K, _JGE_K, _JSET_K, _RET_K = 0x20, 0x15, 0x35, 0x45, 0x06
_OFF_NR, _OFF_ARCH, _OFF_ARG0_LO = 0, 4, 16      # struct seccomp_data (little-endian)
# clone(2) flags that create namespaces (CLONE_NEWTIME shares its bit with the exit signal in
# clone(2), and exists only for unshare / clone3, both denied).
CLONE_NEW_MASK = (0x00020000 | 0x02000000 | 0x04000000 | 0x08000000 | 0x10000000 | 0x20000000
                  | 0x40000000)

# name: (x86_64 number, aarch64 number)
DENIED = {
    "keyctl": (250, 219), "add_key": (248, 217), "request_key": (249, 218),
    "io_uring_setup": (425, 425), "io_uring_enter": (426, 426),
    "io_uring_register": (427, 427),
    "ptrace": (101, 117), "process_vm_readv": (310, 270), "process_vm_writev": (311, 271),
    "pidfd_getfd": (438, 438), "kcmp": (312, 272), "process_madvise": (440, 440),
    "bpf": (321, 280), "perf_event_open": (298, 241), "userfaultfd": (323, 282),
    "mount": (165, 40), "umount2": (166, 39), "pivot_root": (155, 41), "chroot": (161, 51),
    "open_tree": (428, 428), "move_mount": (429, 429), "fsopen": (430, 430),
    "fsconfig": (431, 431), "fsmount": (432, 432), "fspick": (433, 433),
    "mount_setattr": (442, 442),
    "unshare": (272, 97), "setns": (308, 268),
    "kexec_load": (246, 104), "kexec_file_load": (320, 294),
    "init_module": (175, 105), "finit_module": (313, 273), "delete_module": (176, 106),
    "swapon": (167, 224), "swapoff": (168, 225), "reboot": (169, 142), "syslog": (103, 116),
    "personality": (135, 92), "acct": (163, 89), "quotactl": (179, 60),
    "lookup_dcookie": (212, 18), "name_to_handle_at": (303, 264),
    "open_by_handle_at": (304, 265), "fanotify_init": (300, 262),
}
NOT_IMPLEMENTED = {"clone3": (435, 435)}            # -> ENOSYS
CLONE = {"clone": (56, 220)}                          # -> EPERM with a CLONE_NEW* flag
ARCHES = {"x86_64": (AUDIT_ARCH_X86_64, 0), "aarch64": (AUDIT_ARCH_AARCH64, 1)}


class _Assembler:
  """Classic BPF with forward jumps to labels (jt / jf are 8-bit offsets)."""

  def __init__(self):
    self.code: list[list] = []            # [opcode, jt, jf, k] with labels unresolved
    self.labels: dict[str, int] = {}

  def label(self, name: str) -> None:
    self.labels[name] = len(self.code)

  def emit(self, code: int, k: int = 0, jt=0, jf=0) -> None:
    self.code.append([code, jt, jf, k])

  def assemble(self) -> bytes:
    out = []
    for pc, (code, jt, jf, k) in enumerate(self.code):
      offsets = []
      for target in (jt, jf):
        if isinstance(target, str):
          target = self.labels[target] - pc - 1
        if not 0 <= target <= 255:
          raise ValueError(f"BPF jump of {target} at {pc} out of range")
        offsets.append(target)
      out.append(struct.pack("=HBBI", code, offsets[0], offsets[1], k))
    return b"".join(out)


@functools.cache
def program() -> bytes:
  """The filter: `struct sock_filter[]` bytes, as `bwrap --seccomp FD` reads them."""
  a = _Assembler()
  a.emit(_LD_W_ABS, _OFF_ARCH)
  for name, (audit_arch, _) in ARCHES.items():
    a.emit(_JEQ_K, audit_arch, jt=name)
  a.emit(_RET_K, RET_KILL_PROCESS)
  for name, (_, column) in ARCHES.items():
    a.label(name)
    a.emit(_LD_W_ABS, _OFF_NR)
    if name == "x86_64":
      a.emit(_JGE_K, X32_SYSCALL_BIT, jt="kill")
    for numbers in DENIED.values():
      a.emit(_JEQ_K, numbers[column], jt="eperm")
    for numbers in NOT_IMPLEMENTED.values():
      a.emit(_JEQ_K, numbers[column], jt="enosys")
    for numbers in CLONE.values():
      a.emit(_JEQ_K, numbers[column], jt="clone")
    a.emit(_RET_K, RET_ALLOW)
  a.label("clone")
  a.emit(_LD_W_ABS, _OFF_ARG0_LO)
  a.emit(_JSET_K, CLONE_NEW_MASK, jt="eperm")
  a.emit(_RET_K, RET_ALLOW)
  a.label("eperm")
  a.emit(_RET_K, RET_ERRNO | errno.EPERM)
  a.label("enosys")
  a.emit(_RET_K, RET_ERRNO | errno.ENOSYS)
  a.label("kill")
  a.emit(_RET_K, RET_KILL_PROCESS)
  return a.assemble()


def native_supported() -> bool:
  """Whether this machine's architecture is one the filter allows (else it kills everything)."""
  return platform.machine() in ("x86_64", "aarch64", "arm64")


def evaluate(prog: bytes, nr: int, arch: int, args=(0,) * 6) -> int:
  """Runs `prog` on one `seccomp_data` (a tiny classic-BPF interpreter, for tests)."""
  data = struct.pack("=iIQ6Q", nr, arch, 0, *(list(args) + [0] * 6)[:6])
  insns = [struct.unpack_from("=HBBI", prog, i) for i in range(0, len(prog), 8)]
  acc, pc = 0, 0
  while True:
    code, jt, jf, k = insns[pc]
    pc += 1
    if code == _LD_W_ABS:
      acc = struct.unpack_from("=I", data, k)[0]
    elif code == _RET_K:
      return k
    elif code in (_JEQ_K, _JGE_K, _JSET_K):
      taken = {_JEQ_K: acc == k, _JGE_K: acc >= k, _JSET_K: bool(acc & k)}[code]
      pc += jt if taken else jf
    else:
      raise ValueError(f"unknown BPF opcode {code:#x}")
