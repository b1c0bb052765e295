"""What a sandbox job is and what comes back (mirrors `proto/referee/v1/sandbox.proto`).

Limits are checked against the server's ceilings before anything runs, so a request
that asks for too much is refused with a message naming the field, never silently
clamped.
"""

from __future__ import annotations

import enum
import posixpath
from dataclasses import dataclass, field, fields, replace
from typing import TYPE_CHECKING, Protocol, runtime_checkable

if TYPE_CHECKING:
    from referee.sandboxes.languages import Language

MiB = 1024 * 1024


class Verdict(str, enum.Enum):
    OK = "OK"
    RUNTIME_ERROR = "RUNTIME_ERROR"
    TIME_LIMIT = "TIME_LIMIT"
    MEMORY_LIMIT = "MEMORY_LIMIT"
    OUTPUT_LIMIT = "OUTPUT_LIMIT"
    COMPILE_ERROR = "COMPILE_ERROR"
    SANDBOX_ERROR = "SANDBOX_ERROR"
    """The sandbox failed: never the program's fault, so never a reward signal."""

    def __str__(self) -> str:
        return self.value


@dataclass(frozen=True)
class Limits:
    """Per-job limits. In a request, 0 means "the server's default" for a field."""

    wall_time_s: float = 10.0
    """Wall-clock limit for the run (and, separately, for compilation); the whole process
    tree is killed when it passes."""
    cpu_time_s: float = 10.0
    """CPU seconds (RLIMIT_CPU) summed over the job's processes' own clocks."""
    memory_bytes: int = 512 * MiB
    """Memory for the job: a cgroup limit where the host allows, RLIMIT_AS otherwise."""
    output_bytes: int = 1 * MiB
    """Cap on stdout and on stderr each; the program is killed when it writes more."""
    max_processes: int = 64
    """Processes and threads the job may have at once (cgroup pids or RLIMIT_NPROC)."""
    file_size_bytes: int = 16 * MiB
    """Largest file the program may write (RLIMIT_FSIZE); also the work dir's tmpfs size."""
    open_files: int = 64
    """Open file descriptors (RLIMIT_NOFILE)."""

    def merged_with(self, request: Limits, ceiling: Limits) -> Limits:
        """This (the server default) overridden by the non-zero fields of `request`,
        each checked against `ceiling`. Raises ValueError naming the field."""
        out = {}
        for f in fields(self):
            asked = getattr(request, f.name)
            if asked < 0:
                raise ValueError(f"limits.{f.name} must be >= 0 (0 = server default), got {asked}")
            value = asked if asked else getattr(self, f.name)
            top = getattr(ceiling, f.name)
            if value > top:
                raise ValueError(f"limits.{f.name} = {value} is over this server's ceiling of {top}")
            out[f.name] = value
        return replace(self, **out)


@dataclass(frozen=True)
class File:
    """A file placed in the work dir before the program runs."""

    path: str
    content: bytes
    executable: bool = False

    def __post_init__(self) -> None:
        check_relative_path(self.path)


def check_relative_path(path: str) -> str:
    """A job-provided file name must stay inside the work dir: relative, no `..`, no
    NUL, no leading dash. Symlinks cannot be created through `File`, so a plain
    normalised relative path is enough."""
    if not path or "\x00" in path or path.startswith("/") or "\\" in path:
        raise ValueError(f"file path {path!r} must be a non-empty relative path")
    norm = posixpath.normpath(path)
    if norm in (".", "") or norm.startswith("..") or "/../" in f"/{norm}/" or norm != path.rstrip("/"):
        raise ValueError(f"file path {path!r} must not contain '..', '.' or empty parts")
    if any(part.startswith("-") for part in norm.split("/")):
        raise ValueError(f"file path {path!r} has a part starting with '-'")
    if len(norm) > 255:
        raise ValueError(f"file path {path!r} is longer than 255 characters")
    return norm


@dataclass(frozen=True)
class Job:
    language: str
    code: str
    stdin: bytes = b""
    files: tuple[File, ...] = ()
    args: tuple[str, ...] = ()
    limits: Limits = field(default_factory=Limits)


@dataclass(frozen=True)
class Usage:
    wall_time_s: float = 0.0
    cpu_time_s: float = 0.0
    peak_memory_bytes: int = 0


@dataclass(frozen=True)
class ExecResult:
    verdict: Verdict
    exit_code: int | None = None
    signal: int | None = None
    stdout: bytes = b""
    stderr: bytes = b""
    usage: Usage = field(default_factory=Usage)
    message: str = ""
    stdout_truncated: bool = False
    stderr_truncated: bool = False


class SandboxBackend(Protocol):
    """Runs one job in isolation. `run` blocks; the service calls it from a thread per
    slot, so implementations must be safe to call from several threads at once."""

    name: str

    def run(self, job: Job, language: Language) -> ExecResult: ...

    def close(self) -> None: ...


class Prepared(Protocol):
    """A job set up ahead of its slot. `run` runs it (once) and blocks like
    `SandboxBackend.run`; `cancel` gives it up unrun and frees what it holds (safe to
    call more than once, and after `run`)."""

    def run(self) -> ExecResult: ...

    def cancel(self) -> None: ...


@runtime_checkable
class PreparingBackend(SandboxBackend, Protocol):
    """A backend that can set a job up while it waits for a slot, so the slot is busy
    only from the program's start: the service prepares up to one waiting job per slot.
    `prepare` raises what `run` would raise for the same job."""

    def prepare(self, job: Job, language: Language) -> Prepared: ...


@dataclass(frozen=True)
class Deferred:
    """A `Prepared` for which nothing was set up ahead: `run` is the backend's whole run."""

    backend: SandboxBackend
    job: Job
    language: Language

    def run(self) -> ExecResult:
        return self.backend.run(self.job, self.language)

    def cancel(self) -> None:
        pass


@dataclass(frozen=True)
class Settled:
    """A `Prepared` whose outcome was known while preparing (its setup failed)."""

    result: ExecResult

    def run(self) -> ExecResult:
        return self.result

    def cancel(self) -> None:
        pass
