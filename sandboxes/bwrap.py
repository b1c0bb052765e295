"""The bwrap backend: each job in a fresh bubblewrap sandbox (DESIGN.md section 6).

How one job runs:

1. A host uid of its own is taken from a pool (when the server is root): bwrap is exec'd
   already switched to it by util-linux's setpriv, with no supplementary groups, so the
   job owns no host file and RLIMIT_NPROC counts only its own processes. Lock files
   (flock) hand out the uids, so concurrent jobs, and two servers on one host, never
   share one.
2. bwrap makes new user, pid, net, ipc, uts and cgroup namespaces; inside, the program
   runs as uid/gid 65534 with every capability dropped, no_new_privs, and the seccomp
   filter of `seccomp.py`. It sees /usr (and the merged-/usr symlinks), a few /etc files
   the loader needs, a synthetic /etc/passwd, its own /proc, a minimal /dev, and three
   size-capped tmpfs: /work (its files, the cwd), /tmp and /dev/shm. Everything else is
   read-only. The environment holds PATH, HOME, LANG, TMPDIR and the language's own.
3. bwrap stops before running anything (`--block-fd`) and reports the sandbox's pid
   (`--json-status-fd`); the server moves that process into a per-job cgroup (memory
   without swap, pids, CPU accounting), then lets it go. Inside, util-linux's prlimit
   sets the rlimits (CPU, file size, open files, processes, no core; address space
   only without a cgroup) and execs the program, which bwrap has already placed under
   its namespaces, capability drop and seccomp filter.
4. stdout/stderr are drained and capped, the wall clock and the cgroup's CPU time are
   watched; killing the sandbox's pid-namespace init ends every process of the job at
   once (a daemon, a fork bomb), also when the program exits normally.
5. The cgroup must then be empty (or, without cgroups, no process of the uid may
   remain) before the uid goes back to the pool. A job whose processes survive is a
   SANDBOX_ERROR and its uid stays locked.

"Did the program start?" comes from bwrap (its exit-code report on the status fd is
written only after its exec succeeded), never from anything the program can print, so a
program cannot make its own failure look like SANDBOX_ERROR (which trainers discard).
The interpreter is found on the host's /usr before the run for the same reason.

C and C++ are compiled in a sandbox of their own (own wall clock, more memory); the
binary comes back through a memory file and is placed in the run sandbox. Nothing of a
job touches the host file system, so there is nothing to follow or clean up there.

Without root there is no uid switch (jobs run under the server's uid, namespaced to
65534) and no cgroup: only rlimits, which count per process, so a job may use
max_processes times its memory and CPU limits, and RLIMIT_AS (memory limit plus the
language's reserve, see `Language.address_space_reserve`) stands in for the memory
limit. `describe()` says which mode is active.

What this does NOT defend against: kernel vulnerabilities reachable through allowed
syscalls or user namespaces (it is not a VM; use the container pool or gVisor for
hostile-at-scale workloads); timing and cache side channels; reading world-readable
files under /usr; CPU and memory-bandwidth contention with other jobs (no CPU quota);
a job spending its whole wall time (it is killed then). In rlimit mode, tmpfs contents
are not counted as the job's memory, and CPU time and peak memory are sampled, not exact.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import shutil
import signal
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace

from referee.sandboxes import cgroups, seccomp
from referee.sandboxes.languages import LANGUAGES, Language, Toolchain, probe
from referee.sandboxes.runner import (
    KillReason,
    Outcome,
    Pumped,
    compile_failure,
    compile_limits,
    memfd,
    parent_dirs,
    prlimit_argv,
    pump,
    read_all,
    reap,
    result,
    rlimits,
    spawn,
    split_exit_code,
    split_status,
    work_dir_files,
)
from referee.sandboxes.types import ExecResult, Job, Limits, Usage, Verdict
from referee.sandboxes.uids import DEFAULT_UID_BASE, UidPool, kill_uid

MiB = 1024 * 1024
SANDBOX_UID = 65534
WORK = "/work"
SANDBOX_PATH = "/usr/local/bin:/usr/bin:/bin"
ETC_FILES = ("/etc/ld.so.cache", "/etc/ld.so.conf", "/etc/ld.so.conf.d", "/etc/alternatives", "/etc/localtime")
"""The /etc entries a toolchain needs (the loader cache, Debian's alternatives symlinks
for cc/c++, the time zone). Not /etc/shadow, /etc/ssl, or anything with secrets."""
PASSWD = b"root:x:0:0:root:/root:/usr/sbin/nologin\nsandbox:x:65534:65534:sandbox:/work:/usr/sbin/nologin\n"
GROUP = b"root:x:0:\nsandbox:x:65534:\n"
PROBE_LIMITS = Limits(wall_time_s=20.0, cpu_time_s=20.0, memory_bytes=1024 * MiB, output_bytes=64 * 1024,
                      max_processes=64, file_size_bytes=MiB, open_files=256)


@dataclass
class _Step:
    """One bwrap invocation."""

    argv: list[str]
    files: list[tuple[str, bytes, int]]
    """(path under the work dir, content, mode)."""
    limits: Limits
    language: Language | None = None
    stdin: bytes = b""
    pass_fds: list[int] = field(default_factory=list)
    """Extra fds the program gets (the compile step's binary memory file)."""


class BwrapBackend:
    """Runs jobs under bubblewrap; see the module docstring for the isolation."""

    name = "bwrap"

    def __init__(self, *, bwrap: str = "bwrap", use_cgroups: bool | None = None, uid_base: int = DEFAULT_UID_BASE,
                 uid_count: int = 256, lock_dir: str = "/run/referee-sandbox",
                 compile_wall_time_s: float = 30.0, compile_memory_bytes: int = 1024 * MiB) -> None:
        """`use_cgroups`: None uses them where the host allows, True requires them,
        False forces rlimit mode. Raises RuntimeError if bwrap, user namespaces or
        libseccomp are not usable here (with the reason)."""
        path = shutil.which(bwrap)
        if path is None:
            raise RuntimeError(f"{bwrap} not found on PATH; install the bubblewrap package")
        self._bwrap = path
        prlimit = shutil.which("prlimit", path=SANDBOX_PATH)
        if prlimit is None:
            raise RuntimeError("prlimit not found under /usr; install the util-linux package")
        self._prlimit = prlimit
        try:
            self._seccomp = seccomp.build_filter()
        except seccomp.SeccompUnavailable as e:
            raise RuntimeError(str(e)) from None
        self._root = os.geteuid() == 0
        self._uids = UidPool(uid_base, uid_count, os.path.join(lock_dir, "uids")) if self._root else None
        setpriv = shutil.which("setpriv", path=SANDBOX_PATH)
        if self._root and setpriv is None:
            raise RuntimeError("setpriv not found under /usr; install the util-linux package")
        self._setpriv = setpriv or ""
        self._cg = cgroups.detect() if use_cgroups is not False else cgroups.Cgroups("none", "disabled")
        if use_cgroups and self._cg.mode == "none":
            raise RuntimeError(f"cgroups required but unusable: {self._cg.reason}")
        self._compile_wall, self._compile_memory = compile_wall_time_s, compile_memory_bytes
        self._system = _system_binds()
        self._visible = tuple(f"{self._system[i + 1]}/" for i, a in enumerate(self._system) if a == "--ro-bind"
                              and os.path.isdir(self._system[i + 1]))
        self._toolchains: list[Toolchain] | None = None
        self._probe_lock = threading.Lock()
        check = self._execute(_Step(["true"], [], PROBE_LIMITS))
        if check.verdict is not Verdict.OK:
            raise RuntimeError(f"bwrap cannot create a sandbox here: {check.message} {check.stderr.decode(errors='replace')}")

    # --- the SandboxBackend protocol --------------------------------------------

    def run(self, job: Job, language: Language) -> ExecResult:
        """Compiles (if the language does) and runs `job`. Raises ValueError for files
        that collide (the service checks this before a job takes a slot)."""
        files = work_dir_files(job, language)
        if language.compile:
            art = memfd(b"", "referee-binary")
            try:
                script = f'"$@" || exit; exec cat -- "$0" > /proc/self/fd/{art}'
                limits = compile_limits(job.limits, wall_time_s=self._compile_wall, memory_bytes=self._compile_memory)
                compiled = self._execute(_Step(["/bin/sh", "-c", script, language.artifact or "main",
                                                *language.compile], files, limits, language, pass_fds=[art]))
                if compiled.verdict is not Verdict.OK:
                    return compile_failure(compiled)
                files.append((language.artifact or "main", read_all(art), 0o755))
            finally:
                os.close(art)
        argv = language.run_argv(job.limits.memory_bytes, job.args)
        return self._execute(_Step(argv, files, job.limits, language, job.stdin))

    def close(self) -> None:
        self._cg.close()

    def describe(self) -> dict[str, object]:
        return {
            "backend": self.name,
            "bwrap": self._bwrap,
            "namespaces": ["user", "pid", "net", "ipc", "uts", "cgroup", "mount"],
            "host_uid": (f"per job from {self._uids.base} ({self._uids.count})" if self._uids
                         else f"{os.geteuid()} (not root: no uid switch)"),
            "sandbox_uid": SANDBOX_UID,
            "capabilities": "none (CapEff 0, no_new_privs)",
            "seccomp": seccomp.describe(self._seccomp),
            "limits": (f"cgroup {self._cg.mode} (memory, pids, cpu accounting) + rlimits"
                       if self._cg.mode != "none" else f"rlimits only ({self._cg.reason})"),
            "filesystem": "ro /usr + loader files; tmpfs /work, /tmp, /dev/shm capped",
        }

    def languages(self) -> list[Toolchain]:
        """Each language's version as seen inside the sandbox (probed once)."""
        with self._probe_lock:
            if self._toolchains is None:
                self._toolchains = [probe(lang, run=self._version) for lang in LANGUAGES]
            return list(self._toolchains)

    def _version(self, argv: Sequence[str]) -> tuple[bool, str]:
        r = self._execute(_Step(list(argv), [], PROBE_LIMITS))
        lines = (r.stdout or r.stderr).decode(errors="replace").strip().splitlines()
        if r.verdict is Verdict.OK:
            return True, lines[0] if lines else "ok"
        return False, f"{' '.join(argv)} failed in the sandbox: {r.message}"

    # --- one sandbox ------------------------------------------------------------

    def _execute(self, step: _Step) -> ExecResult:
        # The program is exec'd by prlimit, whose failure to exec would look like the
        # program's own exit 127 (a program could print the same): so the command is
        # found first, on the host's /usr, which is exactly what the sandbox sees.
        program = step.argv[0]
        if "/" not in program:
            found = shutil.which(program, path=SANDBOX_PATH)
            if found is None or not os.path.realpath(found).startswith(self._visible):
                return ExecResult(Verdict.SANDBOX_ERROR, message=f"{program} is not installed in the sandbox "
                                                                 f"(searched {SANDBOX_PATH}, under {self._visible})")
            step = replace(step, argv=[found, *step.argv[1:]])
        lease = self._uids.acquire() if self._uids else None
        uid = lease[0] if lease else None
        job_cg: cgroups.JobCgroup | None = None
        clean = True
        try:
            if self._cg.mode != "none":
                try:
                    job_cg = self._cg.create(step.limits.memory_bytes, step.limits.max_processes + 1)
                except OSError as e:
                    return ExecResult(Verdict.SANDBOX_ERROR, message=f"cannot create the job cgroup: {e}")
            res = self._sandbox(step, uid, job_cg)
        finally:
            # Nothing of the job may outlive it: the cgroup must empty, or the uid must
            # own no live process (without either, the pid namespace's end is the proof).
            if job_cg is not None:
                clean = job_cg.destroy()
            elif uid is not None:
                clean = kill_uid(uid)
            if lease is not None and clean:
                os.close(lease[1])  # a uid with survivors stays locked until the server exits
        if not clean:
            return replace(res, verdict=Verdict.SANDBOX_ERROR, message="processes of the job survived its end")
        return res

    def _sandbox(self, step: _Step, uid: int | None, job_cg: cgroups.JobCgroup | None) -> ExecResult:
        fds = _Fds()
        proc = None
        try:
            status_r, status_w = (fds.add(x) for x in os.pipe2(os.O_CLOEXEC))
            block_r, block_w = (fds.add(x) for x in os.pipe2(os.O_CLOEXEC))
            argv, child_fds = self._argv(step, fds.add, status_w, block_r)
            if uid is not None:  # bwrap starts as the job's uid, with no groups and no capabilities
                argv = [self._setpriv, f"--reuid={uid}", f"--regid={uid}", "--clear-groups", "--", *argv]
            try:
                sp = spawn(argv, env={"PATH": SANDBOX_PATH}, pass_fds=child_fds + step.pass_fds, cwd="/")
            except OSError as e:
                return ExecResult(Verdict.SANDBOX_ERROR, message=f"cannot start bwrap: {e}")
            proc = sp.proc
            for child in child_fds:  # bwrap has its copies; EOF on status_r needs ours closed
                fds.close(child)
            try:
                inner, inner_start, inner_fd = self._release(step, status_r, block_w, job_cg)
            except (OSError, ValueError) as e:
                return self._setup_failed(step, sp, e)
            fds.add(inner_fd)
            sampler = _Sampler(inner, inner_start, job_cg, step.limits)
            return self._watch(step, sp, inner_fd, sampler, status_r, job_cg, fds)
        finally:
            if proc is not None:
                _kill_and_reap(proc)
            fds.close_all()

    def _release(self, step: _Step, status_r: int, block_w: int,
                 job_cg: cgroups.JobCgroup | None) -> tuple[int, str, int]:
        """Waits for bwrap to stop before the program, puts the sandbox's init in the job
        cgroup, and lets it go. Returns the init's pid, start time and a pidfd of it."""
        header = _read_json_line(status_r, timeout_s=10.0)
        inner = header.get("child-pid") if header else None
        if not isinstance(inner, int):
            raise ProcessLookupError("bwrap stopped before reporting the sandbox pid")
        inner_fd = os.pidfd_open(inner)
        try:
            start = _stat(inner)[19]  # it waits on --block-fd, so this is still our init
            if job_cg is not None:
                job_cg.add(inner)
            os.write(block_w, b"go")
        except BaseException:
            os.close(inner_fd)
            raise
        return inner, start, inner_fd

    def _setup_failed(self, step: _Step, sp, error: Exception) -> ExecResult:
        _kill_and_reap(sp.proc)
        pumped = pump(stdin=b"", stdin_fd=sp.stdin, stdout_fd=sp.stdout, stderr_fd=sp.stderr,
                      cap=step.limits.output_bytes, deadline=time.monotonic() + 2, kill=lambda _: None)
        said = pumped.stderr.decode(errors="replace").strip()[-500:]
        return ExecResult(Verdict.SANDBOX_ERROR, stderr=pumped.stderr, message=f"sandbox setup failed: {error}; {said}")

    def _watch(self, step: _Step, sp, inner_fd: int, sampler: _Sampler, status_r: int,
               job_cg: cgroups.JobCgroup | None, fds: _Fds) -> ExecResult:
        proc = sp.proc

        def kill_sandbox() -> None:
            with contextlib.suppress(ProcessLookupError):
                signal.pidfd_send_signal(inner_fd, signal.SIGKILL)  # pid-ns init: takes everything with it

        def kill(_: KillReason) -> None:
            kill_sandbox()
            _kill_group(proc.pid)

        started = time.monotonic()
        pumped = pump(stdin=step.stdin, stdin_fd=sp.stdin, stdout_fd=sp.stdout, stderr_fd=sp.stderr,
                      cap=step.limits.output_bytes, deadline=started + step.limits.wall_time_s, kill=kill,
                      exit_fd=fds.add(os.pidfd_open(proc.pid)), on_exit=lambda: (sampler.final(), kill_sandbox()),
                      tick=sampler.tick)
        status, usage = reap(proc)
        wall = time.monotonic() - started
        kill_sandbox()
        gone = _wait_readable(inner_fd, 5.0)
        with contextlib.suppress(ChildProcessError):  # we inherit the orphaned init only as pid 1 / subreaper
            os.waitid(os.P_PIDFD, inner_fd, os.WEXITED | os.WNOHANG)
        return self._finish(step, pumped, status, usage, wall, _read_rest(status_r), sampler, job_cg, gone)

    def _finish(self, step: _Step, pumped: Pumped, status: int, usage: object, wall: float, rest: list[dict],
                sampler: _Sampler, job_cg: cgroups.JobCgroup | None, gone: bool) -> ExecResult:
        reported = [d["exit-code"] for d in rest if isinstance(d.get("exit-code"), int)]
        code, sig = split_status(status)
        if code is not None:
            code, sig = split_exit_code(code)
        stats = job_cg.stats() if job_cg is not None else None
        cpu = sampler.cpu_time_s(usage)
        peak = stats.peak_memory_bytes if stats else sampler.peak_memory_bytes()
        outcome = Outcome(step.limits, started=bool(reported), exit_code=code, signal=sig,
                          kill_reason=pumped.kill_reason, oom_killed=bool(stats and stats.oom_killed),
                          stderr=pumped.stderr, setup_error=pumped.stderr.decode(errors="replace")[-500:])
        res = result(outcome, pumped, Usage(wall, cpu, peak))
        if not gone:
            return replace(res, verdict=Verdict.SANDBOX_ERROR, message="the sandbox's processes outlived the job")
        return res

    def _argv(self, step: _Step, fd, status_w: int, block_r: int) -> tuple[list[str], list[int]]:
        lim = step.limits
        staged = sum(len(c) + 4096 for _, c, _ in step.files)
        env = {"PATH": SANDBOX_PATH, "HOME": WORK, "LANG": "C.UTF-8", "TMPDIR": "/tmp",
               **dict(step.language.env if step.language else ())}
        seccomp_fd = fd(memfd(self._seccomp.bpf, "referee-seccomp"))
        child_fds = [status_w, block_r, seccomp_fd]
        a = [self._bwrap, "--unshare-user", "--disable-userns", "--unshare-pid", "--unshare-net", "--unshare-ipc",
             "--unshare-uts", "--unshare-cgroup-try", "--hostname", "sandbox", "--die-with-parent", "--new-session",
             "--cap-drop", "ALL", "--uid", str(SANDBOX_UID), "--gid", str(SANDBOX_UID), "--clearenv"]
        for k, v in env.items():
            a += ["--setenv", k, v]
        a += self._system
        for path, content in (("/etc/passwd", PASSWD), ("/etc/group", GROUP)):
            data = fd(memfd(content))
            child_fds.append(data)
            a += ["--perms", "0644", "--file", str(data), path]
        a += ["--proc", "/proc", "--dev", "/dev",
              "--size", str(lim.file_size_bytes), "--tmpfs", "/dev/shm",
              "--size", str(lim.file_size_bytes), "--tmpfs", "/tmp",
              "--size", str(lim.file_size_bytes + staged), "--perms", "0755", "--tmpfs", WORK]
        for d in parent_dirs(p for p, _, _ in step.files):
            a += ["--dir", f"{WORK}/{d}"]
        for path, content, mode in step.files:
            data = fd(memfd(content))
            child_fds.append(data)
            a += ["--perms", f"{mode:04o}", "--file", str(data), f"{WORK}/{path}"]
        a += ["--remount-ro", "/dev", "--remount-ro", "/", "--chdir", WORK,
              "--seccomp", str(seccomp_fd), "--json-status-fd", str(status_w), "--block-fd", str(block_r),
              "--", *prlimit_argv(self._prlimit, self._rlimits(step)), *step.argv]
        return a, child_fds

    def _rlimits(self, step: _Step) -> dict[int, tuple[int, int]]:
        """rlimits of the program: RLIMIT_AS only when no cgroup bounds memory (plus the
        language's address-space reserve); two extra processes for bwrap's monitor and
        the sandbox's init, which RLIMIT_NPROC may count."""
        reserve = step.language.address_space_reserve if step.language else 0
        address_space = None if self._cg.mode != "none" else step.limits.memory_bytes + reserve
        return rlimits(step.limits, address_space=address_space, extra_processes=2)


class _Sampler:
    """CPU time and peak memory of a job, and the cgroup CPU-time check.

    With a cgroup both are exact (the cgroup's counters). Without one, wait4's rusage
    will not do (bwrap's monitor exits without reaping the sandbox's init, so the
    program's times never reach it, and its maxrss is that of the forked server): CPU
    time is read from the init's /proc/PID/stat (its reaped children's times) when the
    program ends, and peak memory is the largest VmHWM sampled every tick (0 for a
    program that ends before the first tick)."""

    def __init__(self, init_pid: int, init_start: str, job_cg: cgroups.JobCgroup | None, limits: Limits) -> None:
        self._init, self._cg, self._limits = init_pid, job_cg, limits
        self._cpu = 0.0
        self._hwm = 0
        self._tick_hz = os.sysconf("SC_CLK_TCK")
        self._init_start = init_start  # with the pid, tells the init apart from a later process

    def tick(self) -> KillReason | None:
        if self._cg is not None:
            cpu = self._cg.cpu_time_s()
            if cpu is not None and cpu > self._limits.cpu_time_s:
                return KillReason.CPU_TIME
            return None
        self._sample()
        return None

    def _sample(self) -> None:
        with contextlib.suppress(OSError, ValueError, IndexError):
            with open(f"/proc/{self._init}/task/{self._init}/children") as f:
                kids = f.read().split()
            for pid in kids:
                fields = _stat(int(pid))
                self._cpu = max(self._cpu, sum(int(x) for x in fields[11:15]) / self._tick_hz)
                with open(f"/proc/{pid}/status") as f:
                    for line in f:
                        if line.startswith("VmHWM:"):
                            self._hwm = max(self._hwm, int(line.split()[1]) * 1024)

    def final(self) -> None:
        """Called when the program has ended and the init has reaped it."""
        if self._cg is None:
            with contextlib.suppress(OSError, ValueError, IndexError):
                fields = _stat(self._init)
                if fields[19] == self._init_start:
                    self._cpu = max(self._cpu, sum(int(x) for x in fields[11:15]) / self._tick_hz)

    def cpu_time_s(self, usage) -> float:
        if self._cg is not None and (cpu := self._cg.cpu_time_s()) is not None:
            return cpu
        return max(self._cpu, usage.ru_utime + usage.ru_stime)

    def peak_memory_bytes(self) -> int:
        return self._hwm


def _system_binds() -> list[str]:
    """bwrap arguments for the read-only system view: /usr, the merged-/usr symlinks
    (or the real directories on a split-/usr host), and ETC_FILES that exist."""
    out = ["--ro-bind", "/usr", "/usr"]
    for top in ("/bin", "/sbin", "/lib", "/lib64", "/lib32", "/libx32"):
        if os.path.islink(top):
            out += ["--symlink", os.readlink(top), top]
        elif os.path.isdir(top):
            out += ["--ro-bind", top, top]
    for path in ETC_FILES:
        if os.path.lexists(path):
            out += ["--ro-bind", path, path]
    return out


def _read_json_line(fd: int, timeout_s: float) -> dict | None:
    """The first JSON line bwrap writes to --json-status-fd, or None on EOF/timeout."""
    buf = b""
    deadline = time.monotonic() + timeout_s
    while b"\n" not in buf:
        left = deadline - time.monotonic()
        if left <= 0 or not select.select([fd], [], [], left)[0]:
            return None
        chunk = os.read(fd, 4096)
        if not chunk:
            break
        buf += chunk
    line, _, rest = buf.partition(b"\n")
    try:
        return json.loads(line)
    except ValueError:
        return None


def _read_rest(fd: int) -> list[dict]:
    """The remaining JSON lines (bwrap has exited, so this ends)."""
    os.set_blocking(fd, False)
    data = b""
    with contextlib.suppress(BlockingIOError):
        while chunk := os.read(fd, 4096):
            data += chunk
    out = []
    for line in data.splitlines():
        with contextlib.suppress(ValueError):
            out.append(json.loads(line))
    return out


def _wait_readable(fd: int, timeout_s: float) -> bool:
    """A pidfd turns readable when its process has exited (for a pid-namespace init:
    once every process of the namespace is gone)."""
    return bool(select.select([fd], [], [], timeout_s)[0])


def _kill_group(pgid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)


def _kill_and_reap(proc) -> None:
    if proc.returncode is None:
        _kill_group(proc.pid)
        reap(proc)





def _stat(pid: int) -> list[str]:
    """Fields of /proc/PID/stat from the state on (index 0 is field 3 of proc(5))."""
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()


class _Fds:
    """The fds one job owns, each closed exactly once: closing one twice could close
    another job's fd that was given the same number in between."""

    def __init__(self) -> None:
        self._open: set[int] = set()

    def add(self, fd: int) -> int:
        self._open.add(fd)
        return fd

    def close(self, fd: int) -> None:
        if fd in self._open:
            self._open.remove(fd)
            os.close(fd)

    def close_all(self) -> None:
        for fd in list(self._open):
            self.close(fd)
