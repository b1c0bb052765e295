"""Process-running helpers shared by the sandbox backends. Nothing here isolates.

- `spawn` starts a process with fresh pipes (no inherited fd but the ones named),
- `pump` feeds stdin and drains stdout/stderr concurrently in one selector loop, caps
  each stream, and enforces the wall-clock deadline (and any extra check, like a
  cgroup's CPU time) by calling the backend's `kill`,
- `reap` collects the exit status and rusage; `become_subreaper` makes orphans ours
  to reap,
- `classify` turns what happened into a `Verdict` and a message, the same way for every
  backend (a Docker backend fills an `Outcome` from its container's state),
- `rlimits` is the rlimit table for a job's limits, `prlimit_argv` applies it.
"""

from __future__ import annotations

import contextlib
import ctypes
import enum
import math
import os
import resource
import selectors
import signal
import subprocess
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace

from referee.sandboxes.languages import Language
from referee.sandboxes.types import ExecResult, Job, Limits, Usage, Verdict, check_relative_path

MiB = 1024 * 1024


class KillReason(str, enum.Enum):
    """Why the sandbox killed the job itself."""

    WALL_TIME = "wall_time"
    CPU_TIME = "cpu_time"
    OUTPUT = "output"


# --- starting and reaping --------------------------------------------------------


@dataclass
class Spawned:
    proc: subprocess.Popen
    stdin: int
    stdout: int
    stderr: int
    """Our ends of the three pipes; `pump` closes them."""


def spawn(argv: Sequence[str], *, env: Mapping[str, str], pass_fds: Sequence[int] = (),
          cwd: str | None = None) -> Spawned:
    """Starts `argv` in a new session (so its process group can be killed) with three
    fresh pipes, the environment `env` only, and no fd but 0-2 and `pass_fds` (callers
    create everything close-on-exec, so concurrent spawns never leak into each other).

    Deliberately no preexec_fn, user or group arguments: without them subprocess starts
    the child with vfork, which copies none of the server's page tables and runs no
    atfork handlers (gRPC's crash a child forked while its threads are busy). A uid
    switch is a `setpriv` prefix on argv instead."""
    pipes = [os.pipe2(os.O_CLOEXEC) for _ in range(3)]
    child = (pipes[0][0], pipes[1][1], pipes[2][1])
    # A pipe's inode is ours (mode 0600): a program running as another uid that reopens
    # its stdio by name (`> /dev/stdout`, /proc/self/fd/1) would be refused. Only a
    # process holding the fd, or allowed to look into its holder's /proc/PID/fd, can.
    os.fchmod(child[0], 0o604)
    os.fchmod(child[1], 0o602)
    os.fchmod(child[2], 0o602)
    try:
        proc = subprocess.Popen(list(argv), stdin=child[0], stdout=child[1], stderr=child[2], env=dict(env),
                                pass_fds=tuple(pass_fds), start_new_session=True, cwd=cwd)
    except BaseException:
        for r, w in pipes:
            os.close(r)
            os.close(w)
        raise
    for fd in child:
        os.close(fd)
    return Spawned(proc, pipes[0][1], pipes[1][0], pipes[2][0])


PR_SET_CHILD_SUBREAPER = 36


def become_subreaper() -> bool:
    """Makes this process the reaper of its descendants' orphans (prctl(2)
    PR_SET_CHILD_SUBREAPER) instead of the host's init. True if it now is.

    A sandbox whose supervisor exits before the sandbox's own init (bubblewrap's
    monitor does, as soon as the program has ended) leaves that init to be reaped by
    whoever adopts it; until then it is a zombie, still counted in its job cgroup's
    pids, so the cgroup cannot be reused. Adopted, it is reaped by the job that ran it,
    at once. The caller must reap what it adopts (by pidfd, so that nothing it does not
    know is taken from `subprocess`)."""
    libc = ctypes.CDLL(None, use_errno=True)
    return libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0


def reap(proc: subprocess.Popen) -> tuple[int, resource.struct_rusage]:
    """Waits for `proc` with wait4 (for its rusage, which includes every descendant it
    reaped) and records the status on the Popen, so subprocess never waits on the
    pid again (it may belong to someone else by then)."""
    while True:
        try:
            _, status, usage = os.wait4(proc.pid, 0)
            break
        except ChildProcessError:  # someone reaped it; should not happen
            return 255 << 8, resource.getrusage(resource.RUSAGE_CHILDREN)
        except InterruptedError:
            continue
    proc.returncode = os.waitstatus_to_exitcode(status)
    return status, usage


