"""One shared, read-only /dev for the bwrap sandboxes.

bwrap's `--dev` builds every sandbox's /dev from nothing: a tmpfs, a bind mount (and a
scan of the mount table) for each of six host device nodes, a devpts instance, and then
the backend's remount read-only. That is about 1 ms of CPU per job, 3% of a typical
code-reward job (bench/sandbox.py). Instead the server makes one small tmpfs holding
the same harmless nodes (null, zero, full, random, urandom), the fd/stdin/stdout/stderr
links and a mount point for /dev/shm, and remounts it read-only, so that no sandbox can
change it (device nodes stay usable on a read-only file system). Each sandbox then
binds it at /dev with a single mount.

It needs the rights to mount and to make device nodes (a root server, not one in a
container that dropped CAP_SYS_ADMIN and CAP_MKNOD): `shared_dev` returns None with the
reason otherwise, and the backend keeps `--dev`. Against `--dev`, a sandbox has no
/dev/tty (it has no terminal anyway: bwrap `--new-session`) and no /dev/pts or
/dev/ptmx, so no pseudo-terminals (`os.openpty()` fails).

The tmpfs stays mounted when the server exits (a few inodes; another server on the host
may be using it) and is checked, and rebuilt if it is not exactly as made, when the next
server starts.
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import os
import stat

NODES = {"null": (1, 3), "zero": (1, 5), "full": (1, 7), "random": (1, 8), "urandom": (1, 9)}
"""Character devices (major, minor) of the shared /dev: the ones bwrap `--dev` binds, but
the terminal."""
LINKS = {"fd": "/proc/self/fd", "stdin": "/proc/self/fd/0", "stdout": "/proc/self/fd/1",
         "stderr": "/proc/self/fd/2"}
DIRS = ("shm",)
"""Mount points: each sandbox mounts a size-capped tmpfs of its own at /dev/shm."""

MS_RDONLY, MS_NOSUID, MS_NOEXEC, MS_REMOUNT = 1, 2, 8, 32
MNT_DETACH = 2


def shared_dev(path: str) -> tuple[str | None, str]:
    """Makes sure `path` is the shared read-only /dev (made if missing or not exactly
    right). Returns (path, "") or (None, why it cannot be made here)."""
    parent = os.path.dirname(path)
    try:
        os.makedirs(parent, mode=0o755, exist_ok=True)
        if not _others_can_search(parent):
            return None, f"{parent} is not searchable by other users (the sandboxes' uids)"
        for where in (parent, path):
            # a mount follows symlinks: nobody else may have been able to plant one
            if os.path.lexists(where) and not _ours_alone(where):
                return None, f"{where} must be a directory owned by uid {os.geteuid()} that only it can write"
        lock = os.open(os.path.join(parent, "dev.lock"), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW,
                       0o600)
    except OSError as e:
        return None, f"cannot prepare {parent}: {e.strerror}"
    try:
        fcntl.flock(lock, fcntl.LOCK_EX)  # two servers starting at once make it once
        if is_shared_dev(path):
            return path, ""
        return _make(path)
    finally:
        os.close(lock)


def is_shared_dev(path: str) -> bool:
    """`path` is a read-only mount holding exactly the nodes, links and dirs above."""
    try:
        if not os.path.ismount(path) or not os.statvfs(path).f_flag & os.ST_RDONLY:
            return False
        if set(os.listdir(path)) != {*NODES, *LINKS, *DIRS} or not _others_can_search(path):
            return False
        for name, (major, minor) in NODES.items():
            st = os.lstat(os.path.join(path, name))
            if not stat.S_ISCHR(st.st_mode) or st.st_rdev != os.makedev(major, minor) or st.st_uid != 0:
                return False
        return all(os.readlink(os.path.join(path, name)) == target for name, target in LINKS.items()) and all(
            stat.S_ISDIR(os.lstat(os.path.join(path, name)).st_mode) for name in DIRS)
    except OSError:
        return False


def _make(path: str) -> tuple[str | None, str]:
    libc = ctypes.CDLL(None, use_errno=True)
    if os.path.ismount(path):  # left wrong by an earlier server: detach it (sandboxes using it keep theirs)
        libc.umount2(path.encode(), MNT_DETACH)
    try:
        os.makedirs(path, mode=0o755, exist_ok=True)
    except OSError as e:
        return None, f"cannot make {path}: {e.strerror}"
    flags = MS_NOSUID | MS_NOEXEC
    if libc.mount(b"referee-dev", path.encode(), b"tmpfs", flags, b"size=64k,nr_inodes=64,mode=0755") != 0:
        return None, f"cannot mount a tmpfs at {path}: {os.strerror(ctypes.get_errno())}"
    try:
        for name, (major, minor) in NODES.items():
            os.mknod(os.path.join(path, name), 0o666 | stat.S_IFCHR, os.makedev(major, minor))
            os.chmod(os.path.join(path, name), 0o666)  # the umask does not narrow them
        for name, target in LINKS.items():
            os.symlink(target, os.path.join(path, name))
        for name in DIRS:
            os.mkdir(os.path.join(path, name), 0o755)
        os.chmod(path, 0o755)
        if libc.mount(b"referee-dev", path.encode(), b"tmpfs", flags | MS_REMOUNT | MS_RDONLY, None) != 0:
            raise OSError(ctypes.get_errno(), "cannot remount it read-only")
    except OSError as e:
        libc.umount2(path.encode(), MNT_DETACH)
        return None, f"cannot fill {path}: {e.strerror or e}"
    if not is_shared_dev(path):
        libc.umount2(path.encode(), MNT_DETACH)
        return None, f"{path} is not as made"
    return path, ""


def _ours_alone(path: str) -> bool:
    """A real directory (no symlink) owned by us that no one else may write to."""
    st = os.lstat(path)
    return stat.S_ISDIR(st.st_mode) and st.st_uid == os.geteuid() and not st.st_mode & 0o022


def _others_can_search(path: str) -> bool:
    with contextlib.suppress(OSError):
        return bool(os.stat(path).st_mode & stat.S_IXOTH)
    return False
