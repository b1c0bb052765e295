"""Fixtures for the container tests: the images `.ci/docker.sh` builds, started with
testcontainers (Ryuk off: its image would come from a registry) or docker-compose, on
the host network so that every call stays on loopback (DESIGN.md section 7).

Everything here is skipped, with the reason, where no Docker engine answers or an image
is missing; `bash .ci/docker.sh` provides both.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from contextlib import closing

import pytest
from container_helpers import SANDBOX_IMAGE, SERVICES_IMAGE, docker_problem


@pytest.fixture(scope="session")
def testcontainers_ready() -> None:
    problem = docker_problem(SERVICES_IMAGE, SANDBOX_IMAGE)
    if problem:
        pytest.skip(problem)
    from testcontainers.core.config import testcontainers_config

    testcontainers_config.ryuk_disabled = True  # no registry to pull testcontainers/ryuk from



@pytest.fixture
def tcp_listener() -> Iterator[socket.socket]:
    """A listening TCP socket on 127.0.0.1 (a job must never reach it)."""
    with closing(socket.socket()) as s:
        s.bind(("127.0.0.1", 0))
        s.listen(8)
        yield s