def split_status(status: int) -> tuple[int | None, int | None]:
    """(exit code, signal) of a wait status."""
    if os.WIFSIGNALED(status):
        return None, os.WTERMSIG(status)
    return os.WEXITSTATUS(status), None


def split_exit_code(code: int) -> tuple[int | None, int | None]:
    """(exit code, signal) from an exit code that follows the shell's 128+N convention
    for "killed by signal N" (bwrap and Docker both report that way). A program that
    exits with such a code on purpose is reported as killed by the signal."""
    if 128 < code <= 128 + 64:
        return None, code - 128
    return code, None


def memfd(data: bytes, name: str = "referee") -> int:
    """A close-on-exec memory file holding `data`, positioned at its start."""
    fd = os.memfd_create(name, os.MFD_CLOEXEC)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        os.lseek(fd, 0, os.SEEK_SET)
    except BaseException:
        os.close(fd)
        raise
    return fd


def read_all(fd: int) -> bytes:
    os.lseek(fd, 0, os.SEEK_SET)
    chunks = []
    while chunk := os.read(fd, 1 << 16):
        chunks.append(chunk)
    return b"".join(chunks)


# --- limits ----------------------------------------------------------------------


def rlimits(limits: Limits, *, address_space: int | None, extra_processes: int = 0) -> dict[int, tuple[int, int]]:
    """The rlimit table for `limits`.

    RLIMIT_CPU is per process (soft = the limit rounded up to a second, SIGXCPU; hard one
    second later, SIGKILL). `address_space` is RLIMIT_AS, or None to leave it unlimited
    when a cgroup bounds memory (rlimits count reserved address space, not memory used,
    which starves runtimes like V8 that reserve much more than they touch).
    `extra_processes` makes room for the sandbox's own processes that count against
    RLIMIT_NPROC (it counts threads too). Values are capped at this process's own hard
    limits, which the job inherits and could not raise."""
    cpu = max(1, math.ceil(limits.cpu_time_s))
    table = {
        resource.RLIMIT_CPU: (cpu, cpu + 1),
        resource.RLIMIT_FSIZE: (limits.file_size_bytes, limits.file_size_bytes),
        resource.RLIMIT_NOFILE: (limits.open_files, limits.open_files),
        resource.RLIMIT_NPROC: (limits.max_processes + extra_processes,) * 2,
        resource.RLIMIT_CORE: (0, 0),
    }
    if address_space is not None:
        table[resource.RLIMIT_AS] = (address_space, address_space)
    for res, (soft, hard) in table.items():
        top = resource.getrlimit(res)[1]
        if top != resource.RLIM_INFINITY:
            table[res] = (min(soft, top), min(hard, top))
    return table


_PRLIMIT_FLAGS = {
    resource.RLIMIT_CPU: "--cpu", resource.RLIMIT_FSIZE: "--fsize", resource.RLIMIT_NOFILE: "--nofile",
    resource.RLIMIT_NPROC: "--nproc", resource.RLIMIT_CORE: "--core", resource.RLIMIT_AS: "--as",
}


def prlimit_argv(prlimit: str, table: Mapping[int, tuple[int, int]]) -> list[str]:
    """argv prefix that runs a command under `table` with util-linux's prlimit(1), which
    lowers its own limits and execs the command: the limits hold from the program's
    first instruction, need no privilege (lowering is always allowed; raising another
    uid's limits would need CAP_SYS_RESOURCE), and need no Python between fork and exec."""
    return [prlimit, *(f"{_PRLIMIT_FLAGS[res]}={soft}:{hard}" for res, (soft, hard) in table.items()), "--"]


# --- stdin / stdout / stderr -----------------------------------------------------


@dataclass
class Pumped:
    stdout: bytes
    stderr: bytes
    stdout_truncated: bool
    stderr_truncated: bool
    kill_reason: KillReason | None
    """The first reason `kill` was called for, if it was."""
    exited: bool
    """`exit_fd` became readable (the process ended) before the loop stopped."""


