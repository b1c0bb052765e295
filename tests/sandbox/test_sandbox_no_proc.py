"""Sandboxes without a /proc of their own: what a container with masked /proc paths gets
(Docker without systempaths=unconfined; Debian's docker-compose 1.29 cannot ask for it).
Every language must still run and compile, and the isolation must not loosen."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import replace

import pytest

from referee.sandboxes import bwrap as bwrap_mod
from referee.sandboxes.languages import find_language
from referee.sandboxes.types import ExecResult, Job, Limits, Verdict

MiB = 1024 * 1024
LIMITS = Limits(wall_time_s=5.0, cpu_time_s=5.0, memory_bytes=128 * MiB, output_bytes=64 * 1024,
                max_processes=32, file_size_bytes=4 * MiB, open_files=64)

HELLO = {
    "python": "print('hello')",
    "c": '#include <stdio.h>\nint main(void) { puts("hello"); }',
    "cpp": '#include <iostream>\nint main() { std::cout << "hello" << std::endl; }',
    "javascript": "console.log('hello')",
    "bash": "echo hello",
}


@pytest.fixture(scope="module")
def no_proc_backend(backend) -> Iterator[bwrap_mod.BwrapBackend]:
    """Made after the session's `backend` (conftest.py), which skips where bwrap cannot
    work here; a uid range of its own, as its jobs are not in the leak checks' range."""
    b = bwrap_mod.BwrapBackend(uid_base=bwrap_mod.DEFAULT_UID_BASE + 60_000, uid_count=16, proc=False,
                               compile_wall_time_s=20.0, warm=1)
    yield b
    b.close()


@pytest.fixture
def run(no_proc_backend) -> Callable[..., ExecResult]:
    def run(language: str, code: str, **limits: float) -> ExecResult:
        job = Job(language, code, limits=replace(LIMITS, **limits))
        return no_proc_backend.run(job, find_language(language))

    return run


def test_describe_says_there_is_no_proc(no_proc_backend):
    assert no_proc_backend.describe()["proc"].startswith("none")


@pytest.mark.parametrize("language", sorted(HELLO))
def test_each_language_runs_and_compiles_without_proc(run, language):
    r = run(language, HELLO[language])
    assert r.verdict is Verdict.OK, r
    assert r.stdout == b"hello\n"


def test_the_job_sees_no_proc_at_all(run):
    r = run("python", "import os\nprint(os.path.exists('/proc/self'), os.path.exists('/proc/1/environ'))")
    assert r.verdict is Verdict.OK, r
    assert r.stdout == b"False False\n"


def test_limits_still_hold_without_proc(run):
    r = run("python", "import os\nwhile True:\n    os.fork()", max_processes=16, wall_time_s=2.0)
    assert r.verdict in (Verdict.RUNTIME_ERROR, Verdict.TIME_LIMIT), r
    r = run("python", "x = bytearray(512 * 1024 * 1024)", memory_bytes=64 * 1024 * 1024)
    assert r.verdict is Verdict.MEMORY_LIMIT, r
