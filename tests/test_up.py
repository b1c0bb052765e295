"""`referee up`: the real command in a subprocess, real services, real signals.

Each service runs in its own process group whose id is the pid `up` prints, so "no
orphan left" is checked as "no live process in any of those groups" after `up` exits,
and, for what `up` may not have printed, as "no live process whose environment carries
this test's marker" (every child inherits `up`'s environment).
"""

from __future__ import annotations

import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
import yaml
from grpc_health.v1 import health_pb2, health_pb2_grpc

from referee.rewardsvc.client import SyncRewardClient
from referee.testing import process_group_members
from referee.types import Status
from referee.up_config import SERVICES, UpConfig, UpConfigError, load_up_config, parse_up_config

pytestmark = pytest.mark.timeout(180)
ROOT = Path(__file__).resolve().parent.parent
READY = re.compile(r"referee up: (\S+) ready at (\w+)://(\S+) \(pid (\d+)\)")
VERIFIERS = {"args": ["--workers", "1", "--no-entrypoints"]}


class Up:
    """A running `referee up`; its output is read by a thread into `lines`."""

    def __init__(self, config: dict, tmp_path: Path, *flags: str, env: dict | None = None) -> None:
        path = tmp_path / "up.yaml"
        path.write_text(yaml.safe_dump(config))
        self.marker = f"REFEREE_UP_TEST={uuid.uuid4().hex}"
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "referee.cli", "up", "--config", str(path), *flags],
            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            env={**os.environ, **(env or {}), "PYTHONUNBUFFERED": "1",
                 "REFEREE_UP_TEST": self.marker.split("=", 1)[1]},
        )
        self.lines: list[str] = []
        self._queue: queue.Queue[str | None] = queue.Queue()
        self.services: dict[str, tuple[str, int]] = {}  # name -> (address, pid)
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self._queue.put(line)
        self._queue.put(None)

    @property
    def output(self) -> str:
        return "".join(self.lines)

    def wait_for(self, text: str, timeout: float = 150.0) -> bool:
        """Reads output until a line contains `text` (True) or it ends (False)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                line = self._queue.get(timeout=0.5)
            except queue.Empty:
                continue
            if line is None:
                return False
            self.lines.append(line)
            if m := READY.search(line):
                self.services[m.group(1)] = (m.group(3), int(m.group(4)))
            if text in line:
                return True
        raise AssertionError(f"no {text!r} in {timeout}s:\n{self.output}")

    def finish(self, timeout: float = 90.0) -> int:
        code = self.proc.wait(timeout)
        self.wait_for("\0never\0")  # drain the rest of the output
        return code

    def leftovers(self, timeout: float = 5.0) -> list[int]:
        """Live processes started by this `up` (they carry its marker), after a wait."""
        deadline = time.monotonic() + timeout
        while (left := _with_marker(self.marker)) and time.monotonic() < deadline:
            time.sleep(0.05)
        return left

    def kill(self) -> None:
        """Clean-up after a failed test: the command, then each group it printed."""
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        for _, pid in self.services.values():
            try:
                os.killpg(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass


@pytest.fixture
def up_factory(tmp_path: Path) -> Iterator:
    started: list[Up] = []

    def make(config: dict, *flags: str, env: dict | None = None) -> Up:
        up = Up(config, tmp_path, *flags, env=env)
        started.append(up)
        return up

    yield make
    for up in started:
        up.kill()


def _with_marker(marker: str) -> list[int]:
    """Live processes whose environment holds `marker` (ours: its environ is readable)."""
    out = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            environ = (entry / "environ").read_bytes().split(b"\0")
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if marker.encode() in environ and state not in ("Z", "X"):
            out.append(int(entry.name))
    return out


def _groups_gone(pgids: list[int], timeout: float = 5.0) -> list[int]:
    deadline = time.monotonic() + timeout
    while (left := [p for pg in pgids for p in process_group_members(pg)]) and time.monotonic() < deadline:
        time.sleep(0.05)
    return left


def _serving(address: str, service: str = "") -> bool:
    with grpc.insecure_channel(address) as channel:
        resp = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service=service), timeout=5)
    return resp.status == health_pb2.HealthCheckResponse.SERVING


# --- the command ----------------------------------------------------------------------


def test_up_scores_through_the_gateway_and_sigint_stops_every_process(up_factory) -> None:
    up = up_factory({"services": {"verifiers": VERIFIERS, "sandbox": {"enabled": False},
                                  "gateway": {"port": 0}}}, "--quiet")
    assert up.wait_for("Ctrl-C stops every service"), up.output
    assert list(up.services) == ["verifiers", "gateway"], up.output
    gateway, gateway_pid = up.services["gateway"]
    verifiers_pid = up.services["verifiers"][1]
    assert _serving(gateway) and _serving(up.services["verifiers"][0])
    # the verifiers' workers share its process group
    assert len(process_group_members(verifiers_pid)) >= 3
    with SyncRewardClient(gateway, timeout_s=30) as client:
        names = {r.name for r in client.list_rewards()}
        assert {"math", "format", "math_with_format"} <= names
        scores = client.score("math_with_format", [
            {"completion": "<think>2+2 is 4</think>\n<answer>4</answer>", "reference": "4"},
            {"completion": "<think>2+2 is 5</think>\n<answer>5</answer>", "reference": "4"},
        ])
    assert [s.status for s in scores] == [Status.OK, Status.OK]
    assert [s.value for s in scores] == pytest.approx([1.0, 0.1])
    assert "│ gateway" in up.output  # the table

    up.proc.send_signal(signal.SIGINT)
    assert up.finish() == 0, up.output
    assert "gateway stopped" in up.output and "verifiers stopped" in up.output
    assert _groups_gone([verifiers_pid, gateway_pid]) == []
    assert up.leftovers() == []


def test_sigterm_stops_too_and_a_dead_service_is_reported(up_factory) -> None:
    up = up_factory({"services": {"verifiers": VERIFIERS, "sandbox": {"enabled": False},
                                  "gateway": {"port": 0}}, "grace_s": 5}, "--quiet")
    assert up.wait_for("Ctrl-C stops every service"), up.output
    pids = [pid for _, pid in up.services.values()]
    os.kill(up.services["verifiers"][1], signal.SIGKILL)
    assert up.wait_for("the others keep running"), up.output
    assert re.search(r"verifiers \(pid \d+\) EXITED with status -9", up.output), up.output
    assert _groups_gone([up.services["verifiers"][1]]) == []  # its workers reaped
    assert up.proc.poll() is None
    up.proc.send_signal(signal.SIGTERM)
    assert up.finish() == 1, up.output  # stopped on request, but a service had died
    assert "SIGTERM: stopping" in up.output
    assert _groups_gone(pids) == []
    assert up.leftovers() == []


def test_exit_on_failure_stops_the_rest(up_factory) -> None:
    up = up_factory({"services": {"verifiers": VERIFIERS, "sandbox": {"enabled": False},
                                  "gateway": {"port": 0}}}, "--quiet", "--exit-on-failure")
    assert up.wait_for("Ctrl-C stops every service"), up.output
    pids = [pid for _, pid in up.services.values()]
    os.kill(up.services["gateway"][1], signal.SIGKILL)
    assert up.finish() == 1, up.output
    assert "--exit-on-failure: stopping the others" in up.output
    assert "verifiers stopped" in up.output
    assert _groups_gone(pids) == []
    assert up.leftovers() == []


def test_a_service_that_cannot_start_fails_up_and_stops_the_started(up_factory, tmp_path) -> None:
    bad = tmp_path / "gateway.yaml"  # names an upstream it does not define
    bad.write_text(yaml.safe_dump({"upstreams": {"v": {"address": "verifiers"}},
                                   "rewards": {"math": {"upstream": "nope"}}}))
    up = up_factory({"services": {"verifiers": VERIFIERS, "sandbox": {"enabled": False},
                                  "gateway": {"port": 0, "config": str(bad)}}}, "--quiet")
    assert up.finish() == 1, up.output
    assert "gateway could not start; stopping the others" in up.output
    assert "rewards.math.upstream" in up.output  # the gateway's own error, passed on
    assert list(up.services) == ["verifiers"]
    assert "verifiers stopped" in up.output
    assert _groups_gone([up.services["verifiers"][1]]) == []
    assert up.leftovers() == []


def test_an_optional_service_that_cannot_start_is_reported_and_skipped(up_factory) -> None:
    # --backend local refuses to start without --i-know-local-is-unsafe, like a missing bwrap
    up = up_factory({"services": {
        "verifiers": VERIFIERS,
        "sandbox": {"args": ["--backend", "local"]},  # required: false by default
        "gateway": {"enabled": False},
    }})
    assert up.wait_for("Ctrl-C stops every service"), up.output
    assert "sandbox could not start (required: false, going on without it)" in up.output
    assert "sandbox | referee serve sandbox:" in up.output  # its output, echoed
    assert "NOT STARTED" in up.output and list(up.services) == ["verifiers"]
    up.proc.send_signal(signal.SIGINT)
    assert up.finish() == 0, up.output
    assert _groups_gone([up.services["verifiers"][1]]) == []


def test_a_bad_load_makes_a_required_service_fail_clearly(up_factory) -> None:
    up = up_factory({"services": {
        "verifiers": {"args": ["--workers", "1", "--no-entrypoints", "--load", "no_such_mod:fn"]},
        "sandbox": {"enabled": False}, "gateway": {"port": 0}}}, "--quiet")
    assert up.finish() == 1, up.output
    assert "verifiers could not start; stopping the others" in up.output
    assert "no_such_mod" in up.output
    assert "gateway" not in up.services
    assert up.leftovers() == []


def test_ctrl_c_while_a_service_is_starting_stops_it_too(up_factory, tmp_path) -> None:
    (tmp_path / "slow_import.py").write_text(
        "import time\nprint('slow import started', flush=True)\ntime.sleep(60)\n"
        "def fn(sample):\n    return 1.0\n")
    up = up_factory({"services": {
        "verifiers": {"args": ["--workers", "1", "--no-entrypoints", "--load", "slow_import:fn"]},
        "sandbox": {"enabled": False}, "gateway": {"port": 0}}},
        env={"PYTHONPATH": f"{tmp_path}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"})
    assert up.wait_for("slow import started"), up.output
    assert len(_with_marker(up.marker)) >= 2  # up and the starting verifiers
    up.proc.send_signal(signal.SIGINT)
    assert up.finish(timeout=30) == 0, up.output
    assert "stop requested while starting" in up.output
    assert up.services == {}
    assert up.leftovers() == []


def test_bad_config_names_the_key(tmp_path: Path) -> None:
    path = tmp_path / "up.yaml"
    path.write_text(yaml.safe_dump({"services": {"verifiers": {"prot": 0}}}))
    r = subprocess.run([sys.executable, "-m", "referee.cli", "up", "--config", str(path)],
                       cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert r.returncode == 2
    assert "services.verifiers.prot: unknown key; did you mean 'port'?" in r.stderr


def test_rollout_and_a_judge_on_its_openai_routes(up_factory) -> None:
    up = up_factory({"services": {
        "verifiers": {"enabled": False}, "sandbox": {"enabled": False},
        "rollout": {"model": "tiny:tiny"}, "judge": {"endpoint": "rollout"},
        "gateway": {"port": 0}}}, "--quiet")
    assert up.wait_for("Ctrl-C stops every service"), up.output
    assert list(up.services) == ["rollout", "judge", "gateway"]
    rollout, judge_pid = up.services["rollout"][0], up.services["judge"][1]
    cmdline = Path(f"/proc/{judge_pid}/cmdline").read_bytes().split(b"\0")
    assert [b"--endpoint", f"http://{rollout}/v1".encode(), b"--model", b"tiny:tiny"] == \
        cmdline[cmdline.index(b"--endpoint"):][:4]
    with SyncRewardClient(up.services["gateway"][0], timeout_s=60) as client:
        assert "judge" in {r.name for r in client.list_rewards()}
    pids = [pid for _, pid in up.services.values()]
    up.proc.send_signal(signal.SIGINT)
    assert up.finish() == 0, up.output
    assert _groups_gone(pids) == []
    assert up.leftovers() == []


# --- the config -----------------------------------------------------------------------


def test_shipped_config_is_the_default() -> None:
    cfg = load_up_config(ROOT / "examples" / "configs" / "up.yaml")
    assert cfg == UpConfig()
    assert [s.name for s in cfg.enabled()] == ["sandbox", "verifiers", "gateway"]
    assert cfg.services["gateway"].port == 50050 and not cfg.services["sandbox"].required
    assert list(cfg.services) == list(SERVICES)


@pytest.mark.parametrize("data, key, words", [
    ({"services": {"verifier": {}}}, "services.verifier", "known: rollout"),
    ({"services": {"verifiers": {"port": 70000}}}, "services.verifiers.port", "0 to 65535"),
    ({"services": {"verifiers": {"args": ["--port", "1"]}}}, "services.verifiers.args", "--port"),
    ({"services": {"verifiers": {"args": "--workers 2"}}}, "services.verifiers.args", "list"),
    ({"services": {"reward-model": {"enabled": True}}}, "services.reward-model.model", "required"),
    ({"services": {"judge": {"endpoint": "rollout"}}}, "services.judge.endpoint", "rollout"),
    ({"services": {"judge": {"endpoint": "http://x/v1"}}}, "services.judge.model", "model name"),
    ({"services": {"verifiers": {"enabled": False}}}, "services.gateway.enabled", "route to"),
    ({"services": {"sandbox": {"required": "no"}}}, "services.sandbox.required", "true or false"),
    ({"grace": 3}, "grace", "did you mean 'grace_s'"),
])
def test_config_errors_name_the_key(data: dict, key: str, words: str) -> None:
    with pytest.raises(UpConfigError) as info:
        parse_up_config(data)
    assert info.value.key == key
    assert words in str(info.value)


def test_optional_services_turn_on_with_what_they_need() -> None:
    cfg = parse_up_config({"services": {"rollout": {"model": "tiny:tiny"},
                                        "judge": {"endpoint": "rollout"}}})
    assert [s.name for s in cfg.enabled()] == ["rollout", "sandbox", "verifiers", "judge", "gateway"]
    assert cfg.services["judge"].model is None  # the rollout's, filled in when started
