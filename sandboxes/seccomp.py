"""The seccomp filter of the bwrap sandbox, built with the system's libseccomp.

Why libseccomp through ctypes rather than hand-written BPF: a correct filter has to
check the architecture before it reads a syscall number (an x86_64 process can enter
the kernel through the i386 `int 0x80` gate or with the x32 bit set, and the same number
means a different call there), compare 64-bit arguments as two 32-bit halves, and know
each architecture's numbers. libseccomp does all of that and is what Docker, systemd
and Flatpak use; the binding below is six functions. The result is exported as raw BPF
once per backend and handed to `bwrap --seccomp FD` for every job.

Policy: allow by default, deny a list of calls that widen the kernel's attack surface
or reach outside the sandbox, with EPERM so a program gets a clear error instead of
dying (clone3 answers ENOSYS, which makes glibc fall back to clone, whose flags can be
checked). Calls made through a non-native architecture (i386, x32) kill the process
(SIGSYS): the sandbox runs native programs only, and a 32-bit call is either a mistake
or an attempt to slip past the per-call rules.

What this filter does NOT do: it is not an allow-list. Any syscall not named here is
allowed, including ones new kernels add (the kernel's own permission checks, the dropped
capabilities and the namespaces still apply to them). It does not restrict ioctl,
prctl, or file-system calls; the mount namespace and the uid do that. It does not make
a kernel bug in an allowed call harmless.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os
from dataclasses import dataclass
from functools import lru_cache

# libseccomp's constants (seccomp.h), stable across 2.x.
_ACT_ALLOW = 0x7FFF0000
_ACT_KILL_PROCESS = 0x80000000
_CMP_NE = 1
_CMP_MASKED_EQ = 7
_ATTR_ACT_BADARCH = 2


def _errno_action(code: int) -> int:
    return 0x00050000 | (code & 0xFFFF)


# Namespace flags of clone(2): a program may fork and make threads, not namespaces.
CLONE_NAMESPACE_FLAGS = {
    "CLONE_NEWNS": 0x00020000,
    "CLONE_NEWCGROUP": 0x02000000,
    "CLONE_NEWUTS": 0x04000000,
    "CLONE_NEWIPC": 0x08000000,
    "CLONE_NEWUSER": 0x10000000,
    "CLONE_NEWPID": 0x20000000,
    "CLONE_NEWNET": 0x40000000,
}
# personality(2) bits that weaken the process's memory layout protections.
RISKY_PERSONALITY_FLAGS = {
    "ADDR_NO_RANDOMIZE": 0x0040000,
    "MMAP_PAGE_ZERO": 0x0100000,
    "ADDR_COMPAT_LAYOUT": 0x0200000,
    "READ_IMPLIES_EXEC": 0x0400000,
    "ADDR_LIMIT_32BIT": 0x0800000,
    "ADDR_LIMIT_3GB": 0x8000000,
}
AF_UNIX = 1

DENIED: dict[str, tuple[str, ...]] = {
    "debugging other processes": (
        "ptrace", "process_vm_readv", "process_vm_writev", "pidfd_getfd", "process_madvise", "kcmp",
    ),
    "mounts and root changes": (
        "mount", "umount2", "pivot_root", "chroot", "move_mount", "open_tree", "fsopen", "fsconfig",
        "fsmount", "fspick", "mount_setattr",
    ),
    "namespaces": ("unshare", "setns"),
    "kernel attack surface": (
        "bpf", "perf_event_open", "userfaultfd", "io_uring_setup", "io_uring_enter", "io_uring_register",
        "keyctl", "add_key", "request_key", "open_by_handle_at", "name_to_handle_at", "fanotify_init",
        "lookup_dcookie", "uselib",
    ),
    "system administration": (
        "kexec_load", "kexec_file_load", "init_module", "finit_module", "delete_module", "swapon", "swapoff",
        "reboot", "acct", "quotactl", "syslog", "vhangup", "iopl", "ioperm", "settimeofday", "clock_settime",
        "clock_adjtime", "adjtimex",
    ),
}
"""Calls answered EPERM whatever their arguments, grouped by why."""


class SeccompUnavailable(RuntimeError):
    """libseccomp could not be loaded or refused the filter."""


@dataclass(frozen=True)
class SeccompFilter:
    bpf: bytes
    """The raw BPF program (struct sock_filter[]), as `bwrap --seccomp` reads it."""
    library: str
    """Which libseccomp built it."""
    denied: tuple[str, ...]
    """Every syscall the filter refuses outright (the conditional rules come on top)."""


class _ArgCmp(ctypes.Structure):
    _fields_ = [("arg", ctypes.c_uint), ("op", ctypes.c_int), ("datum_a", ctypes.c_uint64),
                ("datum_b", ctypes.c_uint64)]


def _load() -> tuple[ctypes.CDLL, str]:
    name = ctypes.util.find_library("seccomp") or "libseccomp.so.2"
    try:
        lib = ctypes.CDLL(name, use_errno=True)
    except OSError as e:
        raise SeccompUnavailable(
            f"cannot load libseccomp ({name}): {e}; install the libseccomp2 package") from None
    lib.seccomp_init.restype = ctypes.c_void_p
    lib.seccomp_init.argtypes = [ctypes.c_uint32]
    lib.seccomp_release.argtypes = [ctypes.c_void_p]
    lib.seccomp_attr_set.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_uint32]
    lib.seccomp_syscall_resolve_name.argtypes = [ctypes.c_char_p]
    lib.seccomp_rule_add_array.argtypes = [ctypes.c_void_p, ctypes.c_uint32, ctypes.c_int, ctypes.c_uint,
                                           ctypes.POINTER(_ArgCmp)]
    lib.seccomp_export_bpf.argtypes = [ctypes.c_void_p, ctypes.c_int]
    return lib, name


def _check(rc: int, what: str) -> None:
    if rc < 0:
        raise SeccompUnavailable(f"libseccomp {what} failed: {os.strerror(-rc)}")


@lru_cache(maxsize=1)
def build_filter() -> SeccompFilter:
    """Builds the filter for the native architecture (cached: it never changes).

    Raises SeccompUnavailable if libseccomp is missing or refuses a rule."""
    lib, name = _load()
    ctx = lib.seccomp_init(_ACT_ALLOW)
    if not ctx:
        raise SeccompUnavailable("seccomp_init failed")
    try:
        _check(lib.seccomp_attr_set(ctx, _ATTR_ACT_BADARCH, _ACT_KILL_PROCESS), "setting the bad-arch action")
        eperm = _errno_action(errno.EPERM)
        denied: list[str] = []

        def rule(syscall: str, action: int, *cmps: tuple[int, int, int, int]) -> bool:
            nr = lib.seccomp_syscall_resolve_name(syscall.encode())
            if nr == -1:  # __NR_SCMP_ERROR: this libseccomp does not know the name
                return False
            arr = (_ArgCmp * len(cmps))(*(_ArgCmp(*c) for c in cmps)) if cmps else None
            _check(lib.seccomp_rule_add_array(ctx, action, nr, len(cmps), arr), f"rule for {syscall}")
            return True

        for names in DENIED.values():
            denied += [n for n in names if rule(n, eperm)]
        for flag in CLONE_NAMESPACE_FLAGS.values():
            rule("clone", eperm, (0, _CMP_MASKED_EQ, flag, flag))
        if rule("clone3", _errno_action(errno.ENOSYS)):  # flags live in a struct BPF cannot read
            denied.append("clone3")
        for flag in RISKY_PERSONALITY_FLAGS.values():
            rule("personality", eperm, (0, _CMP_MASKED_EQ, flag, flag))
        for call in ("socket", "socketpair"):  # only AF_UNIX: no network, netlink, packet, ...
            rule(call, eperm, (0, _CMP_NE, AF_UNIX, 0))

        fd = os.memfd_create("referee-seccomp", os.MFD_CLOEXEC)
        try:
            _check(lib.seccomp_export_bpf(ctx, fd), "export")
            os.lseek(fd, 0, os.SEEK_SET)
            chunks = []
            while chunk := os.read(fd, 65536):
                chunks.append(chunk)
        finally:
            os.close(fd)
    finally:
        lib.seccomp_release(ctx)
    return SeccompFilter(b"".join(chunks), name, tuple(denied))


def describe(f: SeccompFilter) -> dict[str, object]:
    """For the start-up log."""
    return {
        "library": f.library,
        "default": "allow",
        "denied_eperm": len(f.denied),
        "clone": "namespace flags denied; clone3 -> ENOSYS",
        "socket": "AF_UNIX only",
        "non_native_arch": "kill",
        "instructions": len(f.bpf) // 8,
    }
