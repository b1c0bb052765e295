"""The SandboxService in front of any backend: request checks, slots and backpressure,
backend failures as SANDBOX_ERROR. The backend here is a scripted fake (named so):
isolation itself is tested against the real backends in tests/sandbox*."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
import pytest_asyncio

from referee.rewardsvc.config import ServerConfig
from referee.rewardsvc.server import ServerHandle, create_server
from referee.sandboxes.client import SandboxCallError, SandboxClient, SandboxUnavailable
from referee.sandboxes.languages import Language, Toolchain
from referee.sandboxes.service import SandboxConfig, SandboxService
from referee.sandboxes.types import ExecResult, File, Job, Limits, Usage, Verdict
from referee.v1 import sandbox_pb2 as pb

pytestmark = pytest.mark.asyncio(loop_scope="module")


class FakeBackend:
    """A scripted stand-in for a sandbox backend: echoes the code, or blocks, or fails."""

    name = "fake"

    def __init__(self) -> None:
        self.gate = threading.Event()
        self.gate.set()
        self.running = 0
        self.seen: list[Job] = []

    def run(self, job: Job, language: Language) -> ExecResult:
        self.seen.append(job)
        self.running += 1
        try:
            if job.code == "block":
                self.gate.wait(30)
            if job.code == "explode":
                raise OSError("bwrap: setting up uid map: Permission denied")
            return ExecResult(Verdict.OK, 0, None, job.code.encode() + job.stdin, b"", Usage(0.01, 0.01, 1024))
        finally:
            self.running -= 1

    def close(self) -> None:
        self.gate.set()


TOOLS = [Toolchain("python", True, "Python 3.11"), Toolchain("cpp", False, "g++ not found on PATH")]


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def served() -> AsyncIterator[tuple[ServerHandle, FakeBackend]]:
    backend = FakeBackend()
    cfg = SandboxConfig(slots=1, max_queue=1, max_code_bytes=1000, max_files=2, max_files_bytes=100)
    handle = create_server(ServerConfig(port=0), [SandboxService(backend, cfg, TOOLS)])
    await handle.start()
    yield handle, backend
    await handle.stop(0)


async def test_runs_with_server_default_limits(stub: Any, served: Any) -> None:
    resp = await stub.Execute(pb.ExecuteRequest(language="py", code="print(1)", stdin=b"in"), timeout=10)
    assert resp.verdict == pb.VERDICT_OK and resp.stdout == b"print(1)in"
    assert served[1].seen[-1].limits == Limits()  # zeros became the server's defaults
    await stub.Execute(pb.ExecuteRequest(language="python", code="x", limits=pb.Limits(wall_time_s=2.5)), timeout=10)
    assert served[1].seen[-1].limits.wall_time_s == 2.5


@pytest.mark.parametrize(
    ("request_kw", "message"),
    [
        ({"language": "cobol", "code": "x"}, "unknown language 'cobol'"),
        ({"language": "", "code": "x"}, "language is empty"),
        ({"language": "cpp", "code": "x"}, "not available on this sandbox: g++ not found"),
        ({"language": "python", "code": "   \n"}, "code is empty"),
        ({"language": "python", "code": "x" * 1001}, "code is 1001 bytes"),
        ({"language": "python", "code": "x", "limits": pb.Limits(memory_bytes=2**40)}, "limits.memory_bytes"),
        ({"language": "python", "code": "x", "limits": pb.Limits(wall_time_s=-1)}, "limits.wall_time_s must be >= 0"),
        ({"language": "python", "code": "x", "files": [pb.File(path="../etc/passwd")]}, "files[0]"),
        ({"language": "python", "code": "x", "files": [pb.File(path="/abs")]}, "files[0]"),
        ({"language": "python", "code": "x", "files": [pb.File(path="main.py")]}, "overwrite the source"),
        ({"language": "python", "code": "x", "files": [pb.File(path=f"f{i}") for i in range(3)]}, "3 files"),
        ({"language": "python", "code": "x", "files": [pb.File(path="a", content=b"x" * 101)]}, "101 bytes"),
    ],
)
async def test_bad_requests_are_refused_by_name(stub: Any, request_kw: dict, message: str) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.Execute(pb.ExecuteRequest(**request_kw), timeout=10)
    assert err.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert message in err.value.details()
    ok = await stub.Execute(pb.ExecuteRequest(language="python", code="still here"), timeout=10)
    assert ok.verdict == pb.VERDICT_OK


async def test_backend_failure_is_a_sandbox_error(stub: Any) -> None:
    resp = await stub.Execute(pb.ExecuteRequest(language="python", code="explode"), timeout=10)
    assert resp.verdict == pb.VERDICT_SANDBOX_ERROR
    assert "OSError" in resp.message and "uid map" in resp.message


async def test_full_slots_and_queue_get_resource_exhausted(stub: Any, served: Any) -> None:
    backend = served[1]
    backend.gate.clear()
    try:
        first = asyncio.ensure_future(stub.Execute(pb.ExecuteRequest(language="python", code="block"), timeout=30))
        for _ in range(200):
            if backend.running:
                break
            await asyncio.sleep(0.01)
        queued = asyncio.ensure_future(stub.Execute(pb.ExecuteRequest(language="python", code="q"), timeout=30))
        await asyncio.sleep(0.2)
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.Execute(pb.ExecuteRequest(language="python", code="third"), timeout=10)
        assert err.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "slots are busy" in err.value.details()
    finally:
        backend.gate.set()
    assert (await first).verdict == pb.VERDICT_OK
    assert (await queued).stdout == b"q"


async def test_list_languages_reports_missing_toolchains(stub: Any) -> None:
    resp = await stub.ListLanguages(pb.ListLanguagesRequest(), timeout=10)
    assert resp.backend == "fake"
    assert [(x.name, x.available) for x in resp.languages] == [("python", True), ("cpp", False)]


async def test_client_round_trip_and_errors(served: Any) -> None:
    async with SandboxClient(served[0].address, timeout_s=10) as client:
        r = await client.execute(Job("python", "hi", stdin=b"!", files=(File("data.txt", b"d"),)))
        assert (r.verdict, r.stdout, r.exit_code, r.signal) == (Verdict.OK, b"hi!", 0, None)
        with pytest.raises(SandboxCallError) as err:
            await client.execute(Job("cobol", "x"))
        assert err.value.code is grpc.StatusCode.INVALID_ARGUMENT
        backend, tools = await client.languages()
        assert backend == "fake" and tools == TOOLS


async def test_no_sandbox_is_unavailable_not_a_verdict() -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    async with SandboxClient(f"127.0.0.1:{port}", timeout_s=1.0) as client:
        with pytest.raises(SandboxUnavailable):
            await client.execute(Job("python", "print(1)"))
