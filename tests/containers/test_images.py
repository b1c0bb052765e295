"""The built images, started with testcontainers as the verifiers and the sandbox
service: scored samples and programs over gRPC, the image's HEALTHCHECK, the sandbox
container's attack-suite core cases (fork bomb, memory, network, file read) contained
inside the container too, and what must not be in an image."""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from container_helpers import (
    SANDBOX_IMAGE,
    SERVICES_IMAGE,
    docker_health,
    health,
    wait_for,
)

from referee.rewardsvc.client import SyncRewardClient
from referee.sandboxes import seccomp_profile
from referee.sandboxes.client import SandboxClient
from referee.sandboxes.types import ExecResult, Job, Limits, MiB, Verdict
from referee.testing import free_port

pytestmark = pytest.mark.docker

SECRET = "referee-test-secret-4e1f"


@dataclass
class Running:
    address: str
    container: object  # testcontainers DockerContainer

    @property
    def id(self) -> str:
        return self.container.get_wrapped_container().id

    def logs(self) -> str:
        out, err = self.container.get_logs()
        return (out + err).decode(errors="replace")


def _start(image: str, command: list[str], port: int, env: dict[str, str] | None = None,
           tmpfs: dict[str, str] | None = None, **kwargs) -> Iterator[Running]:
    from testcontainers.core.container import DockerContainer

    c = DockerContainer(image).with_command(command).with_envs(PORT=str(port), **(env or {}))
    for path, options in (tmpfs or {}).items():
        c = c.with_tmpfs_mount(path, options)
    c = c.with_kwargs(network_mode="host", **kwargs)
    c.start()
    running = Running(f"127.0.0.1:{port}", c)
    try:
        wait_for(f"{image} serving on {running.address}", lambda: health(running.address) == "SERVING", 90,
                 running.logs)
        yield running
    finally:
        c.stop()


@pytest.fixture(scope="module")
def verifiers(testcontainers_ready) -> Iterator[Running]:
    port = free_port()
    yield from _start(SERVICES_IMAGE, ["serve", "verifiers", "--host", "127.0.0.1", "--port", str(port)], port)


@pytest.fixture(scope="module")
def sandbox(testcontainers_ready) -> Iterator[Running]:
    """The sandbox image as compose runs it: the bwrap seccomp profile (its JSON, as the
    docker CLI and compose send it), no AppArmor profile, no-new-privileges, every
    capability dropped, and a secret in the server's environment."""
    port = free_port()
    yield from _start(
        SANDBOX_IMAGE, ["serve", "sandbox", "--host", "127.0.0.1", "--port", str(port), "--backend", "bwrap"], port,
        security_opt=[f"seccomp={json.dumps(seccomp_profile.container_profile())}", "apparmor=unconfined",
                      "no-new-privileges:true"],
        cap_drop=["ALL"], tmpfs={"/tmp": "size=256m"}, pids_limit=4096, mem_limit="4g",
        env={"REFEREE_TEST_SECRET": SECRET})


def execute(sandbox: Running, language: str, code: str, **limits) -> ExecResult:
    async def go() -> ExecResult:
        async with SandboxClient(sandbox.address, timeout_s=60) as client:
            return await client.execute(Job(language, code, limits=Limits(**limits)))

    return asyncio.run(go())


def job_processes(sandbox: Running) -> list[str]:
    """Command lines of the container's processes that belong to a job: anything but the
    server and its warm bwraps (which wait for a job, running nothing of one)."""
    out = subprocess.run(["docker", "top", sandbox.id, "-o", "pid,args"], capture_output=True, text=True,
                         timeout=20, check=True).stdout.splitlines()[1:]
    return [line for line in out if not re.search(r"referee serve sandbox|\bbwrap\b.*--args", line)
            and "sh -c c=$" not in line]


# --- the verifiers image ------------------------------------------------------------


def test_verifiers_image_scores_over_grpc(verifiers):
    samples = [{"completion": "The answer is \\boxed{12}", "reference": "12"},
               {"completion": "The answer is \\boxed{13}", "reference": "12"}]
    with SyncRewardClient(verifiers.address) as client:
        scores = client.score("math", samples)
        names = {r.name for r in client.list_rewards()}
    assert [(s.status.name, s.value) for s in scores] == [("OK", 1.0), ("OK", 0.0)]
    assert {"math", "format", "code", "ifeval", "tool_call"} <= names


def test_verifiers_image_healthcheck_reports_healthy(verifiers):
    wait_for("docker's HEALTHCHECK to pass", lambda: docker_health(verifiers.id) == "healthy", 60, verifiers.logs)