def pump(*, stdin: bytes, stdin_fd: int, stdout_fd: int, stderr_fd: int, cap: int, deadline: float,
         kill: Callable[[KillReason], None], exit_fd: int | None = None,
         on_exit: Callable[[], None] | None = None, tick: Callable[[], KillReason | None] | None = None,
         tick_s: float = 0.1, drain_s: float = 2.0) -> Pumped:
    """Runs the job's I/O until it is over, in the calling thread (no threads started).

    Writes `stdin` (a program that stops reading just loses the rest), reads stdout and
    stderr until both reach EOF, keeping at most `cap` bytes of each: one byte more and
    `kill(OUTPUT)` is called (the rest is read and dropped so the writer cannot block).
    Past `deadline` (time.monotonic) it calls `kill(WALL_TIME)`; every `tick_s` it calls
    `tick` and kills with the reason it returns. `exit_fd` (a pidfd) tells it the main
    process ended: `on_exit` is called (to end what the process left behind) and the
    streams are drained for at most `drain_s` more, as after a kill. Closes all three fds.
    """
    sel = selectors.DefaultSelector()
    out = {stdout_fd: bytearray(), stderr_fd: bytearray()}
    truncated = {stdout_fd: False, stderr_fd: False}
    for fd in out:
        os.set_blocking(fd, False)
        sel.register(fd, selectors.EVENT_READ)
    pending = memoryview(stdin)
    stdin_open = True
    if pending:
        os.set_blocking(stdin_fd, False)
        sel.register(stdin_fd, selectors.EVENT_WRITE)
    else:
        os.close(stdin_fd)
        stdin_open = False
    if exit_fd is not None:
        sel.register(exit_fd, selectors.EVENT_READ)
    reason: KillReason | None = None
    exited = False
    stop_at: float | None = None
    next_tick = time.monotonic() + tick_s

    def do_kill(why: KillReason) -> None:
        nonlocal reason, stop_at
        if reason is None:
            reason = why
            kill(why)
            stop_at = min(stop_at or math.inf, time.monotonic() + drain_s)

    try:
        while any(fd in out for fd in _registered(sel)) or (exit_fd is not None and not exited):
            now = time.monotonic()
            if now >= deadline:
                do_kill(KillReason.WALL_TIME)
            if tick is not None and now >= next_tick:
                next_tick = now + tick_s
                if reason is None and (why := tick()) is not None:
                    do_kill(why)
            if stop_at is not None and now >= stop_at:
                break
            wake = min(deadline if reason is None else math.inf, next_tick if tick else math.inf,
                       stop_at if stop_at is not None else math.inf)
            for key, _ in sel.select(None if wake == math.inf else max(0.0, wake - now)):
                fd = key.fd
                if fd == exit_fd:
                    sel.unregister(fd)
                    exited = True
                    if on_exit is not None:
                        on_exit()
                    stop_at = min(stop_at or math.inf, time.monotonic() + drain_s)
                elif fd == stdin_fd:
                    try:
                        pending = pending[os.write(fd, pending[:1 << 16]):]
                    except BrokenPipeError:
                        pending = pending[:0]
                    except BlockingIOError:
                        continue
                    if not pending:
                        sel.unregister(fd)
                        os.close(fd)
                        stdin_open = False
                else:
                    try:
                        data = os.read(fd, 1 << 16)
                    except BlockingIOError:
                        continue
                    if not data:
                        sel.unregister(fd)
                        continue
                    buf = out[fd]
                    room = cap - len(buf)
                    if len(data) > room:
                        buf += data[:max(0, room)]
                        truncated[fd] = True
                        do_kill(KillReason.OUTPUT)
                    else:
                        buf += data
    finally:
        sel.close()
        if stdin_open:
            os.close(stdin_fd)
        os.close(stdout_fd)
        os.close(stderr_fd)
    return Pumped(bytes(out[stdout_fd]), bytes(out[stderr_fd]), truncated[stdout_fd], truncated[stderr_fd],
                  reason, exited)


def _registered(sel: selectors.BaseSelector) -> list[int]:
    return [key.fd for key in sel.get_map().values()]


# --- verdicts --------------------------------------------------------------------

