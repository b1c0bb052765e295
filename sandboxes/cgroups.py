"""Per-job cgroups: a memory limit without swap, a process limit, CPU accounting.

A cgroup bounds the job as a whole (every process and thread it starts, tmpfs pages it
writes) where rlimits bound each process separately, and it tells an OOM kill apart from
any other SIGKILL. Job cgroups are made under the server's own cgroup, in a
`referee-sandbox` child, so whatever limits the server runs under still hold for its
jobs and nothing is placed outside what the server was given.

cgroup v2 is used when the unified hierarchy offers the memory and pids controllers and
the server may enable them for a child (it may not while its own cgroup holds processes,
unless that is the root: run the server in a leaf cgroup with delegation, e.g. systemd
`Delegate=yes`). Otherwise cgroup v1 (the memory, pids and cpuacct hierarchies), as on
hybrid hosts. Without either, `detect` says why and the backend falls back to rlimits.

On v1 an emptied job cgroup is kept (`CgroupPool`) and reused for a later job: making
and removing three cgroups per job is kernel work on every job, and every removed memory
cgroup lingers in the kernel while pages are still charged to it. A cgroup is reused
only when no process is in it and its pids count is back to 0 (`JobCgroup.idle`), with
its limits rewritten where the next job's differ and its counters read relative to the
job's start (`JobCgroup.begin`): CPU time and the peak memory reported are what the job
added (a reused cgroup may still be charged with up to `REUSE_MAX_USAGE_BYTES` of page
cache that earlier jobs read first; it is reclaimable, so the kernel drops it before it
would OOM-kill the job), and an OOM kill counts only if the cgroup's cumulative count
grew during the job. v2 job cgroups are never reused (their peak memory cannot be reset
portably).

What this does NOT do: it does not limit CPU bandwidth or I/O (the wall and CPU-time
limits end a job instead), and it does not hide the host's cgroup tree (the backend uses
a cgroup namespace for that).
"""

from __future__ import annotations

import contextlib
import errno
import itertools
import os
import signal
import threading
import time
from dataclasses import dataclass

PARENT_NAME = "referee-sandbox"
REUSE_MAX_USAGE_BYTES = 8 * 1024 * 1024
"""An emptied v1 job cgroup still charged with more than this (page cache its jobs read
first) is removed instead of reused."""
_counter = itertools.count()


@dataclass(frozen=True)
class CgroupStats:
    peak_memory_bytes: int
    oom_killed: bool
    """The kernel's OOM killer killed a process of the job (the memory limit was hit)."""


@dataclass(frozen=True)
class Cgroups:
    """What the host allows: `mode` is "v2", "v1" or "none" (then `reason` says why)."""

    mode: str
    reason: str = ""
    dirs: tuple[tuple[str, str], ...] = ()
    """(controller, parent directory for job cgroups); v2 has one entry, "unified"."""

    def create(self, memory_bytes: int, max_pids: int) -> JobCgroup:
        """A fresh, empty job cgroup with its limits set. Raises OSError if the host
        refuses (the caller reports a SANDBOX_ERROR)."""
        name = f"job-{os.getpid()}-{next(_counter)}-{os.urandom(3).hex()}"
        made: list[tuple[str, str]] = []
        try:
            for controller, parent in self.dirs:
                path = os.path.join(parent, name)
                for attempt in range(3):  # another server's close() may remove the parent meanwhile
                    os.makedirs(parent, exist_ok=True)
                    try:
                        os.mkdir(path, 0o755)
                        break
                    except FileNotFoundError:
                        if attempt == 2:
                            raise
                made.append((controller, path))
            job = JobCgroup(self.mode, dict(made))
            job.set_limits(memory_bytes, max_pids)
            return job
        except OSError:
            JobCgroup(self.mode, dict(made)).destroy()
            raise

    def close(self) -> None:
        """Removes the `referee-sandbox` parents if no other server is using them."""
        for _, parent in self.dirs:
            with contextlib.suppress(OSError):
                os.rmdir(parent)