def test_verifiers_image_runs_unprivileged(verifiers):
    inspect = json.loads(subprocess.run(["docker", "inspect", verifiers.id], capture_output=True, text=True,
                                        check=True, timeout=20).stdout)[0]
    assert inspect["Config"]["User"] == "10001:10001"


# --- the sandbox image --------------------------------------------------------------


def test_sandbox_image_runs_every_language(sandbox):
    hello = {"python": "print('hello')", "cpp": '#include <iostream>\nint main() { std::cout << "hello\\n"; }',
             "c": '#include <stdio.h>\nint main(void) { puts("hello"); }', "javascript": "console.log('hello')",
             "bash": "echo hello"}
    for language, code in hello.items():
        r = execute(sandbox, language, code)
        assert (r.verdict, r.stdout) == (Verdict.OK, b"hello\n"), (language, r)


def test_fork_bomb_is_contained_in_the_container(sandbox):
    r = execute(sandbox, "python", "import os\nwhile True:\n    os.fork()", wall_time_s=3.0, max_processes=32)
    assert r.verdict in (Verdict.RUNTIME_ERROR, Verdict.TIME_LIMIT), r
    assert health(sandbox.address) == "SERVING"
    wait_for("the fork bomb's processes to be gone", lambda: job_processes(sandbox) == [], 10, sandbox.logs)


def test_memory_bomb_is_contained_in_the_container(sandbox):
    code = "x = []\nwhile True:\n    x.append(bytearray(16 * 1024 * 1024))"
    r = execute(sandbox, "python", code, memory_bytes=128 * MiB, wall_time_s=10.0)
    assert r.verdict is Verdict.MEMORY_LIMIT, r
    assert health(sandbox.address) == "SERVING"
    assert job_processes(sandbox) == []


def test_network_is_unreachable_from_a_job_in_the_container(sandbox, tcp_listener):
    code = f"""
import socket
for addr in [("127.0.0.1", {tcp_listener.getsockname()[1]}), ("8.8.8.8", 53)]:
    try:
        socket.create_connection(addr, timeout=2).close()
        print("connected", addr)
    except OSError as e:
        print("refused", addr, type(e).__name__)
"""
    r = execute(sandbox, "python", code, wall_time_s=10.0)
    assert r.verdict is Verdict.OK, r
    assert b"connected" not in r.stdout and r.stdout.count(b"refused") == 2, r.stdout
    # The container shares the host's network (host mode): only the job's own empty
    # network namespace and seccomp filter stand between it and the listener.
    tcp_listener.setblocking(False)
    with pytest.raises(BlockingIOError):
        tcp_listener.accept()


def test_files_and_secrets_of_the_container_are_unreadable_from_a_job(sandbox):
    code = """
import os
for path in ["/etc/shadow", "/opt/venv/bin/referee", "/proc/1/environ"]:
    try:
        print(path, "READ", open(path, "rb").read(200))
    except OSError as e:
        print(path, "denied", type(e).__name__)
print("env", sorted(os.environ))
"""
    r = execute(sandbox, "python", code)
    assert r.verdict is Verdict.OK, r
    out = r.stdout.decode()
    assert "READ" not in out and SECRET not in out and "REFEREE_TEST_SECRET" not in out, out


def test_sandbox_image_describes_its_isolation(sandbox):
    async def go():
        async with SandboxClient(sandbox.address) as client:
            return await client.languages()

    backend, toolchains = asyncio.run(go())
    assert backend == "bwrap"
    assert all(t.available for t in toolchains), toolchains
    # No systempaths=unconfined (docker-compose 1.29 cannot ask for it): the server saw
    # that the kernel refuses jobs a /proc of their own and gives them none.
    assert '"proc": "none' in sandbox.logs(), sandbox.logs()


# --- what is in the images ----------------------------------------------------------


def _image_has(image: str, script: str) -> str:
    return subprocess.run(["docker", "run", "--rm", "--network", "none", "--entrypoint", "sh", image, "-c", script],
                          capture_output=True, text=True, timeout=120).stdout


@pytest.mark.parametrize("image", [SERVICES_IMAGE, SANDBOX_IMAGE])
def test_images_hold_no_tests_caches_or_pip(testcontainers_ready, image):
    found = _image_has(image, "ls -d /src /tests /root/.cache /home/referee/.cache /opt/venv/bin/pip "
                              "/wheelhouse 2>/dev/null; find /opt/venv -name __pycache__ | head -3; "
                              "find / -xdev -name '*.whl' 2>/dev/null | head -3")
    assert found.strip() == "", found


def test_services_image_has_no_compilers_or_torch(testcontainers_ready):
    found = _image_has(SERVICES_IMAGE, "command -v gcc g++ cc node; ls -d /opt/venv/lib/python3*/site-packages/torch "
                                       "2>/dev/null")
    assert found.strip() == "", found
