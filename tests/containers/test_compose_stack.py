"""The compose stack (compose/docker-compose.yml with the CI override) brought up with
docker-compose: verifiers, sandbox and gateway healthy within 120 s; a composite reward
and a code reward (verifiers -> sandbox) scored through the gateway; one upstream
stopped, the gateway reporting it, started again, the gateway recovering."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from container_helpers import (
    SANDBOX_IMAGE,
    SERVICES_IMAGE,
    docker_health,
    docker_problem,
    health,
    wait_for,
)

from referee.rewardsvc.client import SyncRewardClient

pytestmark = pytest.mark.docker

ROOT = Path(__file__).resolve().parents[2]
SERVICES = ("verifiers", "sandbox", "gateway")
GATEWAY = "127.0.0.1:50050"
CI_ENV = {
    # Host networking: nothing listens beyond loopback, upstreams are 127.0.0.1.
    "REFEREE_BIND": "127.0.0.1",
    "REFEREE_SANDBOX_ADDR": "127.0.0.1:50052",
    "REFEREE_GATEWAY_CONFIG": "./gateway.ci.yaml",
    "REFEREE_IMAGE": SERVICES_IMAGE,
    "REFEREE_SANDBOX_IMAGE": SANDBOX_IMAGE,
}


def _compose_command() -> list[str] | None:
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    probe = subprocess.run(["docker", "compose", "version"], capture_output=True, timeout=20)
    return ["docker", "compose"] if probe.returncode == 0 else None


class Stack:
    def __init__(self, compose: list[str], file: Path, project: str) -> None:
        self.base = [*compose, "-p", project, "-f", str(file)]

    def __call__(self, *args: str, timeout: float = 180) -> str:
        out = subprocess.run([*self.base, *args], cwd=ROOT, env={**os.environ, **CI_ENV}, capture_output=True,
                             text=True, timeout=timeout)
        assert out.returncode == 0, f"{' '.join(args)}: {out.stdout[-2000:]}{out.stderr[-2000:]}"
        return out.stdout

    def container(self, service: str) -> str:
        return self("ps", "-q", service).strip()

    def logs(self) -> str:
        return self("logs", "--tail", "40", *SERVICES)


def render(compose: list[str], path: Path) -> None:
    """The stack as the CI override makes it, with `ports` dropped: docker-compose 1.29
    refuses published ports under host networking (v2 and the engine just ignore them)."""
    out = subprocess.run([*compose, "-f", "compose/docker-compose.yml", "-f", "compose/docker-compose.ci.yml",
                          "config"], cwd=ROOT, env={**os.environ, **CI_ENV}, capture_output=True, text=True,
                         timeout=60, check=True).stdout
    config = yaml.safe_load(out)
    for service in config["services"].values():
        service.pop("ports", None)
    path.write_text(yaml.safe_dump(config))


@pytest.fixture(scope="module")
def stack(tmp_path_factory) -> Iterator[Stack]:
    problem = docker_problem(SERVICES_IMAGE, SANDBOX_IMAGE)
    compose = _compose_command()
    if problem or compose is None:
        pytest.skip(problem or "neither docker-compose nor `docker compose` is installed; run `bash .ci/docker.sh`")
    busy = [a for a in (GATEWAY, "127.0.0.1:50051", "127.0.0.1:50052") if health(a, 0.5)]
    assert not busy, f"something already serves on {busy}: the stack's fixed ports must be free"
    file = tmp_path_factory.mktemp("compose") / "docker-compose.ci.rendered.yml"
    render(compose, file)
    s = Stack(compose, file, f"referee-test-{os.getpid()}")
    start = time.monotonic()
    try:
        s("up", "-d", "--no-build", *SERVICES)
        wait_for("every service healthy", lambda: all(docker_health(s.container(n)) == "healthy" for n in SERVICES),
                 120 - (time.monotonic() - start), s.logs)
        yield s
    finally:
        s("down", "--remove-orphans", "--timeout", "10")


MATH_SAMPLES = [
    {"completion": "<think>6 * 7</think><answer>\\boxed{42}</answer>", "reference": "42"},
    {"completion": "The answer is \\boxed{42}", "reference": "42"},  # right, but no format: gated to 0
    {"completion": "<think>6 + 7</think><answer>\\boxed{13}</answer>", "reference": "42"},  # format only: 0.1
]
CODE_SAMPLE = {
    "completion": "```python\ndef add(a, b):\n    return a + b\n```",
    "metadata": {"tests": ["assert add(1, 2) == 3", "assert add(-1, 1) == 0"]},
}


def test_the_stack_scores_a_composite_and_a_sandboxed_reward(stack):
    with SyncRewardClient(GATEWAY) as client:
        composite = client.score("math_with_format", MATH_SAMPLES)
        code = client.score("code", [CODE_SAMPLE])
    assert [s.status.name for s in composite] == ["OK"] * 3, composite
    assert [s.value for s in composite] == pytest.approx([1.0, 0.0, 0.1])
    assert composite[0].components["math"] == 1.0 and composite[0].components["format"] == 1.0
    assert (code[0].status.name, code[0].value) == ("OK", 1.0), code[0]


def test_the_gateway_reports_an_outage_and_recovers(stack):
    stack("stop", "verifiers")
    try:
        with SyncRewardClient(GATEWAY, timeout_s=10) as client:
            (down,) = client.score("math_with_format", MATH_SAMPLES[:1])
        assert down.status.name != "OK" and down.value is None, down
        assert "math" in down.reason and "verifiers" in down.reason, down.reason
        wait_for("the gateway to report NOT_SERVING", lambda: health(GATEWAY) == "NOT_SERVING", 30, stack.logs)
    finally:
        stack("start", "verifiers")
    wait_for("the gateway to recover", lambda: health(GATEWAY) == "SERVING", 60, stack.logs)
    with SyncRewardClient(GATEWAY) as client:
        (up,) = client.score("math_with_format", MATH_SAMPLES[:1])
    assert (up.status.name, up.value) == ("OK", 1.0), up
