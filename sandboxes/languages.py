"""The languages a sandbox runs: one small table entry each.

An entry names the source file, an optional compile command and the run command, as
argv lists run inside the work dir. Adding a language is adding an entry here; its
toolchain is probed at startup where the code will run (a backend passes `probe` a
function that runs the version command inside its sandbox) and reported, with its
version or why it is missing, by `ListLanguages` and in the server's start-up lines.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Callable, Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Language:
    name: str
    source: str
    """File name the code is written to, in the work dir."""
    run: tuple[str, ...]
    """argv of the program; the job's `args` are appended."""
    compile: tuple[str, ...] | None = None
    """argv of the compile step, run inside the sandbox before `run`."""
    version: tuple[str, ...] = ()
    """argv printing the toolchain version, for start-up checks."""
    aliases: tuple[str, ...] = ()
    env: tuple[tuple[str, str], ...] = ()
    """Extra environment for compile and run (the sandbox starts from an empty one)."""
    artifact: str | None = None
    """File the compile step leaves in the work dir for the run step (the binary)."""
    heap_args: tuple[str, ...] = ()
    """Run arguments, put right after `run[0]`, that bound the runtime's own heap to the
    job's memory limit; `{mib}` becomes three quarters of it in MiB. A heap limit the
    runtime knows about fails with its own out-of-memory error, which is recognised as
    MEMORY_LIMIT, instead of an opaque kill."""
    address_space_reserve: int = 0
    """Bytes added to RLIMIT_AS when no cgroup bounds memory: V8 reserves about 0.7 GiB
    of address space at start-up whatever the program does, so a plain RLIMIT_AS of the
    memory limit would stop node before it runs."""

    @property
    def toolchain(self) -> str:
        return (self.compile or self.run)[0]

    def run_argv(self, memory_bytes: int, args: Sequence[str] = ()) -> list[str]:
        """The run command for a job: heap flags for `memory_bytes`, then the job's args."""
        mib = max(16, memory_bytes * 3 // 4 // (1024 * 1024))
        heap = [a.format(mib=mib) for a in self.heap_args]
        return [self.run[0], *heap, *self.run[1:], *args]


LANGUAGES: tuple[Language, ...] = (
    Language(
        "python", "main.py", run=("python3", "-I", "main.py"), version=("python3", "--version"),
        aliases=("python3", "py"), env=(("PYTHONDONTWRITEBYTECODE", "1"), ("PYTHONIOENCODING", "utf-8")),
    ),
    Language(
        "c", "main.c", compile=("gcc", "-O2", "-std=gnu17", "-pipe", "-o", "main", "main.c", "-lm"),
        run=("./main",), version=("gcc", "--version"), artifact="main",
    ),
    Language(
        "cpp", "main.cpp", compile=("g++", "-O2", "-std=gnu++17", "-pipe", "-o", "main", "main.cpp"),
        run=("./main",), version=("g++", "--version"), aliases=("c++", "cxx"), artifact="main",
    ),
    Language(
        "javascript", "main.js", run=("node", "main.js"), version=("node", "--version"),
        aliases=("js", "node", "nodejs"), heap_args=("--max-old-space-size={mib}",),
        address_space_reserve=1024 * 1024 * 1024,
    ),
    Language("bash", "main.sh", run=("bash", "main.sh"), version=("bash", "--version"), aliases=("sh", "shell")),
)


def find_language(name: str) -> Language:
    """Looks a language up by name or alias (case-insensitive); ValueError lists the known ones."""
    key = name.strip().lower()
    for lang in LANGUAGES:
        if key == lang.name or key in lang.aliases:
            return lang
    known = ", ".join(lang.name for lang in LANGUAGES)
    raise ValueError(f"unknown language {name!r}; this sandbox knows: {known}")


@dataclass(frozen=True)
class Toolchain:
    language: str
    available: bool
    detail: str
    """The version line, or why the toolchain is unusable."""


VersionRunner = Callable[[Sequence[str]], tuple[bool, str]]
"""Runs a version argv where jobs run; returns (it worked, first output line or why not)."""


def probe(lang: Language, timeout_s: float = 10.0, *, run: VersionRunner | None = None) -> Toolchain:
    """Checks the toolchain of `lang` answers its version command.

    With `run`, the command runs where jobs run (inside the sandbox, with its PATH and
    its view of the file system), which is what a client cares about; without it, on
    the host (found on PATH and answering --version)."""
    if run is not None:
        ok, detail = run(lang.version)
        return Toolchain(lang.name, ok, detail)
    path = shutil.which(lang.toolchain)
    if path is None:
        return Toolchain(lang.name, False, f"{lang.toolchain} not found on PATH")
    if lang.compile and shutil.which(lang.run[0]) is None and not lang.run[0].startswith("./"):
        return Toolchain(lang.name, False, f"{lang.run[0]} not found on PATH")
    try:
        out = subprocess.run(list(lang.version), capture_output=True, text=True, timeout=timeout_s, check=False)
    except (OSError, subprocess.TimeoutExpired) as e:
        return Toolchain(lang.name, False, f"{lang.toolchain} --version failed: {e}")
    first = (out.stdout or out.stderr).strip().splitlines()
    return Toolchain(lang.name, out.returncode == 0, first[0] if first else f"exit {out.returncode}")
