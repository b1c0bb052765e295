"""The unsafe local backend still gives honest verdicts and cleans up after itself."""

from __future__ import annotations

import glob
import os
import tempfile

import pytest

from referee.sandboxes.languages import find_language
from referee.sandboxes.local import LocalBackend
from referee.sandboxes.types import Job, Limits, Verdict

MiB = 1024 * 1024


@pytest.fixture(scope="module")
def local():
    return LocalBackend(compile_wall_time_s=20)


def go(b, language, code, **limits):
    limits = {"wall_time_s": 2, "memory_bytes": 128 * MiB, **limits}
    return b.run(Job(language, code, limits=Limits(**limits)), find_language(language))


def test_local_runs_python_and_c(local):
    assert go(local, "python", "print(2 + 2)").stdout == b"4\n"
    r = go(local, "c", "int main(void) { return 4; }")
    assert r.verdict is Verdict.RUNTIME_ERROR and r.exit_code == 4


def test_local_verdicts_for_limits(local):
    assert go(local, "python", "while True: pass", wall_time_s=1).verdict is Verdict.TIME_LIMIT
    assert go(local, "python", "x = bytearray(1 << 30)").verdict is Verdict.MEMORY_LIMIT
    r = go(local, "python", "while True: print('x' * 100)", output_bytes=1000)
    assert r.verdict is Verdict.OUTPUT_LIMIT and len(r.stdout) == 1000


def test_local_hides_the_server_environment(local, monkeypatch):
    monkeypatch.setenv("REFEREE_TEST_SECRET", "hunter2")
    assert go(local, "python", "import os; print('REFEREE_TEST_SECRET' in os.environ)").stdout == b"False\n"


def test_local_removes_its_work_dir_without_following_symlinks(local, tmp_path):
    precious = tmp_path / "precious"
    precious.mkdir()
    (precious / "keep.txt").write_text("x")
    before = set(glob.glob(os.path.join(tempfile.gettempdir(), "referee-local-*")))
    r = go(local, "python", f"import os; os.symlink({str(precious)!r}, 'link'); print(os.getcwd())")
    assert r.verdict is Verdict.OK
    assert not os.path.exists(r.stdout.decode().strip())
    assert (precious / "keep.txt").exists()
    assert set(glob.glob(os.path.join(tempfile.gettempdir(), "referee-local-*"))) == before
