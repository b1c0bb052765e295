"""Fixtures for the sandbox tests: real bwrap sandboxes with small limits.

`backend` is one BwrapBackend for the session (cgroups where the host allows them);
`rlimit_backend` forces the rlimit-only mode. Every test that used a backend is followed
by `host_is_clean`, which fails the test if any process of a sandbox uid, or any job
cgroup, is left on the host, or if the backend can no longer run a trivial job. What the
backend holds between jobs by design (`BwrapBackend.idle`: warm bwraps still waiting for
their job's arguments, and empty job cgroups kept for reuse) is not a leftover, but it
is checked too: a kept cgroup may hold nothing but its warm bwrap.

Tests needing a sandbox are skipped, with bwrap's own reason, where it cannot create
namespaces here (no bubblewrap, user namespaces disabled, no libseccomp).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from dataclasses import replace

import pytest

from referee.sandboxes import bwrap as bwrap_mod
from referee.sandboxes.languages import find_language
from referee.sandboxes.types import ExecResult, File, Job, Limits, Verdict

MiB = 1024 * 1024
SMALL = Limits(wall_time_s=5.0, cpu_time_s=5.0, memory_bytes=128 * MiB, output_bytes=64 * 1024,
               max_processes=32, file_size_bytes=4 * MiB, open_files=64)
"""Attack tests override single fields: wall 1-2 s, memory 64 MiB, ..."""

Run = Callable[..., ExecResult]
TEST_UIDS = {"uid_base": bwrap_mod.DEFAULT_UID_BASE + 50_000, "uid_count": 64}
"""A uid range of these tests' own: other suites (the code verifier's) run default-range
sandboxes at the same time, and the leftover check must not see their live jobs."""


_BACKENDS: list[bwrap_mod.BwrapBackend] = []
"""Every backend of the session: they share TEST_UIDS, so each one's warm bwraps are
seen when another one's uids are checked."""


def _make(**options) -> bwrap_mod.BwrapBackend:
    try:
        b = bwrap_mod.BwrapBackend(**TEST_UIDS, **options)
    except RuntimeError as e:
        pytest.skip(f"bwrap sandbox unusable on this host: {e}")
    _BACKENDS.append(b)
    return b


@pytest.fixture(scope="session")
def backend() -> Iterator[bwrap_mod.BwrapBackend]:
    b = _make(compile_wall_time_s=20.0)
    yield b
    b.close()


@pytest.fixture(scope="session")
def rlimit_backend() -> Iterator[bwrap_mod.BwrapBackend]:
    b = _make(use_cgroups=False, compile_wall_time_s=20.0)
    yield b
    b.close()


def sandbox_processes(b: bwrap_mod.BwrapBackend) -> list[tuple[int, int, str]]:
    """(pid, uid, state) of every live host process owned by one of the backend's job
    uids, but its idle warm bwraps. Zombies are not counted: an orphaned sandbox init is
    reaped by the host's init in its own time, and a zombie runs nothing."""
    pool = b._uids
    if pool is None:
        return []
    warm = {pid for other in _BACKENDS for pid in other.idle()[0]}
    out = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                uid = os.stat(f"/proc/{name}").st_uid
                with open(f"/proc/{name}/stat") as f:
                    state = f.read().rsplit(")", 1)[1].split()[0]
            except OSError:
                continue
            if pool.base <= uid < pool.base + pool.count and state not in ("Z", "X") and int(name) not in warm:
                out.append((int(name), uid, state))
    return out


def job_cgroups(b: bwrap_mod.BwrapBackend) -> list[str]:
    """Job cgroup directories of this process left under the backend's parents, but
    those it keeps between jobs, which must hold no process but their warm bwrap."""
    warm, kept = b.idle()
    for path in kept:
        with open(os.path.join(path, "cgroup.procs")) as f:
            assert set(map(int, f.read().split())) <= set(warm), f"a kept cgroup holds a job's process: {path}"
    left = []
    for _, parent in b._cg.dirs:
        if os.path.isdir(parent):
            left += [os.path.join(parent, n) for n in os.listdir(parent) if n.startswith(f"job-{os.getpid()}-")]
    return sorted(set(left) - set(kept))


def make_runner(b: bwrap_mod.BwrapBackend) -> Run:
    """run(language, code, stdin=, args=, files=, **limit fields) -> ExecResult; skips
    the test if the language's toolchain is missing (test_toolchains_... fails then)."""
    tools = {t.language: t for t in b.languages()}

    def run(language: str, code: str, *, stdin: bytes = b"", args: tuple[str, ...] = (),
            files: tuple[File, ...] = (), **limits: float) -> ExecResult:
        lang = find_language(language)
        if not tools[lang.name].available:
            pytest.skip(f"{lang.name} unavailable in the sandbox: {tools[lang.name].detail}")
        job = Job(language, code, stdin=stdin, files=files, args=args, limits=replace(SMALL, **limits))
        return b.run(job, lang)

    return run


@pytest.fixture
def run(backend: bwrap_mod.BwrapBackend, host_is_clean: None) -> Run:
    return make_runner(backend)


@pytest.fixture
def run_rlimit(rlimit_backend: bwrap_mod.BwrapBackend, host_is_clean: None) -> Run:
    return make_runner(rlimit_backend)


@pytest.fixture
def host_is_clean(request: pytest.FixtureRequest) -> Iterator[None]:
    """After the test: nothing of any job is left, and the backends still work."""
    yield
    for name in ("backend", "rlimit_backend"):
        if name not in request.fixturenames:
            continue
        b = request.getfixturevalue(name)
        assert sandbox_processes(b) == [], "a process of the job outlived it"
        assert job_cgroups(b) == [], "a job cgroup was left behind"
        r = make_runner(b)("python", "print('still fine')")
        assert r.verdict is Verdict.OK and r.stdout == b"still fine\n", r
