"""TLS: a client that trusts the server's certificate scores; a plaintext one cannot."""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import grpc
import pytest
import pytest_asyncio
from grpc_health.v1 import health_pb2, health_pb2_grpc

from referee.rewardsvc.client import RewardClient
from referee.rewardsvc.config import VerifierPoolConfig
from referee.rewardsvc.server import ServerHandle
from referee.types import Status

pytestmark = pytest.mark.asyncio(loop_scope="module")


@pytest.fixture(scope="module")
def cert(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 and localhost, made by the openssl CLI."""
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("the openssl command is not installed; cannot make a test certificate")
    d = tmp_path_factory.mktemp("tls")
    crt, key = d / "server.crt", d / "server.key"
    subprocess.run(
        [
            openssl,
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "2",
            "-keyout",
            str(key),
            "-out",
            str(crt),
            "-subj",
            "/CN=localhost",
            "-addext",
            "subjectAltName=DNS:localhost,IP:127.0.0.1",
        ],
        check=True,
        capture_output=True,
        timeout=60,
    )
    return crt, key


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def server(inproc_servers: Any, cert: tuple[Path, Path]) -> ServerHandle:
    crt, key = cert
    return await inproc_servers(pool=VerifierPoolConfig(workers=1), tls_cert=crt, tls_key=key)


@pytest.mark.parametrize("as_bytes", [False, True])
async def test_trusting_client_scores(
    server: ServerHandle, cert: tuple[Path, Path], as_bytes: bool
) -> None:
    crt = cert[0].read_bytes() if as_bytes else cert[0]
    async with RewardClient(server.address, tls_ca=crt, timeout_s=30) as c:
        scores = await c.score("scaled", [{"id": "t", "completion": "abcd"}], {"scale": 0.5})
        rewards = await c.list_rewards()
    assert [(s.id, s.status, s.value) for s in scores] == [("t", Status.OK, 2.0)]
    assert "scaled" in {r.name for r in rewards}


async def test_plaintext_client_cannot_score(server: ServerHandle) -> None:
    t0 = time.monotonic()
    async with RewardClient(server.address, timeout_s=1.5) as c:
        scores = await c.score("scaled", [{"id": "p", "completion": "abcd"}])
    elapsed = time.monotonic() - t0
    assert len(scores) == 1
    s = scores[0]
    assert s.id == "p" and s.value is None
    assert s.status is Status.UNAVAILABLE, s
    assert "UNAVAILABLE" in s.reason
    assert elapsed < 10


async def test_health_over_tls(server: ServerHandle, cert: tuple[Path, Path]) -> None:
    creds = grpc.ssl_channel_credentials(root_certificates=cert[0].read_bytes())
    async with grpc.aio.secure_channel(server.address, creds) as ch:
        h = await health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=10)
    assert h.status == health_pb2.HealthCheckResponse.SERVING
