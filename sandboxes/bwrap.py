"""The bwrap backend: each job in a fresh bubblewrap sandbox (DESIGN.md section 6).

How one job runs:

1. A host uid of its own is taken from a pool (when the server is root): bwrap is exec'd
   already switched to it (by coreutils' chroot --userspec with numeric ids and a
   no-op chroot to "/", or util-linux's setpriv where that does not work), with no
   supplementary groups and no capabilities, so the job owns no host file and
   RLIMIT_NPROC counts only its own processes. Lock files (flock) hand out the uids,
   so concurrent jobs, and two servers on one host, never share one.
2. bwrap makes new user, pid, net, ipc, uts and cgroup namespaces; inside, the program
   runs as uid/gid 65534 with every capability dropped, no_new_privs, and the seccomp
   filter of `seccomp.py`. It sees /usr (and the merged-/usr symlinks), the loader
   cache and Debian's alternatives symlinks from /etc, /etc/localtime, a synthetic
   /etc/passwd, its own /proc, a minimal read-only /dev (one shared by all sandboxes
   where the server may make it, `devnodes`; else bwrap's own), and three size-capped
   tmpfs: /work (its files, the cwd), /tmp and /dev/shm. Everything else is read-only.
   The environment holds PATH, HOME, LANG, TMPDIR and the language's own.
3. bwrap is started before its job arrives (a few wait, `_Warm`; a job that finds none
   starts its own the same way): as the job's uid, with every option that does not
   depend on the job (namespaces, capability drop, system view, seccomp filter) on its
   command line, waiting to read the rest (environment, tmpfs sizes, the work dir's
   files) from a pipe (`--args`). While it waits, the server moves it into a job
   cgroup (memory without swap, pids, CPU accounting), so the sandbox it then creates
   is born in that cgroup, and the wait for the move (an RCU grace period, often
   milliseconds) is not the job's. bwrap reports the sandbox's pid
   (`--json-status-fd`), builds the sandbox (namespaces, mounts, files) and stops again
   before running anything (`--block-fd`) until the server lets it go. A job waiting
   for a slot gets this far ahead of it (`prepare`, called by the service), so the
   slot, and the job's wall clock, start at the go. Inside, the sandbox's shell sets
   the rlimits (CPU, file size, open files, processes, no core; address space only
   without a cgroup) with its `ulimit` builtin (util-linux's prlimit where ulimit
   cannot say a value exactly, or where a start-up probe finds the shell's ulimit
   differs) and execs the program, which bwrap has already placed under its namespaces,
   capability drop and seccomp filter.
4. stdout/stderr are drained and capped, the wall clock and the cgroup's CPU time are
   watched; killing the sandbox's pid-namespace init ends every process of the job at
   once (a daemon, a fork bomb), also when the program exits normally. The server is a
   child subreaper, so that init, orphaned when bwrap's monitor exits first, is reaped
   by the job that ran it.
5. The cgroup must then be empty (or, without cgroups, no process of the uid may
   remain) before the uid goes back to the pool; an emptied cgroup is kept for a later
   job (see `cgroups.CgroupPool`). A job whose processes survive is a SANDBOX_ERROR and
   its uid stays locked.

"Did the program start?" comes from bwrap (its exit-code report on the status fd is
written only after its exec of the shell succeeded), never from anything the program can
print, so a program cannot make its own failure look like SANDBOX_ERROR (which trainers
discard). bwrap's monitor process, which writes that report, shares the job's cgroups
(it started the sandbox from inside them), so the OOM killer may pick it: an OOM kill in
the job's cgroup is then the job's MEMORY_LIMIT, report or not. The interpreter is found
on the host's /usr before the run, so the shell's exec of it cannot fail for want of it.

C and C++ are compiled in a sandbox of their own (own wall clock, more memory); the
binary comes back through a memory file and is placed in the run sandbox. Nothing of a
job touches the host file system, so there is nothing to follow or clean up there.

Without root there is no uid switch (jobs run under the server's uid, namespaced to
65534) and no cgroup: only rlimits, which count per process, so a job may use
max_processes times its memory and CPU limits, and RLIMIT_AS (memory limit plus the
language's reserve, see `Language.address_space_reserve`) stands in for the memory
limit. `describe()` says which mode is active.

Where the kernel refuses the sandbox a /proc of its own (inside a Docker container whose
/proc has masked paths, e.g. one started without `systempaths=unconfined`, which Debian's
docker-compose 1.29 cannot ask for), jobs get no /proc at all rather than a view of the
host's: the start-up probe notices and `describe()` says so. Python, C, C++, JavaScript
and bash run without one; a program that reads /proc/self/... gets ENOENT.

What this does NOT defend against: kernel vulnerabilities reachable through allowed
syscalls or user namespaces (it is not a VM; use the container pool or gVisor for
hostile-at-scale workloads); timing and cache side channels; reading world-readable
files under /usr; CPU and memory-bandwidth contention with other jobs (no CPU quota);
a job spending its whole wall time (it is killed then). bwrap's monitor counts as one of
the job's processes in the pids cgroup (the limit is raised by one for it), its memory
counts against the job's limit, and what it uses while the job runs is in the job's
reported CPU time and peak memory (on cgroup v2, so is its start-up). In rlimit mode, tmpfs
contents are not counted as the job's memory, and CPU time and peak memory are sampled,
not exact.
"""

from __future__ import annotations

import collections
import contextlib
import json
import logging
import os
import resource
import select
import shlex
import shutil
import signal
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace

