"""The local backend: NO ISOLATION. For debugging the service on a laptop only.

    !!! UNSAFE: the program runs as the server's own user, on the host, with the
    !!! server's file system, network and processes in reach. Never point it at code
    !!! you did not write. `make_backend("local")` refuses unless allow_unsafe=True
    !!! (the CLI's `--backend local --i-know-local-is-unsafe`).

What it does: a plain subprocess in a fresh temporary directory (removed afterwards;
removal never follows a symlink the program made), a minimal environment (none of the
server's variables), rlimits per process (CPU, address space, file size, open files,
processes, no core dumps) set by util-linux's prlimit, a wall-clock limit that kills the
process group, and the same stdout/stderr caps and verdicts as the bwrap backend.

What it does NOT defend against: reading or writing anything the server's user can
(keys, the source tree, other jobs' directories), network access, signalling or
ptracing the server, processes that leave the process group (setsid) and outlive the
job, RLIMIT_NPROC being ignored for root, memory summed over several processes.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import tempfile
import threading
import time
from collections.abc import Sequence

from referee.sandboxes.languages import LANGUAGES, Language, Toolchain, probe
from referee.sandboxes.runner import (
    Outcome,
    compile_failure,
    compile_limits,
    prlimit_argv,
    pump,
    reap,
    result,
    rlimits,
    spawn,
    split_status,
)
from referee.sandboxes.types import ExecResult, Job, Limits, Usage, Verdict, check_relative_path

MiB = 1024 * 1024
PATH = "/usr/local/bin:/usr/bin:/bin"
PROBE_LIMITS = Limits(wall_time_s=20.0, cpu_time_s=20.0, memory_bytes=1024 * MiB, output_bytes=64 * 1024,
                      max_processes=64, file_size_bytes=MiB, open_files=256)


class LocalBackend:
    """UNSAFE: runs jobs as plain subprocesses; see the module docstring."""

    name = "local"

    def __init__(self, *, compile_wall_time_s: float = 30.0, compile_memory_bytes: int = 1024 * MiB) -> None:
        prlimit = shutil.which("prlimit", path=PATH)
        if prlimit is None:
            raise RuntimeError("prlimit not found; install the util-linux package")
        self._prlimit = prlimit
        self._compile_wall, self._compile_memory = compile_wall_time_s, compile_memory_bytes
        self._toolchains: list[Toolchain] | None = None
        self._lock = threading.Lock()

    def run(self, job: Job, language: Language) -> ExecResult:
        with tempfile.TemporaryDirectory(prefix="referee-local-") as work:
            _write(work, language.source, job.code.encode(), 0o644)
            for f in job.files:
                if f.path in (language.source, language.artifact):
                    raise ValueError(f"file {f.path!r} replaces the program's own")
                _write(work, check_relative_path(f.path), f.content, 0o755 if f.executable else 0o644)
            os.mkdir(os.path.join(work, "tmp"))
            if language.compile:
                limits = compile_limits(job.limits, wall_time_s=self._compile_wall, memory_bytes=self._compile_memory)
                compiled = self._execute(list(language.compile), work, limits, language)
                if compiled.verdict is not Verdict.OK:
                    return compile_failure(compiled)
            argv = language.run_argv(job.limits.memory_bytes, job.args)
            return self._execute(argv, work, job.limits, language, job.stdin)

    def close(self) -> None:
        pass

    def describe(self) -> dict[str, object]:
        return {
            "backend": self.name,
            "isolation": "NONE (unsafe, debugging only): host file system, network and processes are reachable",
            "uid": os.geteuid(),
            "limits": "rlimits per process (prlimit), wall clock kills the process group",
        }

    def languages(self) -> list[Toolchain]:
        with self._lock:
            if self._toolchains is None:
                self._toolchains = [probe(lang, run=self._version) for lang in LANGUAGES]
            return list(self._toolchains)

    def _version(self, argv: Sequence[str]) -> tuple[bool, str]:
        with tempfile.TemporaryDirectory(prefix="referee-local-") as work:
            r = self._execute(list(argv), work, PROBE_LIMITS, None)
        lines = (r.stdout or r.stderr).decode(errors="replace").strip().splitlines()
        if r.verdict is Verdict.OK:
            return True, lines[0] if lines else "ok"
        return False, f"{' '.join(argv)} failed: {r.message}"

    def _execute(self, argv: list[str], work: str, limits: Limits, language: Language | None,
                 stdin: bytes = b"") -> ExecResult:
        env = {"PATH": PATH, "HOME": work, "LANG": "C.UTF-8", "TMPDIR": os.path.join(work, "tmp"),
               **dict(language.env if language else ())}
        if "/" not in argv[0]:  # found first: prlimit's "cannot exec" is text a program could print too
            found = shutil.which(argv[0], path=PATH)
            if found is None:
                return ExecResult(Verdict.SANDBOX_ERROR, message=f"{argv[0]} is not installed (searched {PATH})")
            argv = [found, *argv[1:]]
        address_space = limits.memory_bytes + (language.address_space_reserve if language else 0)
        table = rlimits(limits, address_space=address_space)
        try:
            sp = spawn(prlimit_argv(self._prlimit, table) + argv, env=env, cwd=work)
        except OSError as e:
            return ExecResult(Verdict.SANDBOX_ERROR, message=f"cannot start {argv[0]}: {e}")
        proc = sp.proc

        def kill_group(_: object = None) -> None:  # the leader is unreaped, so its pgid is still ours
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)

        pidfd = os.pidfd_open(proc.pid)
        started = time.monotonic()
        try:
            pumped = pump(stdin=stdin, stdin_fd=sp.stdin, stdout_fd=sp.stdout, stderr_fd=sp.stderr,
                          cap=limits.output_bytes, deadline=started + limits.wall_time_s, kill=kill_group,
                          exit_fd=pidfd, on_exit=kill_group)
        finally:
            os.close(pidfd)
            kill_group()
            status, usage = reap(proc)
        wall = time.monotonic() - started
        code, sig = split_status(status)
        outcome = Outcome(limits, started=True, exit_code=code, signal=sig, kill_reason=pumped.kill_reason,
                          stderr=pumped.stderr)
        return result(outcome, pumped, Usage(wall, usage.ru_utime + usage.ru_stime, usage.ru_maxrss * 1024))


def _write(work: str, path: str, content: bytes, mode: int) -> None:
    """Creates `path` under `work` (which only we have written to so far), never
    following or replacing an existing entry."""
    full = os.path.join(work, path)
    os.makedirs(os.path.dirname(full), exist_ok=True)
    fd = os.open(full, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, mode)
    with open(fd, "wb") as f:
        os.fchmod(fd, mode)  # not narrowed by the umask
        f.write(content)