MEMORY_PATTERNS = (
    b"MemoryError",  # Python
    b"std::bad_alloc",  # C++
    b"Cannot allocate memory",  # strerror(ENOMEM): C, bash, most tools
    b"JavaScript heap out of memory",  # V8 at its --max-old-space-size
    b"Fatal process out of memory",  # V8 failing a reservation under RLIMIT_AS
    b"Fatal process OOM",
    b"xmalloc: cannot allocate",  # bash
)
"""stderr lines that mean "an allocation failed". Under RLIMIT_AS (no cgroup) a memory
bomb gets ENOMEM instead of an OOM kill, so this is how a MEMORY_LIMIT is recognised;
with a cgroup the OOM kill count is authoritative and this catches runtimes that stop
at their own heap limit (node's --max-old-space-size). A C program that ignores a NULL
from malloc and crashes says nothing: under rlimits alone that is a RUNTIME_ERROR."""

FILE_LIMIT_PATTERNS = (
    b"File too large",  # EFBIG from RLIMIT_FSIZE (Python ignores SIGXFSZ and gets this)
    b"No space left on device",  # ENOSPC: the work dir or /tmp tmpfs is full
    b"Disk quota exceeded",
)
"""stderr lines that mean the program hit the file-size limit or filled its tmpfs: an
OUTPUT_LIMIT like a flood of stdout (the proto's "output over its cap, or the file-size
limit hit"). A program that handles the error and exits 0 is OK."""


@dataclass(frozen=True)
class Outcome:
    """What happened to one run, as a backend saw it."""

    limits: Limits
    started: bool
    """The program was exec'd. False with no kill means the sandbox failed to set up."""
    exit_code: int | None = None
    signal: int | None = None
    kill_reason: KillReason | None = None
    oom_killed: bool = False
    """A cgroup (or the container runtime) reports an OOM kill in the job."""
    stderr: bytes = b""
    setup_error: str = ""


def classify(o: Outcome) -> tuple[Verdict, str]:
    """The verdict and message for `o`; the first matching rule wins:

    1. not started and not killed by us -> SANDBOX_ERROR (our fault, never the program's);
    2. killed for output -> OUTPUT_LIMIT;
    3. an OOM kill of any process of the job -> MEMORY_LIMIT (even if the main program
       then exits 0: the job as a whole went over its memory);
    4. killed for wall or CPU time, or SIGXCPU (RLIMIT_CPU) -> TIME_LIMIT;
    5. SIGXFSZ (RLIMIT_FSIZE) -> OUTPUT_LIMIT;
    6. exit 0 -> OK;
    7. an allocation failure in the tail of stderr -> MEMORY_LIMIT;
    8. EFBIG / ENOSPC in the tail of stderr -> OUTPUT_LIMIT;
    9. anything else -> RUNTIME_ERROR.
    Rules 7 and 8 read stderr, which the program controls: a program can only make its
    own failure look like a different failure that way, never like OK."""
    lim = o.limits
    if not o.started and o.kill_reason is None:
        return Verdict.SANDBOX_ERROR, f"the sandbox failed before the program started: {o.setup_error}".strip()
    if o.kill_reason is KillReason.OUTPUT:
        return Verdict.OUTPUT_LIMIT, f"output over {lim.output_bytes} bytes; the program was killed"
    if o.oom_killed:
        return Verdict.MEMORY_LIMIT, f"memory limit of {lim.memory_bytes // MiB} MiB reached (OOM kill)"
    if o.kill_reason is KillReason.WALL_TIME:
        return Verdict.TIME_LIMIT, f"wall-clock limit of {lim.wall_time_s:g} s reached; the program was killed"
    if o.kill_reason is KillReason.CPU_TIME or o.signal == signal.SIGXCPU:
        return Verdict.TIME_LIMIT, f"CPU-time limit of {lim.cpu_time_s:g} s reached"
    if o.signal == signal.SIGXFSZ:
        return Verdict.OUTPUT_LIMIT, f"file-size limit of {lim.file_size_bytes} bytes reached (SIGXFSZ)"
    if o.exit_code == 0:
        return Verdict.OK, ""
    tail = o.stderr[-4096:]
    if any(p in tail for p in MEMORY_PATTERNS):
        return Verdict.MEMORY_LIMIT, f"memory limit of {lim.memory_bytes // MiB} MiB reached (allocation failed)"
    if any(p in tail for p in FILE_LIMIT_PATTERNS):
        return Verdict.OUTPUT_LIMIT, (f"file-size limit ({lim.file_size_bytes} bytes) or work-dir space "
                                      "exhausted (EFBIG/ENOSPC)")
    if o.signal is not None:
        return Verdict.RUNTIME_ERROR, f"killed by {_signame(o.signal)}"
    return Verdict.RUNTIME_ERROR, f"exit code {o.exit_code}"


