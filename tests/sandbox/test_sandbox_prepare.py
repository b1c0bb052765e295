"""Jobs set up ahead of their slot (`BwrapBackend.prepare`): the sandbox is built and
stopped before the program; `run` starts it, `cancel` ends it unrun. Either way nothing
of the job is left (`host_is_clean`), and a staged sandbox costs the program nothing."""

from __future__ import annotations

import os
import time
from dataclasses import replace

import pytest

from referee.sandboxes.bwrap import DEFAULT_UID_BASE, BwrapBackend
from referee.sandboxes.languages import find_language
from referee.sandboxes.types import Deferred, File, Job, Limits, Settled, Verdict

PY = find_language("python")
SMALL_LIMITS = Limits(wall_time_s=5.0, cpu_time_s=5.0, memory_bytes=128 * 1024 * 1024, max_processes=32,
                      file_size_bytes=4 * 1024 * 1024, open_files=64)
OWN_UIDS = (DEFAULT_UID_BASE + 60_000, 16)
"""A uid range of this file's own backend (the session's backends use theirs)."""


def job(code: str, **limits: float) -> Job:
    return Job("python", code, limits=replace(SMALL_LIMITS, **limits))


@pytest.mark.usefixtures("host_is_clean")
def test_a_prepared_job_runs_with_its_files_stdin_and_limits(backend: BwrapBackend) -> None:
    j = Job("python", "import sys\nprint(open('data.txt').read(), sys.stdin.read())", stdin=b"in",
            files=(File("data.txt", b"file"),), limits=SMALL_LIMITS)
    prepared = backend.prepare(j, PY)
    r = prepared.run()
    assert (r.verdict, r.stdout) == (Verdict.OK, b"file in\n"), r
    prepared.cancel()  # after run: nothing to do
    with pytest.raises(RuntimeError):
        prepared.run()  # once


@pytest.mark.usefixtures("host_is_clean")
def test_the_wall_clock_starts_when_the_prepared_job_runs(backend: BwrapBackend) -> None:
    prepared = backend.prepare(job("import time\ntime.sleep(0.3)\nprint('done')", wall_time_s=1.0), PY)
    time.sleep(1.5)  # longer than its wall limit, waiting for a slot
    r = prepared.run()
    assert (r.verdict, r.stdout) == (Verdict.OK, b"done\n"), r
    assert 0.3 <= r.usage.wall_time_s < 1.0


@pytest.mark.usefixtures("host_is_clean")
def test_a_cancelled_job_never_runs_and_leaves_nothing(backend: BwrapBackend, tmp_path) -> None:
    marker = tmp_path / "ran"
    prepared = backend.prepare(job(f"open({str(marker)!r}, 'w')"), PY)
    prepared.cancel()
    prepared.cancel()
    with pytest.raises(RuntimeError):
        prepared.run()
    assert not marker.exists()


def test_close_ends_jobs_prepared_and_never_run() -> None:
    try:
        b = BwrapBackend(uid_base=OWN_UIDS[0], uid_count=OWN_UIDS[1], warm=0)
    except RuntimeError as e:
        pytest.skip(f"bwrap sandbox unusable on this host: {e}")
    staged = [b.prepare(job("print(1)"), PY) for _ in range(3)]
    b.close()
    for p in staged:
        with pytest.raises(RuntimeError):
            p.run()
    left = [pid for pid in os.listdir("/proc") if pid.isdigit() and _uid(pid) in range(OWN_UIDS[0], sum(OWN_UIDS))
            and _state(pid) not in ("Z", "X")]
    assert left == []


def _uid(pid: str) -> int:
    try:
        return os.stat(f"/proc/{pid}").st_uid
    except OSError:
        return -1


def _state(pid: str) -> str:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0]
    except OSError:
        return "X"


def test_compiled_languages_and_setup_failures_are_not_staged(backend: BwrapBackend) -> None:
    assert isinstance(backend.prepare(Job("cpp", "int main(){}", limits=SMALL_LIMITS), find_language("cpp")),
                      Deferred)
    # a command missing from the sandbox is known before any bwrap starts
    missing = replace(PY, run=("no-such-interpreter", "main.py"))
    settled = backend.prepare(job("print(1)"), missing)
    assert isinstance(settled, Settled) and settled.run().verdict is Verdict.SANDBOX_ERROR
