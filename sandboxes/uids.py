"""Host uids for sandbox jobs: one per running job, from a pool, never shared.

A job whose processes run under a uid of their own owns no host file, cannot signal or
ptrace anything else on the host even if every namespace failed, counts its RLIMIT_NPROC
alone, and can be found and killed by uid afterwards. The pool is shared safely between
threads and between servers on one host: each uid is held with an flock on a lock file
in a root-only directory, released when the holder closes it or dies.
"""

from __future__ import annotations

import contextlib
import fcntl
import itertools
import os
import signal
import threading
import time

DEFAULT_UID_BASE = 1_600_000_000
"""Host uids of jobs start here: far above login accounts (1000+) and the usual
/etc/subuid ranges (100000+, 65536 each), below 2**31 for tools that use signed ids."""


class UidPool:
    """Hands out host uids `base .. base+count-1`, one per running job, held with an
    flock on a lock file per uid (released when the holder closes it or dies)."""

    def __init__(self, base: int, count: int, lock_dir: str) -> None:
        if base < 1000 or count < 1 or base + count > 2**31 - 1:
            raise ValueError(f"uid pool {base}..{base + count - 1} must lie within 1000..2**31-2")
        self.base, self.count, self.lock_dir = base, count, lock_dir
        os.makedirs(lock_dir, mode=0o700, exist_ok=True)
        st = os.lstat(lock_dir)
        if st.st_uid != os.geteuid() or st.st_mode & 0o022 or not os.path.isdir(lock_dir) or os.path.islink(lock_dir):
            raise RuntimeError(f"{lock_dir} must be a directory owned by uid {os.geteuid()}, writable only by it")
        self._next = itertools.count()
        self._lock = threading.Lock()

    def acquire(self) -> tuple[int, int]:
        """(uid, lock fd); RuntimeError if every uid is in use."""
        with self._lock:
            start = next(self._next)
        for i in range(self.count):
            uid = self.base + (start + i) % self.count
            fd = os.open(os.path.join(self.lock_dir, f"uid-{uid}"),
                         os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return uid, fd
            except BlockingIOError:
                os.close(fd)
        raise RuntimeError(f"all {self.count} sandbox uids from {self.base} are in use")


def processes_of(uid: int) -> list[int]:
    """Live host processes owned by `uid` (a stat per /proc entry). Zombies are left
    out: they run nothing and go when their parent (init, for an orphaned sandbox init)
    reaps them."""
    out = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            with contextlib.suppress(OSError):
                if os.stat(f"/proc/{name}").st_uid == uid and not _zombie(name):
                    out.append(int(name))
    return out


def _zombie(pid: str) -> bool:
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()[0] in ("Z", "X")


def kill_uid(uid: int, timeout_s: float = 5.0) -> bool:
    """SIGKILLs every process of `uid` until none is left; True if none is."""
    deadline = time.monotonic() + timeout_s
    while pids := processes_of(uid):
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        if time.monotonic() > deadline:
            return False
        time.sleep(0.005)
    return True