def _signame(sig: int) -> str:
    try:
        name = signal.Signals(sig).name
    except ValueError:
        return f"signal {sig}"
    return name + (" (a system call the sandbox forbids)" if sig == signal.SIGSYS else "")


def result(o: Outcome, pumped: Pumped, usage: Usage) -> ExecResult:
    verdict, message = classify(o)
    return ExecResult(verdict, o.exit_code, o.signal, pumped.stdout, pumped.stderr, usage, message,
                      pumped.stdout_truncated, pumped.stderr_truncated)


# --- compilation -----------------------------------------------------------------


def compile_limits(limits: Limits, *, wall_time_s: float, memory_bytes: int) -> Limits:
    """Limits for a compile step: its own wall clock (at least `wall_time_s`), at least
    `memory_bytes`, room for the compiler's helper processes, temporary files and fds."""
    wall = max(wall_time_s, limits.wall_time_s)
    return replace(limits, wall_time_s=wall, cpu_time_s=wall, memory_bytes=max(memory_bytes, limits.memory_bytes),
                   max_processes=max(32, limits.max_processes), file_size_bytes=max(64 * MiB, limits.file_size_bytes),
                   open_files=max(256, limits.open_files))


def compile_failure(compiled: ExecResult) -> ExecResult:
    """The job's result when its compile step did not end OK: COMPILE_ERROR carrying the
    compiler's output, or SANDBOX_ERROR if the sandbox itself failed."""
    if compiled.verdict is Verdict.SANDBOX_ERROR:
        return compiled
    why = {
        Verdict.TIME_LIMIT: "compilation took too long",
        Verdict.MEMORY_LIMIT: "the compiler ran out of memory",
        Verdict.OUTPUT_LIMIT: "the compiler's output or binary was too large",
    }.get(compiled.verdict, "compilation failed")
    detail = compiled.message if compiled.verdict is not Verdict.RUNTIME_ERROR else (
        f"exit code {compiled.exit_code}" if compiled.exit_code is not None else compiled.message)
    first_error = next((line for line in compiled.stderr.decode(errors="replace").splitlines()
                        if "error" in line.lower()), "")
    message = f"{why} ({detail})" + (f": {first_error[:300]}" if first_error else "")
    return replace(compiled, verdict=Verdict.COMPILE_ERROR, message=message)


def sigkill_group(pgid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)


def work_dir_files(job: Job, language: Language) -> list[tuple[str, bytes, int]]:
    """The work dir's contents (path, content, mode): the source, then the job's files.
    ValueError for a path given twice, one that is also a directory of another, or one
    that shadows the source or the compiled binary. Every backend places files by this."""
    files = [(language.source, job.code.encode(), 0o644)]
    reserved = {language.source, *([language.artifact] if language.artifact else [])}
    seen: set[str] = set()
    for f in job.files:
        path = check_relative_path(f.path)
        if path in reserved or path in seen:
            raise ValueError(f"file {path!r} is given twice or replaces the program's own {sorted(reserved)}")
        seen.add(path)
        files.append((path, f.content, 0o755 if f.executable else 0o644))
    dirs = set(parent_dirs(seen))
    if clash := dirs & (seen | reserved):
        raise ValueError(f"file {sorted(clash)[0]!r} is also a directory of another file")
    return files


def parent_dirs(paths: Iterable[str]) -> list[str]:
    """Every directory above the given relative paths, shallowest first."""
    out: set[str] = set()
    for p in paths:
        parts = p.split("/")[:-1]
        out.update("/".join(parts[:i]) for i in range(1, len(parts) + 1))
    return sorted(out, key=lambda d: (d.count("/"), d))
