"""Local reward services: real `referee serve` subprocesses started, shared and stopped.

"Nothing left behind" is checked on the process group each service runs in (the server,
its fork server and its verifier workers), and, for services that failed to start, by
looking for their command line in /proc.
"""

from __future__ import annotations

import os
import shutil
import signal
import time
from pathlib import Path

import pytest

from referee.testing import process_group_members
from referee.trainer.config import RewardSourceConfig
from referee.trainer.data import PromptRow
from referee.trainer.local_services import (
    LocalServiceError,
    _with_sandbox,
    start_local_services,
    start_service,
)
from referee.trainer.rewards import RewardScorer
from referee.trainer.rollout.base import Completion

pytestmark = pytest.mark.timeout(120)


def _state(pid: int) -> str | None:
    """The process's state letter, None when it is gone (a zombie counts as gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    state = stat.rsplit(")", 1)[1].split()[0]
    return None if state in ("Z", "X") else state


def _with_marker(marker: str) -> list[int]:
    """Live processes whose command line contains `marker`."""
    out = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if marker in cmdline and _state(int(entry.name)) is not None:
            out.append(int(entry.name))
    return out


def _wait_gone(pids: list[int], timeout: float = 5.0) -> list[int]:
    deadline = time.monotonic() + timeout
    while (alive := [p for p in pids if _state(p) is not None]) and time.monotonic() < deadline:
        time.sleep(0.05)
    return alive


def test_one_process_per_distinct_service_shared_by_sources_and_stopped() -> None:
    args = ["--no-entrypoints"]
    sources = [
        RewardSourceConfig(target="local", reward="exact", local_args=args),
        RewardSourceConfig(target="local", reward="math", local_args=args),
        RewardSourceConfig(
            target="local",
            reward="exact",
            name="exact_uncached",
            local_args=[*args, "--cache-size", "0"],
        ),
        RewardSourceConfig(target="127.0.0.1:1", reward="exact", name="remote"),
    ]
    with start_local_services(sources, workers=1) as local:
        targets = local.targets(sources)
        assert targets["exact"] == targets["math"] != targets["exact_uncached"]
        assert targets["remote"] == ["127.0.0.1:1"]
        assert len(local.services) == 2 and local.exited() == []
        assert all(t[0].startswith("127.0.0.1:") for t in targets.values())
        members = {svc.proc.pid: process_group_members(svc.proc.pid) for svc in local.services}
        # Server, fork server and a worker each.
        assert all(len(pids) >= 3 for pids in members.values()), members
        for svc in local.services:
            assert svc.command[4:9] == ["verifiers", "--host", "127.0.0.1", "--port", "0"]
            assert "--workers" in svc.command
        with RewardScorer(sources[:3], targets) as scorer:
            row = PromptRow("r", "1+1?", "2")
            group = [Completion(0, 0, [1], [2], "2", [0.0], "stop", 0)]
            batch = scorer.score_groups([row], [group])
        assert batch.rewards.tolist() == [3.0] and batch.valid.all()

    for svc in local.services:
        assert svc.proc.returncode == 0, svc.output  # a graceful SIGTERM drain
        assert "stopped" in svc.output
    assert _wait_gone([p for pids in members.values() for p in pids]) == []


def test_killed_server_leaves_no_workers_behind() -> None:
    svc = start_service("verifiers", ["--no-entrypoints"], workers=2)
    try:
        members = process_group_members(svc.proc.pid)
        assert len(members) >= 4, members  # server, fork server, two workers
        os.kill(svc.proc.pid, signal.SIGKILL)
        svc.proc.wait(10)
    finally:
        svc.stop(grace_s=2)
    assert _wait_gone(members) == []


def test_rollout_server_starts_on_http_and_is_healthy_then_stops() -> None:
    import httpx

    svc = start_service("rollout", ["--model", "tiny:tiny", "--weight-version", "7"])
    try:
        assert svc.scheme == "http" and svc.url == f"http://{svc.address}"
        assert svc.address.startswith("127.0.0.1:") and "--workers" not in svc.command
        assert httpx.get(svc.url + "/health_generate", timeout=30).status_code == 200
        info = httpx.get(svc.url + "/get_model_info", timeout=30).json()
        assert info["weight_version"] == "7"
    finally:
        code = svc.stop(grace_s=10)
    # Stopped by the SIGTERM (uvicorn under asyncio.run ends by the signal, -15), not
    # left running; nothing else is in its group.
    assert code is not None and not svc.alive, svc.output
    assert _wait_gone([svc.proc.pid]) == []


def test_failed_rollout_start_shows_the_output() -> None:
    with pytest.raises(LocalServiceError, match="not a directory") as info:
        start_service("rollout", ["--model", "/nonexistent/model"], ready_timeout_s=30)
    assert "serve rollout" in str(info.value)


def test_failed_start_names_the_source_and_shows_the_output() -> None:
    marker = "16381"
    src = RewardSourceConfig(
        target="local",
        reward="fn",
        local_args=["--no-builtins", "--no-entrypoints", "--load", "no_such_module_xyz:fn",
                    "--max-batch", marker],
    )  # fmt: skip
    t0 = time.monotonic()
    with pytest.raises(LocalServiceError) as err:
        start_local_services([src], workers=1)
    assert time.monotonic() - t0 < 20
    msg = str(err.value)
    assert "reward source 'fn' (target: local)" in msg
    assert "exited with status 2" in msg
    assert "no_such_module_xyz" in msg.split("\n", 1)[1]  # the process's own output
    assert "referee.cli serve verifiers" in msg
    assert _with_marker(f"--max-batch {marker}") == []


def test_start_is_bounded_and_cleans_up() -> None:
    marker = "16382"
    t0 = time.monotonic()
    with pytest.raises(LocalServiceError, match="printed no 'listening on' line within 0.05s"):
        start_service(
            "verifiers", ["--no-entrypoints", "--max-batch", marker], ready_timeout_s=0.05
        )
    assert time.monotonic() - t0 < 10
    assert _wait_gone(_with_marker(f"--max-batch {marker}")) == []


@pytest.mark.parametrize("bad", [["--port", "5"], ["--host=0.0.0.0"], ["--token", "t"]])
def test_listening_options_are_refused(bad: list[str]) -> None:
    src = RewardSourceConfig(target="local", reward="exact", local_args=bad)
    with pytest.raises(LocalServiceError, match=f"may not contain {bad[0].split('=')[0]}"):
        start_local_services([src])


def test_no_local_sources_starts_nothing() -> None:
    remote = RewardSourceConfig(target="127.0.0.1:7,127.0.0.1:8", reward="exact")
    with start_local_services([remote]) as local:
        assert local.services == []
        assert local.targets([remote]) == {"exact": ["127.0.0.1:7", "127.0.0.1:8"]}


def test_sandbox_address_replaces_local_or_is_added() -> None:
    assert _with_sandbox(["--workers", "1"], "h:1") == ["--workers", "1", "--sandbox", "h:1"]
    assert _with_sandbox(["--sandbox", "local", "-x"], "h:1") == ["-x", "--sandbox", "h:1"]
    assert _with_sandbox(["--sandbox=local"], "h:1") == ["--sandbox", "h:1"]


@pytest.mark.skipif(shutil.which("bwrap") is None, reason="the sandbox service needs bubblewrap")
def test_code_reward_gets_a_local_sandbox() -> None:
    src = RewardSourceConfig(target="local", reward="code", local_args=["--no-entrypoints"])
    with start_local_services([src], workers=1, sandbox_args=["--slots", "1"]) as local:
        sandbox, verifiers = local.services
        assert sandbox.service == "sandbox" and verifiers.service == "verifiers"
        assert verifiers.command[-2:] == ["--sandbox", sandbox.address]
        row = PromptRow("add", "Write add(a, b).", metadata={"tests": ["assert add(1, 2) == 3"]})
        texts = [
            "```python\ndef add(a, b):\n    return a + b\n```",
            "```python\ndef add(a, b):\n    return a - b\n```",
        ]
        group = [Completion(0, j, [1], [2], t, [0.0], "stop", 0) for j, t in enumerate(texts)]
        with RewardScorer([src], local.targets([src])) as scorer:
            batch = scorer.score_groups([row], [group])
        assert batch.valid.all(), batch.failure_examples
        assert batch.rewards.tolist() == [1.0, 0.0]
        members = [p for svc in local.services for p in process_group_members(svc.proc.pid)]
    assert [svc.proc.returncode for svc in local.services] == [0, 0]
    assert _wait_gone(members) == []
