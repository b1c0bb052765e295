"""Helpers of the container tests (a module of its own, with a name no other test
directory uses, so that test modules can import it)."""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Callable

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

SERVICES_IMAGE = os.environ.get("REFEREE_IMAGE", "referee:dev")
SANDBOX_IMAGE = os.environ.get("REFEREE_SANDBOX_IMAGE", "referee-sandbox:dev")



def docker_problem(*images: str) -> str | None:
    """Why these tests cannot run here, or None."""
    try:
        info = subprocess.run(["docker", "info"], capture_output=True, text=True, timeout=20)
    except FileNotFoundError:
        return "no docker CLI on PATH; run `bash .ci/docker.sh`"
    except subprocess.TimeoutExpired:
        return "`docker info` did not answer within 20 s"
    if info.returncode != 0:
        return f"no Docker engine answers ({info.stderr.strip()[:200]}); run `bash .ci/docker.sh`"
    for image in images:
        if subprocess.run(["docker", "image", "inspect", image], capture_output=True, timeout=20).returncode:
            return f"image {image} is absent; run `bash .ci/docker.sh`"
    return None



def health(address: str, timeout_s: float = 2.0) -> str:
    """The gRPC health status of the whole server ("" when nothing answers)."""
    with grpc.insecure_channel(address) as channel:
        try:
            resp = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=timeout_s)
        except grpc.RpcError:
            return ""
    return health_pb2.HealthCheckResponse.ServingStatus.Name(resp.status)


def wait_for(what: str, ready: Callable[[], bool], timeout_s: float, logs: Callable[[], str] = str) -> float:
    """Polls `ready` until true; returns the seconds it took, fails with `logs()` after."""
    start = time.monotonic()
    while not ready():
        if time.monotonic() - start > timeout_s:
            pytest.fail(f"{what} not within {timeout_s:.0f} s\n{logs()[-4000:]}")
        time.sleep(0.5)
    return time.monotonic() - start


def docker_health(container: str) -> str:
    """Docker's own verdict from the image's HEALTHCHECK: starting, healthy, unhealthy."""
    out = subprocess.run(["docker", "inspect", "-f", "{{.State.Health.Status}}", container],
                         capture_output=True, text=True, timeout=20)
    return out.stdout.strip()

