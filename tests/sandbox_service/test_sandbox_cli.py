"""`referee serve sandbox` (real bwrap backend) and `referee exec`, end to end."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from referee.sandboxes.client import SandboxCallError, SandboxClient
from referee.sandboxes.types import Job, Limits, Verdict
from referee.testing import serve_process

pytestmark = pytest.mark.skipif(shutil.which("bwrap") is None, reason="bubblewrap is not installed")


def exec_cli(*args: str, stdin_file: Path | None = None) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "referee.cli", "exec", *args]
    if stdin_file is not None:
        cmd += ["--stdin", str(stdin_file)]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)


@pytest.fixture(scope="module")
def sandbox() -> str:
    with serve_process(["sandbox", "--slots", "2"]) as server:
        yield server.address


def test_exec_prints_output_and_verdict(sandbox: str, tmp_path: Path) -> None:
    prog = tmp_path / "echo.py"
    prog.write_text("import sys\nprint(sys.stdin.read().upper(), end='')\nprint(sys.argv[1:], file=sys.stderr)\n")
    (tmp_path / "in.txt").write_text("hello sandbox")
    done = exec_cli("--target", sandbox, "--language", "python", str(prog), "--arg", "x",
                    stdin_file=tmp_path / "in.txt")
    assert done.returncode == 0, done.stderr
    assert done.stdout == "HELLO SANDBOX"
    assert "['x']" in done.stderr and "verdict: OK (exit 0" in done.stderr


def test_exec_reports_failures_with_exit_status_1(sandbox: str, tmp_path: Path) -> None:
    bad = tmp_path / "bad.cpp"
    bad.write_text("int main() { return undefined_thing; }\n")
    done = exec_cli("--target", sandbox, "--language", "cpp", str(bad))
    assert done.returncode == 1
    assert "verdict: COMPILE_ERROR" in done.stderr and "undefined_thing" in done.stderr
    loop = tmp_path / "loop.py"
    loop.write_text("while True:\n    pass\n")
    done = exec_cli("--target", sandbox, "--language", "python", str(loop), "--wall-time", "1", "--cpu-time", "1")
    assert done.returncode == 1 and "verdict: TIME_LIMIT" in done.stderr


def test_bad_requests_name_the_problem_and_the_server_keeps_serving(sandbox: str, tmp_path: Path) -> None:
    async def go() -> None:
        async with SandboxClient(sandbox, timeout_s=60) as client:
            for job, message in [
                (Job("cobol", "x"), "unknown language 'cobol'"),
                (Job("python", ""), "code is empty"),
                (Job("python", "x", limits=Limits(wall_time_s=10_000)), "limits.wall_time_s"),
                (Job("python", "x" * (2 * 1024 * 1024)), "code is 2097152 bytes"),
            ]:
                with pytest.raises(SandboxCallError) as err:
                    await client.execute(job)
                assert message in err.value.details
            ok = await client.execute(Job("python", "print(6 * 7)"))
            assert (ok.verdict, ok.stdout) == (Verdict.OK, b"42\n")
            backend, tools = await client.languages()
            assert backend == "bwrap"
            assert {t.language for t in tools if t.available} >= {"python", "c", "cpp", "bash"}

    asyncio.run(go())
    missing = exec_cli("--target", sandbox, "--language", "python", str(tmp_path / "nope.py"))
    assert missing.returncode == 2 and "nope.py" in missing.stderr