from referee.sandboxes import cgroups, devnodes, seccomp
from referee.sandboxes.languages import LANGUAGES, Language, Toolchain, probe
from referee.sandboxes.runner import (
    KillReason,
    Outcome,
    Pumped,
    Spawned,
    become_subreaper,
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
from referee.sandboxes.types import (
    Deferred,
    ExecResult,
    Job,
    Limits,
    Prepared,
    Settled,
    Usage,
    Verdict,
)
from referee.sandboxes.uids import DEFAULT_UID_BASE, UidPool, kill_uid

log = logging.getLogger(__name__)
MiB = 1024 * 1024
SANDBOX_UID = 65534
WORK = "/work"
SANDBOX_PATH = "/usr/local/bin:/usr/bin:/bin"
ETC_FILES = ("/etc/ld.so.cache", "/etc/alternatives", "/etc/localtime")
"""The /etc entries a toolchain needs (the loader cache, Debian's alternatives symlinks
for cc/c++, the time zone). Not /etc/shadow, /etc/ssl, or anything with secrets; not
ld.so.conf either (only ldconfig reads it). A symlink into /usr (the usual
/etc/localtime) is made as a symlink, which costs bwrap no mount."""
EXEC_VAR = "REFEREE_EXEC"
TRAMPOLINE = f'c=${EXEC_VAR}; unset {EXEC_VAR}; eval "$c"'
"""What a bwrap started ahead of its job runs: its command is fixed when it starts, so
the job's comes in the environment (the rlimits, then `exec` of the program, every word
shell-quoted) and is removed from it before the program runs."""
MAX_EXEC_VAR_BYTES = 120 * 1024
"""Longest command passed in the environment (the kernel takes 128 KiB per string)."""
ULIMIT_FLAGS = {resource.RLIMIT_CPU: ("t", 1), resource.RLIMIT_FSIZE: ("f", 512), resource.RLIMIT_NOFILE: ("n", 1),
                resource.RLIMIT_NPROC: ("p", 1), resource.RLIMIT_CORE: ("c", 512), resource.RLIMIT_AS: ("v", 1024)}
"""The sandbox shell's `ulimit` flag and unit for each rlimit (dash's; `_check_ulimit`
proves them at start-up, else prlimit(1) sets the limits)."""
PROC_LIMITS = {resource.RLIMIT_CPU: "Max cpu time", resource.RLIMIT_FSIZE: "Max file size",
               resource.RLIMIT_NOFILE: "Max open files", resource.RLIMIT_NPROC: "Max processes",
               resource.RLIMIT_CORE: "Max core file size", resource.RLIMIT_AS: "Max address space"}
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


class _LaunchError(Exception):
    """bwrap could not be started for a job (the job's SANDBOX_ERROR message)."""


@dataclass
class _Launch:
    """A bwrap started for one job, blocked reading its arguments (`--args`): already
    running as the job's uid and inside the job's cgroup, so everything it starts is
    born there. Our fds are in `fds`; the fd numbers bwrap will be told about are the
    same in its process (passed with pass_fds)."""

    sp: Spawned
    fds: _Fds
    args_w: int
    status_r: int
    block_w: int
    status_w: int
    """This and the next four: fd numbers in bwrap only (ours are closed)."""
    block_r: int
    seccomp: int
    passwd: int
    group: int
    files: list[int]
    """Empty memory files, one per work-dir file: filled just before the arguments go."""
    lease: tuple[int, int] | None
    cg: cgroups.JobCgroup | None
    command: list[str] | None = None
    """The command given on bwrap's command line, or None for the shell that runs the
    job's from the environment (`TRAMPOLINE`)."""
    stdio_open: bool = True
    """sp.stdin/stdout/stderr are still ours to close (`pump` closes them once used)."""


@dataclass(eq=False)
class _Staged:
    """A job's sandbox built up to its program's start (`BwrapBackend._stage`): `run`
    starts the program and watches it; `cancel` ends the sandbox unrun. Either, once."""

    backend: BwrapBackend
    step: _Step
    launch: _Launch
    inner: tuple[int, str, int] | None = None
    """The sandbox init's pid, start time and pidfd, once bwrap has reported it."""
    error: Exception | None = None
    """What stopped the setup: running it then gives the SANDBOX_ERROR."""
    running: bool = False
    ended: bool = False

    def run(self) -> ExecResult:
        return self.backend._run_staged(self)

    def cancel(self) -> None:
        self.backend._end_staged(self)


class BwrapBackend:
    """Runs jobs under bubblewrap; see the module docstring for the isolation."""

    name = "bwrap"

    def __init__(self, *, bwrap: str = "bwrap", use_cgroups: bool | None = None, uid_base: int = DEFAULT_UID_BASE,
                 uid_count: int = 256, lock_dir: str = "/run/referee-sandbox",
                 compile_wall_time_s: float = 30.0, compile_memory_bytes: int = 1024 * MiB,
                 warm: int | None = None, proc: bool = True) -> None:
        """`use_cgroups`: None uses them where the host allows, True requires them,
        False forces rlimit mode. `proc`: give each sandbox a /proc of its own where the
        kernel allows (False: never; jobs then have none). `warm`: how many bwraps to keep started ahead of their
        jobs (None: one per CPU, the service's default slot count, plus two, so that the
        next job finds one while the last one's replacement is being started; at most a
        quarter of the uid pool, as each holds a uid; 0: none).
        Raises RuntimeError if bwrap, user namespaces or libseccomp are not usable here
        (with the reason)."""
        path = shutil.which(bwrap)
        if path is None:
            raise RuntimeError(f"{bwrap} not found on PATH; install the bubblewrap package")
        self._bwrap = path
        prlimit = shutil.which("prlimit", path=SANDBOX_PATH)
        if prlimit is None:
            raise RuntimeError("prlimit not found under /usr; install the util-linux package")
        self._prlimit = prlimit
        sh = shutil.which("sh", path=SANDBOX_PATH)
        if sh is None:
            raise RuntimeError("sh not found under /usr")
        self._sh = sh
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
        self._chroot = shutil.which("chroot", path="/usr/sbin:/usr/bin:/sbin:/bin") if self._root else None
        self._cg = cgroups.detect() if use_cgroups is not False else cgroups.Cgroups("none", "disabled")
        if use_cgroups and self._cg.mode == "none":
            raise RuntimeError(f"cgroups required but unusable: {self._cg.reason}")
        self._cgpool = cgroups.CgroupPool(self._cg) if self._cg.mode != "none" else None
        # each sandbox's init outlives bwrap's monitor; adopted, it is reaped when its
        # job ends, so its cgroup is empty and reusable at once (see `become_subreaper`)
        self._reaps_inits = become_subreaper()
        self._adopted: list[tuple[int, float]] = []
        """Pidfds of inits to reap when they are ours, with a give-up time."""
        self._adopted_lock = threading.Lock()
        self._compile_wall, self._compile_memory = compile_wall_time_s, compile_memory_bytes
        self._ulimit = False
        self._system = _system_binds()
        self._visible = tuple(f"{self._system[i + 1]}/" for i, a in enumerate(self._system) if a == "--ro-bind"
                              and os.path.isdir(self._system[i + 1]))
        self._toolchains: list[Toolchain] | None = None
        self._found: dict[str, tuple[str, tuple[int, int]]] = {}
        self._probe_lock = threading.Lock()
        self._proc = proc
        self._bash = shutil.which("bash", path=SANDBOX_PATH)
        self._staged: set[_Staged] = set()
        """Sandboxes staged and not yet ended (`close` ends those that never ran)."""
        self._staged_lock = threading.Lock()
        self._warm: _Warm | None = None
        self._dev: str | None = None
        """The shared read-only /dev bound into each sandbox (`devnodes`), or None for
        bwrap's own `--dev`."""
        if self._root:
            self._dev, why = devnodes.shared_dev(os.path.join(lock_dir, "dev"))
            if self._dev is None:
                log.info("each sandbox gets a /dev of its own (bwrap --dev): %s", why)
        check = self._execute(_Step(["true"], [], PROBE_LIMITS))
        if check.verdict is not Verdict.OK and b"Can't mount proc" in check.stderr:
            log.warning("the kernel refuses the sandbox its own /proc here (masked /proc paths, as in a "
                        "container started without systempaths=unconfined): jobs run with no /proc")
            self._proc = False
            check = self._execute(_Step(["true"], [], PROBE_LIMITS))
        if check.verdict is not Verdict.OK and self._dev:
            log.warning("bwrap cannot bind the shared /dev %s (%s); using its --dev", self._dev, check.message)
            self._dev = None
            check = self._execute(_Step(["true"], [], PROBE_LIMITS))
        if check.verdict is not Verdict.OK and self._chroot:
            log.info("chroot cannot switch the uid here (%s); using setpriv", check.message)
            self._chroot = None
            check = self._execute(_Step(["true"], [], PROBE_LIMITS))
        if check.verdict is not Verdict.OK:
            self.close()
            raise RuntimeError(f"bwrap cannot create a sandbox here: {check.message} {check.stderr.decode(errors='replace')}")
        self._ulimit = self._check_ulimit()
        size = min((os.cpu_count() or 2) + 2, uid_count // 4) if warm is None else warm
        self._warm = _Warm(self._launch, self._discard, size) if size > 0 else None

    # --- the SandboxBackend protocol --------------------------------------------

    def run(self, job: Job, language: Language) -> ExecResult:
        """Compiles (if the language does) and runs `job`. Raises ValueError for files
        that collide (the service checks this before a job takes a slot)."""
        files = work_dir_files(job, language)
        if any("\0" in a for a in job.args):
            raise ValueError("a job argument contains a NUL byte")
        if language.compile:
            art = memfd(b"", "referee-binary")
            try:
                limits = compile_limits(job.limits, wall_time_s=self._compile_wall, memory_bytes=self._compile_memory)
                compiled = self._execute(_Step([*self._copy_out(art), language.artifact or "main",
                                                *language.compile], files, limits, language, pass_fds=[art]))
                if compiled.verdict is not Verdict.OK:
                    return compile_failure(compiled)
                files.append((language.artifact or "main", read_all(art), 0o755))
            finally:
                os.close(art)
        argv = language.run_argv(job.limits.memory_bytes, job.args)
        return self._execute(_Step(argv, files, job.limits, language, job.stdin), warm=True)

    def prepare(self, job: Job, language: Language) -> Prepared:
        """Sets `job` up while it waits for a slot (the service calls this): for a
        language without a compile step, its sandbox is built and stopped just before
        the program (`_stage`), so namespaces, mounts and files cost its slot nothing,
        and the program's wall clock starts with `run()`. A compiled language's job is
        not staged (its compile step is itself a run in a sandbox). Raises ValueError
        as `run` does."""
        if language.compile:
            return Deferred(self, job, language)
        files = work_dir_files(job, language)
        if any("\0" in a for a in job.args):
            raise ValueError("a job argument contains a NUL byte")
        argv = language.run_argv(job.limits.memory_bytes, job.args)
        staged = self._stage(_Step(argv, files, job.limits, language, job.stdin), warm=True)
        return Settled(staged) if isinstance(staged, ExecResult) else staged

    def _copy_out(self, fd: int) -> list[str]:
        """A shell command that runs the compiler ("$@") and, if it succeeds, copies the
        artifact ("$0") into the memory file `fd`: through /proc/self/fd, or, with no
        /proc, a redirection to the fd itself, which needs bash (dash's redirections take
        only fds 0-9)."""
        if self._proc or self._bash is None:
            return ["/bin/sh", "-c", f'"$@" || exit; exec cat -- "$0" > /proc/self/fd/{fd}']
        return [self._bash, "-c", f'"$@" || exit; exec cat -- "$0" >&{fd}']

    def close(self) -> None:
        """Ends the warm bwraps and every staged sandbox that has not run (running
        jobs are the caller's to finish first)."""
        if self._warm is not None:
            self._warm.close()
        with self._staged_lock:
            unrun = [st for st in self._staged if not st.running]
        for staged in unrun:
            self._end_staged(staged)
        if self._cgpool is not None:
            self._cgpool.close()
        self._cg.close()

    def idle(self) -> tuple[list[int], list[str]]:
        """What the backend holds between jobs: the pids of its warm bwraps (each still
        waiting for its job's arguments) and every job cgroup directory it keeps (idle
        ones, empty, and the warm bwraps' ones, holding only them). For leak checks."""
        launches = self._warm.ready() if self._warm is not None else []
        pids = [w.sp.proc.pid for w in launches]
        groups = [c for c in ([w.cg for w in launches] + (self._cgpool.idle() if self._cgpool else [])) if c]
        return pids, [path for c in groups for path in c.paths.values()]

    def describe(self) -> dict[str, object]:
        return {
            "backend": self.name,
            "bwrap": self._bwrap,
            "namespaces": ["user", "pid", "net", "ipc", "uts", "cgroup", "mount"],
            "host_uid": (f"per job from {self._uids.base} ({self._uids.count}), switched by "
                         f"{os.path.basename(self._chroot or self._setpriv)}" if self._uids
                         else f"{os.geteuid()} (not root: no uid switch)"),
            "sandbox_uid": SANDBOX_UID,
            "capabilities": "none (CapEff 0, no_new_privs)",
            "seccomp": seccomp.describe(self._seccomp),
            "limits": (f"cgroup {self._cg.mode} (memory, pids, cpu accounting) + rlimits"
                       if self._cg.mode != "none" else f"rlimits only ({self._cg.reason})"),
            "filesystem": "ro /usr + loader files; tmpfs /work, /tmp, /dev/shm capped",
            "dev": (f"shared read-only {self._dev} (null, zero, full, random, urandom; no tty or pts)" if self._dev
                    else "bwrap --dev, remounted read-only"),
            "proc": ("its own (the job's pid namespace)" if self._proc else
                     "none: the kernel refuses a fresh /proc here (a container's masked /proc paths; "
                     "start it with security_opt systempaths=unconfined for one)"),
            "reaper": ("this process adopts and reaps each sandbox's init (child subreaper)" if self._reaps_inits
                       else "the host's init reaps sandbox inits (no child subreaper)"),
            "warm": (f"up to {self._warm.size} bwraps started ahead of their jobs, each as its job's uid in its "
                     "job's cgroup, waiting for the job's arguments" if self._warm is not None else "none"),
        }

    def languages(self) -> list[Toolchain]:
        """Each language's version as seen inside the sandbox (probed once)."""
        with self._probe_lock:
            if self._toolchains is None:
                self._toolchains = [probe(lang, run=self._version) for lang in LANGUAGES]
            return list(self._toolchains)

    def _check_ulimit(self) -> bool:
        """Whether the sandbox's shell sets rlimits exactly as prlimit would (it saves
        an exec per job): a probe job with odd limits must see exactly its table in
        /proc/self/limits. Any difference, and prlimit(1) is used instead."""
        if not self._proc:
            return False  # the probe reads /proc/self/limits
        self._ulimit = True
        limits = replace(PROBE_LIMITS, cpu_time_s=7.0, file_size_bytes=3 * 512 * 1024, open_files=77,
                         max_processes=55)
        step = _Step(["cat", "/proc/self/limits"], [], limits)
        try:
            r = self._execute(step)
            if r.verdict is not Verdict.OK:
                return False
            seen = {line[:26].strip(): line[26:].split()[:2] for line in r.stdout.decode().splitlines()}
            for res, pair in self._rlimits(step).items():
                want = ["unlimited" if v == resource.RLIM_INFINITY else str(v) for v in pair]
                if seen.get(PROC_LIMITS[res]) != want:
                    log.info("the sandbox shell's ulimit differs from prlimit (%s: %s, not %s); using prlimit",
                             PROC_LIMITS[res], seen.get(PROC_LIMITS[res]), want)
                    return False
            return True
        finally:
            self._ulimit = False

    def _version(self, argv: Sequence[str]) -> tuple[bool, str]:
        r = self._execute(_Step(list(argv), [], PROBE_LIMITS))
        lines = (r.stdout or r.stderr).decode(errors="replace").strip().splitlines()
        if r.verdict is Verdict.OK:
            return True, lines[0] if lines else "ok"
        return False, f"{' '.join(argv)} failed in the sandbox: {r.message}"

    # --- one sandbox ------------------------------------------------------------

    def _execute(self, step: _Step, *, warm: bool = False) -> ExecResult:
        staged = self._stage(step, warm=warm)
        return staged if isinstance(staged, ExecResult) else self._run_staged(staged)

    def _stage(self, step: _Step, *, warm: bool = False) -> _Staged | ExecResult:
        """Builds `step`'s sandbox up to its program's start: bwrap gets its arguments,
        makes the namespaces, mounts and files, and waits on its block fd just before
        the seccomp filter and the exec (bubblewrap 0.8.0, bubblewrap.c: the
        `opt_block_fd` read follows the pivot_root and the privilege drop). Returns the
        staged sandbox (`_run_staged` starts it), or the SANDBOX_ERROR that prevents it."""
        # The program is exec'd by the sandbox's shell (or prlimit), whose failure to
        # exec would look like the program's own exit 127 (a program could print the
        # same): so the command is found first, on the host's /usr, which is exactly
        # what the sandbox sees.
        program = step.argv[0]
        if "/" not in program:
            found = self._which(program)
            if found is None:
                return ExecResult(Verdict.SANDBOX_ERROR, message=f"{program} is not installed in the sandbox "
                                                                 f"(searched {SANDBOX_PATH}, under {self._visible})")
            step = replace(step, argv=[found, *step.argv[1:]])
        command = self._command(step)
        # one environment string may hold 128 KiB (MAX_ARG_STRLEN): a longer command is
        # given to bwrap as its own arguments instead (so no warm bwrap for it)
        big = len(command.encode(errors="surrogateescape")) > MAX_EXEC_VAR_BYTES
        warm = warm and self._warm is not None and not step.pass_fds and not big
        launch = self._take_warm(step) if warm else None
        if warm:
            self._warm.want(len(step.files), step.limits)  # its replacement starts now
        if launch is None:
            explicit = [*prlimit_argv(self._prlimit, self._rlimits(step)), *step.argv] if big else None
            try:
                launch = self._launch(len(step.files), step.limits, step.pass_fds, explicit)
            except _LaunchError as e:
                return ExecResult(Verdict.SANDBOX_ERROR, message=str(e))
        staged = _Staged(self, step, launch)
        with self._staged_lock:
            self._staged.add(staged)
        fds = launch.fds
        try:
            if launch.cg is not None:
                launch.cg.begin()
            for fd, (_, content, _) in zip(launch.files, step.files, strict=True):
                _write_at_start(fd, content)
                fds.close(fd)  # bwrap reads its own copy, from the start
            args = "\0".join(self._args(step, launch, command)) + "\0"
            _write_all(launch.args_w, args.encode(errors="surrogateescape"))
            fds.close(launch.args_w)
            staged.inner = self._stopped(launch)
        except (OSError, ValueError) as e:
            staged.error = e
        except BaseException:
            self._end_staged(staged)
            raise
        return staged

    def _run_staged(self, staged: _Staged) -> ExecResult:
        """Starts a staged sandbox's program and watches it to its end; then nothing of
        the job may be left (else SANDBOX_ERROR)."""
        step, launch = staged.step, staged.launch
        with self._staged_lock:
            if staged.ended or staged.running:
                raise RuntimeError("a staged sandbox runs once, and not after it was cancelled")
            staged.running = True
        try:
            if staged.inner is not None and staged.error is None:
                try:
                    os.write(launch.block_w, b"go")
                    launch.fds.add(staged.inner[2])  # closed with the job's other fds
                except OSError as e:
                    staged.error = e
                    self._adopt(staged.inner[2])
            launch.stdio_open = False  # both paths below pump them, which closes them
            if staged.error is not None or staged.inner is None:
                res = self._setup_failed(step, launch.sp, staged.error)
            else:
                inner, inner_start, inner_fd = staged.inner
                sampler = _Sampler(inner, inner_start, launch.cg, step.limits)
                res = self._watch(step, launch.sp, inner_fd, sampler, launch.status_r, launch.cg, launch.fds)
        finally:
            clean = self._end_staged(staged)
        if not clean:
            return replace(res, verdict=Verdict.SANDBOX_ERROR, message="processes of the job survived its end")
        return res

    def _end_staged(self, staged: _Staged) -> bool:
        """Ends what is left of a staged sandbox, run or not, and gives its uid and
        cgroup back, once. True when nothing of it survived."""
        with self._staged_lock:
            if staged.ended:
                return True
            staged.ended = True
            self._staged.discard(staged)
        if staged.inner is not None and not staged.running:  # its init waits for a go that never comes
            self._adopt(staged.inner[2])
        clean = self._end(staged.launch)
        if self._adopted:
            self._reap_adopted()
        return clean

    def _which(self, program: str) -> str | None:
        """`program` found on SANDBOX_PATH, under what the sandbox sees. Remembered, and
        checked again with one stat each time (the file it resolves to must be the same):
        a toolchain removed or repointed meanwhile is looked up afresh."""
        known = self._found.get(program)
        if known is not None:
            with contextlib.suppress(OSError):
                st = os.stat(known[0])
                if (st.st_dev, st.st_ino) == known[1]:
                    return known[0]
        found = shutil.which(program, path=SANDBOX_PATH)
        if found is None or not os.path.realpath(found).startswith(self._visible):
            return None
        st = os.stat(found)
        self._found[program] = (found, (st.st_dev, st.st_ino))
        return found

    # --- starting bwrap -----------------------------------------------------------

    def _launch(self, n_files: int, limits: Limits, pass_fds: Sequence[int] = (),
                command: list[str] | None = None) -> _Launch:
        """Starts bwrap for a job with `n_files` work-dir files (see `_Launch`): a uid
        from the pool, a job cgroup, then bwrap (exec'd as that uid, `_as_uid`), which
        waits for its arguments on a pipe while it is moved into the cgroup. Raises
        _LaunchError (or RuntimeError when every uid is in use)."""
        lease = self._uids.acquire() if self._uids else None
        job_cg: cgroups.JobCgroup | None = None
        fds = _Fds()
        sp: Spawned | None = None
        try:
            if self._cgpool is not None:
                try:
                    job_cg = self._cgpool.take(limits.memory_bytes, limits.max_processes + 2)
                except OSError as e:
                    raise _LaunchError(f"cannot create the job cgroup: {e}") from None
            args_r, args_w = (fds.add(x) for x in os.pipe2(os.O_CLOEXEC))
            status_r, status_w = (fds.add(x) for x in os.pipe2(os.O_CLOEXEC))
            block_r, block_w = (fds.add(x) for x in os.pipe2(os.O_CLOEXEC))
            seccomp_fd = fds.add(memfd(self._seccomp.bpf, "referee-seccomp"))
            passwd, group = fds.add(memfd(PASSWD)), fds.add(memfd(GROUP))
            files = [fds.add(memfd(b"", "referee-file")) for _ in range(n_files)]
            argv = [self._bwrap, *self._fixed_args(args_r, status_w, block_r, seccomp_fd, passwd, group, command)]
            if lease is not None:  # bwrap starts as the job's uid, with no groups and no capabilities
                argv = [*self._as_uid(lease[0]), *argv]
            child = [args_r, status_w, block_r, seccomp_fd, passwd, group]
            try:
                sp = spawn(argv, env={"PATH": SANDBOX_PATH}, pass_fds=[*child, *files, *pass_fds], cwd="/")
            except OSError as e:
                raise _LaunchError(f"cannot start bwrap: {e}") from None
            for fd in child:  # bwrap has its copies (EOF on status_r and args_r needs ours closed)
                fds.close(fd)
            if job_cg is not None:
                # bwrap starts nothing before it has read its arguments: from here on,
                # every process of the job is born inside the job cgroup
                try:
                    job_cg.add(sp.proc.pid)
                except OSError as e:
                    raise _LaunchError(f"cannot move bwrap into the job cgroup: {e}") from None
            return _Launch(sp, fds, args_w, status_r, block_w, status_w, block_r, seccomp_fd, passwd, group,
                           files, lease, job_cg, command)
        except BaseException:
            if sp is not None:
                _kill_and_reap(sp.proc)
                for fd in (sp.stdin, sp.stdout, sp.stderr):
                    os.close(fd)
            fds.close_all()
            self._release_resources(lease, job_cg)
            raise

    def _as_uid(self, uid: int) -> list[str]:
        """argv prefix that execs the rest as `uid`:`uid` with no supplementary groups
        (leaving root drops every capability). coreutils' chroot does it with numeric
        ids ("+N") and a chroot to "/", which changes nothing, at about half the CPU of
        util-linux's setpriv, which looks every id up in the user database first."""
        if self._chroot:
            return [self._chroot, f"--userspec=+{uid}:+{uid}", "--groups=", "--skip-chdir", "/"]
        return [self._setpriv, f"--reuid={uid}", f"--regid={uid}", "--clear-groups", "--"]

    def _take_warm(self, step: _Step) -> _Launch | None:
        """A warm bwrap for `step` with the step's cgroup limits in place, or None."""
        assert self._warm is not None
        while (launch := self._warm.take(len(step.files))) is not None:
            try:
                if os.waitid(os.P_PID, launch.sp.proc.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is None:
                    if launch.cg is not None:
                        launch.cg.set_limits(step.limits.memory_bytes, step.limits.max_processes + 2)
                    return launch
            except OSError:
                pass
            self._discard(launch)  # died while waiting, or its cgroup refused the limits
        return None

    def _discard(self, launch: _Launch) -> None:
        """Ends a launch that never got its job."""
        if not self._end(launch):
            log.warning("a warm bwrap left processes behind; its uid stays locked")

    def _end(self, launch: _Launch) -> bool:
        """Kills and reaps a launch's bwrap, closes its fds, and retires it (`_retire`)."""
        _kill_and_reap(launch.sp.proc)
        if launch.stdio_open:
            for fd in (launch.sp.stdin, launch.sp.stdout, launch.sp.stderr):
                os.close(fd)
            launch.stdio_open = False
        launch.fds.close_all()
        return self._retire(launch)

    def _retire(self, launch: _Launch) -> bool:
        """After a launch's bwrap was killed and reaped: nothing of it may outlive it.
        True when nothing did (the cgroup emptied, or the uid owns no live process;
        without either, the pid namespace's end is the proof)."""
        return self._release_resources(launch.lease, launch.cg)

    def _release_resources(self, lease: tuple[int, int] | None, job_cg: cgroups.JobCgroup | None) -> bool:
        clean = True
        if job_cg is not None:
            assert self._cgpool is not None
            clean = self._cgpool.give(job_cg)
        elif lease is not None:
            clean = kill_uid(lease[0])
        if lease is not None and clean:
            os.close(lease[1])  # a uid with survivors stays locked until the server exits
        return clean

    # --- one sandbox ------------------------------------------------------------

    def _stopped(self, launch: _Launch) -> tuple[int, str, int]:
        """The sandbox's init as bwrap reports it (its pid, start time and a pidfd of
        it): from here bwrap builds the sandbox, then waits on its block fd."""
        header = _read_json_line(launch.status_r, timeout_s=10.0)
        inner = header.get("child-pid") if header else None
        if not isinstance(inner, int):
            raise ProcessLookupError("bwrap stopped before reporting the sandbox pid")
        inner_fd = os.pidfd_open(inner)
        try:
            # it waits on --block-fd, so this is still our init (its start time tells it
            # apart from a later process with the pid; only needed without a cgroup)
            start = _stat(inner)[19] if launch.cg is None else ""
        except BaseException:
            self._adopt(inner_fd)
            raise
        return inner, start, inner_fd

    def _adopt(self, inner_fd: int) -> None:
        """Kills a sandbox init that will not run its program, and takes its pidfd to
        reap it once it is ours (`_reap_adopted`: when bwrap's monitor is gone)."""
        with contextlib.suppress(ProcessLookupError):
            signal.pidfd_send_signal(inner_fd, signal.SIGKILL)
        with self._adopted_lock:
            self._adopted.append((inner_fd, time.monotonic() + 30.0))

    def _reap_adopted(self) -> None:
        """Reaps the inits of sandboxes that never ran their program (setup failed, or
        cancelled while staged): they are ours once bwrap's monitor is gone. One not
        ours within 30 s is left."""
        with self._adopted_lock:
            pending, self._adopted = self._adopted, []
        keep = []
        for fd, until in pending:
            try:
                done = os.waitid(os.P_PIDFD, fd, os.WEXITED | os.WNOHANG) is not None
            except ChildProcessError:  # not (yet) adopted
                done = time.monotonic() > until
            if done:
                os.close(fd)
            else:
                keep.append((fd, until))
        with self._adopted_lock:
            self._adopted.extend(keep)

    def _setup_failed(self, step: _Step, sp, error: Exception | None) -> ExecResult:
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
        with contextlib.suppress(ChildProcessError):  # adopted from the monitor, which exited first
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
        oom = bool(stats and stats.oom_killed)
        # bwrap's monitor, which reports that the program started, shares the job's
        # memory cgroup (it starts the sandbox from inside it), so the OOM killer may
        # pick it: an OOM kill in the job's cgroup is the job's memory, report or not.
        outcome = Outcome(step.limits, started=bool(reported) or oom, exit_code=code, signal=sig,
                          kill_reason=pumped.kill_reason, oom_killed=oom,
                          stderr=pumped.stderr, setup_error=pumped.stderr.decode(errors="replace")[-500:])
        res = result(outcome, pumped, Usage(wall, cpu, peak))
        if not gone:
            return replace(res, verdict=Verdict.SANDBOX_ERROR, message="the sandbox's processes outlived the job")
        return res

    def _fixed_args(self, args_fd: int, status_w: int, block_r: int, seccomp: int, passwd: int,
                    group: int, command: list[str] | None = None) -> list[str]:
        """bwrap's arguments that do not depend on the job, given when it starts: every
        namespace, the capability drop, the system view, the seccomp filter. The job's
        own (`_args`) are read from `args_fd`, in the middle, so the setup runs in this
        order; a bwrap that never gets them (its pipe closed empty) still runs confined."""
        # No --disable-userns: the seccomp filter, without which this backend refuses to
        # start, already denies every call that makes a namespace (unshare, setns, clone
        # with CLONE_NEW* flags, clone3), and the nested user namespace bwrap would add for
        # that sysctl cost ~0.7 ms of CPU per job (bench/sandbox.py: 0.70x -> 0.72x bare).
        a = ["--unshare-user", "--unshare-pid", "--unshare-net", "--unshare-ipc",
             "--unshare-uts", "--unshare-cgroup-try", "--hostname", "sandbox", "--die-with-parent", "--new-session",
             "--cap-drop", "ALL", "--uid", str(SANDBOX_UID), "--gid", str(SANDBOX_UID), "--clearenv", *self._system]
        for path, data in (("/etc/passwd", passwd), ("/etc/group", group)):
            a += ["--perms", "0644", "--file", str(data), path]
        dev = ["--dev-bind", self._dev, "/dev"] if self._dev else ["--dev", "/dev"]
        return [*a, *(["--proc", "/proc"] if self._proc else []), *dev,
                "--args", str(args_fd),
                *([] if self._dev else ["--remount-ro", "/dev"]), "--remount-ro", "/", "--chdir", WORK,
                "--seccomp", str(seccomp), "--json-status-fd", str(status_w), "--block-fd", str(block_r),
                "--", *(command or [self._sh, "-c", TRAMPOLINE])]

    def _args(self, step: _Step, launch: _Launch, command: str) -> list[str]:
        """The job's part of bwrap's arguments (read by the waiting bwrap from its pipe):
        environment, tmpfs sizes, the work dir's files, the command."""
        lim = step.limits
        staged = sum(len(c) + 4096 for _, c, _ in step.files)
        env = {"PATH": SANDBOX_PATH, "HOME": WORK, "LANG": "C.UTF-8", "TMPDIR": "/tmp",
               **dict(step.language.env if step.language else ())}
        if launch.command is None:
            env[EXEC_VAR] = command
        a = []
        for k, v in env.items():
            a += ["--setenv", k, v]
        a += ["--size", str(lim.file_size_bytes), "--tmpfs", "/dev/shm",
              "--size", str(lim.file_size_bytes), "--tmpfs", "/tmp",
              "--size", str(lim.file_size_bytes + staged), "--perms", "0755", "--tmpfs", WORK]
        for d in parent_dirs(p for p, _, _ in step.files):
            a += ["--dir", f"{WORK}/{d}"]
        for (path, _, mode), data in zip(step.files, launch.files, strict=True):
            a += ["--perms", f"{mode:04o}", "--file", str(data), f"{WORK}/{path}"]
        return a

    def _command(self, step: _Step) -> str:
        """The shell command that sets the rlimits and execs the program: `ulimit`
        builtins where they can say the exact values, else prlimit(1) (one exec more)."""
        table = self._rlimits(step)
        exact = self._ulimit and all(v != resource.RLIM_INFINITY and v % ULIMIT_FLAGS[res][1] == 0
                                     for res, pair in table.items() for v in pair)
        if not exact:
            return "exec " + " ".join(shlex.quote(x) for x in [*prlimit_argv(self._prlimit, table), *step.argv])
        # soft first: the new soft limit is under the inherited hard one, the new hard one over it
        sets = [f"ulimit -{h} -{ULIMIT_FLAGS[res][0]} {v // ULIMIT_FLAGS[res][1]}"
                for res, (soft, hard) in table.items() for h, v in (("S", soft), ("H", hard))]
        return " && ".join([*sets, "exec " + " ".join(shlex.quote(x) for x in step.argv)])

    def _rlimits(self, step: _Step) -> dict[int, tuple[int, int]]:
        """rlimits of the program: RLIMIT_AS only when no cgroup bounds memory (plus the
        language's address-space reserve); two extra processes for bwrap's monitor and
        the sandbox's init, which RLIMIT_NPROC may count."""
        reserve = step.language.address_space_reserve if step.language else 0
        address_space = None if self._cg.mode != "none" else step.limits.memory_bytes + reserve
        return rlimits(step.limits, address_space=address_space, extra_processes=2)


class _Warm:
    """bwraps started ahead of their jobs, so a job does not wait for the uid switch and bwrap
    to exec, nor for its cgroup: moving a process into a cgroup waits for an RCU grace
    period whenever no other move happened just before (milliseconds, while the job's
    slot sits idle). One thread starts them; a job takes one with as many work-dir files
    as it has (each file is a memory file bwrap must inherit when it starts), and when it
    ends the pool is topped up to `size` again with ones like it (the oldest of another
    kind are ended to make room). A job that finds none starts its own bwrap the same
    way, inline."""

    def __init__(self, launch: Callable[[int, Limits], _Launch], discard: Callable[[_Launch], None],
                 size: int) -> None:
        self.size = size
        self._launch, self._discard = launch, discard
        self._ready: collections.deque[tuple[int, _Launch]] = collections.deque()
        self._wanted: collections.deque[tuple[int, Limits]] = collections.deque()
        self._busy_files: collections.Counter[int] = collections.Counter()
        self._closed = False
        self._cv = threading.Condition()
        self._thread = threading.Thread(target=self._loop, name="bwrap-warm", daemon=True)
        self._thread.start()

    def take(self, n_files: int) -> _Launch | None:
        with self._cv:
            for item in self._ready:
                if item[0] == n_files:
                    self._ready.remove(item)
                    return item[1]
        return None

    def want(self, n_files: int, limits: Limits) -> None:
        """Asks for warm bwraps for jobs like one that just ended: as many as bring the
        pool back to `size` (jobs queue up behind each other, so the next one starts
        before this one's replacement is ready), or one if that would be none and none
        of this kind is left (the oldest of another kind then makes room)."""
        with self._cv:
            if self._closed:
                return
            same = (sum(1 for n, _ in self._ready if n == n_files) + sum(1 for n, _ in self._wanted if n == n_files)
                    + self._busy_files[n_files])
            add = self.size - (len(self._ready) + len(self._wanted) + sum(self._busy_files.values()))
            if add <= 0 and same == 0:
                add = 1
            for _ in range(add):
                self._wanted.append((n_files, limits))
            self._cv.notify()

    def ready(self, settle_s: float = 10.0) -> list[_Launch]:
        """The waiting bwraps, once none is being started (for at most `settle_s`)."""
        with self._cv:
            self._cv.wait_for(lambda: not self._wanted and not +self._busy_files, timeout=settle_s)
            return [launch for _, launch in self._ready]

    def _loop(self) -> None:
        while True:
            with self._cv:
                while not self._wanted and not self._closed:
                    self._cv.wait()
                if self._closed:
                    return
                n_files, limits = self._wanted.popleft()
                self._busy_files[n_files] += 1
            try:
                launch = self._launch(n_files, limits)
            except Exception as e:  # noqa: BLE001 - the job that needs one starts its own, and reports why
                log.debug("cannot start a warm bwrap: %s", e)
                launch = None
            evict = []
            with self._cv:
                if launch is not None:
                    self._ready.append((n_files, launch))
                while len(self._ready) > self.size or (self._closed and self._ready):
                    evict.append(self._ready.popleft()[1])
            for old in evict:
                self._discard(old)
            with self._cv:
                self._busy_files[n_files] -= 1
                self._cv.notify_all()

    def close(self) -> None:
        with self._cv:
            self._closed = True
            self._wanted.clear()
            self._cv.notify_all()
        self._thread.join()
        with self._cv:
            left, self._ready = [launch for _, launch in self._ready], collections.deque()
        for launch in left:
            self._discard(launch)


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
        self._tick_hz = _CLK_TCK
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


_CLK_TCK = os.sysconf("SC_CLK_TCK")


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
        if os.path.islink(path) and os.path.realpath(path).startswith("/usr/") and os.path.isfile(path):
            out += ["--symlink", os.path.realpath(path), path]
        elif os.path.lexists(path):
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


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def _write_at_start(fd: int, data: bytes) -> None:
    """Writes `data` at offset 0 of a memory file without moving its offset, which the
    bwrap holding a copy of the fd shares and reads from."""
    view, at = memoryview(data), 0
    while at < len(view):
        at += os.pwrite(fd, view[at:], at)


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