class JobCgroup:
    def __init__(self, mode: str, paths: dict[str, str]) -> None:
        self.mode = mode
        self.paths = paths
        self.limits: tuple[int, int] | None = None
        """(memory bytes, max pids) as last written."""
        self._base_usage = 0
        self._base_ooms = 0
        self._base_cpu_ns = 0

    def _file(self, controller: str, name: str) -> str:
        return os.path.join(self.paths["unified" if self.mode == "v2" else controller], name)

    def _write(self, controller: str, name: str, value: object) -> None:
        fd = os.open(self._file(controller, name), os.O_WRONLY | os.O_CLOEXEC)
        try:
            os.write(fd, str(value).encode())
        finally:
            os.close(fd)

    def _read(self, controller: str, name: str) -> str | None:
        try:
            fd = os.open(self._file(controller, name), os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            return None
        try:
            chunks = []
            while chunk := os.read(fd, 1 << 16):
                chunks.append(chunk)
            return b"".join(chunks).decode()
        except OSError:
            return None
        finally:
            os.close(fd)

    def set_limits(self, memory_bytes: int, max_pids: int) -> None:
        """Writes the limits, skipping those already in place (a reused cgroup)."""
        if self.limits == (memory_bytes, max_pids):
            return
        old_memory, old_pids = self.limits or (None, None)
        self.limits = None  # unknown until every write went through
        if self.mode == "v2":
            if memory_bytes != old_memory:
                self._write("memory", "memory.max", memory_bytes)
                with contextlib.suppress(FileNotFoundError):  # no swap accounting on this kernel
                    self._write("memory", "memory.swap.max", 0)
            if max_pids != old_pids:
                self._write("pids", "pids.max", max_pids)
            self.limits = (memory_bytes, max_pids)
            return
        if memory_bytes != old_memory:
            # memsw may never be below the memory limit: raise it first, lower it last
            raising = old_memory is not None and memory_bytes > old_memory
            if raising:
                self._write_memsw(memory_bytes)
            self._write("memory", "memory.limit_in_bytes", memory_bytes)
            if not raising:
                self._write_memsw(memory_bytes)
        if old_memory is None:
            with contextlib.suppress(OSError):
                self._write("memory", "memory.swappiness", 0)
        if max_pids != old_pids:
            self._write("pids", "pids.max", max_pids)
        self.limits = (memory_bytes, max_pids)

    def _write_memsw(self, memory_bytes: int) -> None:
        with contextlib.suppress(FileNotFoundError):  # memsw exists only with swap accounting
            self._write("memory", "memory.memsw.limit_in_bytes", memory_bytes)

    def begin(self) -> None:
        """Marks the start of a job: peak memory, OOM kills and CPU time are counted
        from here (a reused cgroup carries its earlier jobs' counts)."""
        self._base_cpu_ns = int(self._cpu_ns() or 0)
        if self.mode == "v2":
            self._base_ooms = _keyed(self._read("memory", "memory.events") or "").get("oom_kill", 0)
            return
        # what is charged already (the waiting bwrap's start, earlier jobs' page cache)
        # is not the job's: the peak restarts from the current usage
        self._write("memory", "memory.max_usage_in_bytes", 0)
        usage = self._read("memory", "memory.usage_in_bytes")
        self._base_usage = int(usage) if usage else 0
        self._base_ooms = _keyed(self._read("memory", "memory.oom_control") or "").get("oom_kill", 0)

    def idle(self) -> bool:
        """Reusable for another job (v1): nothing left in the pids count, which counts
        every task of the job, live or not yet reaped (an exited sandbox init counts until
        whoever adopted it reaps it, and the next job's process limit must be whole), and
        little memory charged."""
        count = self._read("pids", "pids.current")
        if count is None or int(count) != 0:
            return False
        usage = self._read("memory", "memory.usage_in_bytes")
        return usage is not None and int(usage) <= REUSE_MAX_USAGE_BYTES

    def add(self, pid: int) -> None:
        """Moves `pid` (not yet running the program) into every hierarchy of the job."""
        for controller in self.paths:
            self._write(controller, "cgroup.procs", pid)

    def _cpu_ns(self) -> int | None:
        if self.mode == "v2":
            text = self._read("cpu", "cpu.stat") or ""
            for line in text.splitlines():
                key, _, value = line.partition(" ")
                if key == "usage_usec":
                    return int(value) * 1000
            return None
        text = self._read("cpuacct", "cpuacct.usage") if "cpuacct" in self.paths else None
        return int(text) if text else None

    def cpu_time_s(self) -> float | None:
        """CPU time of the job's processes since `begin`."""
        ns = self._cpu_ns()
        return max(0, ns - self._base_cpu_ns) / 1e9 if ns is not None else None

    def stats(self) -> CgroupStats:
        """Peak memory and OOM kills since `begin`."""
        if self.mode == "v2":
            peak = self._read("memory", "memory.peak")
            events = _keyed(self._read("memory", "memory.events") or "")
            return CgroupStats(int(peak) if peak else 0, events.get("oom_kill", 0) > self._base_ooms)
        peak = self._read("memory", "memory.max_usage_in_bytes")
        control = _keyed(self._read("memory", "memory.oom_control") or "")
        return CgroupStats(max(0, int(peak) - self._base_usage) if peak else 0,
                           control.get("oom_kill", 0) > self._base_ooms)

    def pids(self) -> list[int]:
        """Processes in the job. One hierarchy's list is enough: every process of the
        job is born in all of its cgroups (bwrap is moved into each before it starts
        anything), and only a privileged process could move one out of one of them."""
        controller = "unified" if self.mode == "v2" else "memory"
        return sorted(int(p) for p in (self._read(controller, "cgroup.procs") or "").split())

    def kill(self, timeout_s: float = 5.0) -> bool:
        """SIGKILLs every process left in the job until none remains (a fork bomb may
        still be forking); True when the cgroup is empty."""
        deadline = time.monotonic() + timeout_s
        if self.mode == "v2":
            with contextlib.suppress(OSError):
                self._write("unified", "cgroup.kill", 1)
        while pids := self.pids():
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            if time.monotonic() > deadline:
                return False
            time.sleep(0.005)
        return True

    def destroy(self) -> bool:
        """Kills what is left and removes the job's directories; True if all went."""
        empty = self.kill()
        gone = True
        for path in self.paths.values():
            for delay in (0, 0.005, 0.02, 0.1, 0.3):  # exiting tasks leave the cgroup shortly
                if delay:
                    time.sleep(delay)
                try:
                    os.rmdir(path)
                    break
                except FileNotFoundError:
                    break
                except OSError as e:
                    if e.errno != errno.EBUSY:
                        gone = False
                        break
            else:
                gone = False
        return empty and gone


class CgroupPool:
    """Job cgroups for the backend: `take` one for a job, `give` it back when the job is
    over. On v1, emptied ones are kept (at most `keep`) and handed out again once they
    are provably idle (`JobCgroup.idle`); one that cannot be emptied is left alone (the
    caller reports the job as SANDBOX_ERROR)."""

    def __init__(self, cgroups: Cgroups, keep: int = 64) -> None:
        self.cgroups = cgroups
        self.keep = keep if cgroups.mode == "v1" else 0
        self._idle: list[JobCgroup] = []
        self._lock = threading.Lock()

    def take(self, memory_bytes: int, max_pids: int) -> JobCgroup:
        """An empty job cgroup with these limits; OSError if none can be made."""
        with self._lock:
            kept = self._idle[:4]  # the oldest few: the likeliest to have had their zombies reaped
        for job in kept:
            try:
                if not job.idle():
                    continue
            except OSError:
                continue
            with self._lock:
                if job not in self._idle:
                    continue  # another thread took it meanwhile
                self._idle.remove(job)
            try:
                job.set_limits(memory_bytes, max_pids)
                return job
            except OSError:
                job.destroy()
        return self.cgroups.create(memory_bytes, max_pids)

    def give(self, job: JobCgroup) -> bool:
        """Takes back a job's cgroup once its job has ended: kills what is left, then
        keeps it for reuse (or removes it). True when the cgroup was empty (the job
        left nothing running)."""
        if not job.kill():
            return False
        if self.keep:
            with self._lock:
                self._idle.append(job)
                extra = self._idle[:-self.keep] if len(self._idle) > self.keep else []
                del self._idle[:len(extra)]
            for old in extra:
                old.destroy()
            return True
        return job.destroy()

    def idle(self) -> list[JobCgroup]:
        with self._lock:
            return list(self._idle)

    def close(self) -> None:
        with self._lock:
            idle, self._idle = self._idle, []
        for job in idle:
            job.destroy()


def _keyed(text: str) -> dict[str, int]:
    out = {}
    for line in text.splitlines():
        key, _, value = line.partition(" ")
        with contextlib.suppress(ValueError):
            out[key] = int(value)
    return out


def _mounts() -> list[tuple[str, str, str, set[str]]]:
    """(fstype, mount point, mount root, super options) of the cgroup mounts."""
    out = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            left, _, right = line.partition(" - ")
            parts, rparts = left.split(), right.split()
            if len(rparts) >= 3 and rparts[0] in ("cgroup", "cgroup2"):
                out.append((rparts[0], parts[4], parts[3], set(rparts[2].split(","))))
    return out


def _own_paths() -> dict[str, str]:
    """Controller (or "unified") -> this process's cgroup path, from /proc/self/cgroup."""
    out = {}
    with open("/proc/self/cgroup") as f:
        for line in f:
            _, controllers, path = line.rstrip("\n").split(":", 2)
            if not controllers:
                out["unified"] = path
            for c in controllers.split(","):
                if c:
                    out[c] = path
    return out


def _under(mount_point: str, mount_root: str, path: str) -> str:
    rel = os.path.relpath(path, mount_root) if mount_root != "/" else path.lstrip("/")
    return os.path.normpath(os.path.join(mount_point, rel, PARENT_NAME))


def _try_v2(mounts: list, own: dict[str, str]) -> Cgroups | str:
    v2 = [m for m in mounts if m[0] == "cgroup2"]
    if not v2 or "unified" not in own:
        return "no cgroup2 mount"
    _, point, root, _ = v2[0]
    base = os.path.dirname(_under(point, root, own["unified"]))
    try:
        with open(os.path.join(base, "cgroup.controllers")) as f:
            available = set(f.read().split())
    except OSError as e:
        return f"cgroup2 at {point} unreadable: {e}"
    if not {"memory", "pids"} <= available:
        return f"cgroup2 at {point} lacks the memory/pids controllers (they are bound to v1 here)"
    parent = os.path.join(base, PARENT_NAME)
    try:
        for where in (base, parent):
            if where == parent:
                os.makedirs(parent, exist_ok=True)
            with open(os.path.join(where, "cgroup.subtree_control"), "w") as f:
                f.write("+memory +pids")
    except OSError as e:
        why = "it holds processes; run the server in a leaf cgroup" if e.errno == errno.EBUSY else e.strerror
        return f"cannot enable memory,pids for children of {base}: {why}"
    return Cgroups("v2", dirs=(("unified", parent),))


def _try_v1(mounts: list, own: dict[str, str]) -> Cgroups | str:
    dirs = []
    for controller in ("memory", "pids", "cpuacct"):
        found = [m for m in mounts if m[0] == "cgroup" and controller in m[3]]
        if not found or controller not in own:
            if controller == "cpuacct":
                continue  # CPU accounting is a nicety; rusage stands in
            return f"no cgroup v1 {controller} hierarchy"
        _, point, root, _ = found[0]
        dirs.append((controller, _under(point, root, own[controller])))
    return Cgroups("v1", dirs=tuple(dirs))


def detect() -> Cgroups:
    """Finds a usable cgroup setup and proves it by making and removing a job cgroup."""
    if os.geteuid() != 0:
        return Cgroups("none", "not root: cannot create cgroups")
    try:
        mounts, own = _mounts(), _own_paths()
    except OSError as e:
        return Cgroups("none", f"cannot read the cgroup layout: {e}")
    reasons = []
    for attempt in (_try_v2, _try_v1):
        got = attempt(mounts, own)
        if isinstance(got, str):
            reasons.append(got)
            continue
        try:
            _remove_stale(got)
            got.create(64 * 1024 * 1024, 8).destroy()
        except OSError as e:
            reasons.append(f"{got.mode}: cannot create a job cgroup: {e}")
            continue
        return got
    return Cgroups("none", "; ".join(reasons))


def _remove_stale(cg: Cgroups) -> None:
    """Job cgroups of servers that died (their pid is in the name) are emptied and removed."""
    for controller, parent in cg.dirs:
        if not os.path.isdir(parent):
            continue
        for name in os.listdir(parent):
            parts = name.split("-")
            if len(parts) != 4 or parts[0] != "job" or not parts[1].isdigit():
                continue
            if _alive(int(parts[1])):
                continue
            JobCgroup(cg.mode, {controller: os.path.join(parent, name)}).destroy()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
