"""The SandboxService with a backend that prepares jobs ahead of their slot: one waiting
job per slot is prepared, no more; a job whose caller leaves while it waits is cancelled
and never runs. The backend is a scripted fake (named so); the real one's staging is
tested in tests/sandbox/test_sandbox_prepare.py."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import grpc
import pytest
import pytest_asyncio

from referee.rewardsvc.config import ServerConfig
from referee.rewardsvc.server import ServerHandle, create_server
from referee.sandboxes.languages import Language, Toolchain
from referee.sandboxes.service import SandboxConfig, SandboxService
from referee.sandboxes.types import ExecResult, Job, PreparingBackend, Usage, Verdict
from referee.v1 import sandbox_pb2 as pb

pytestmark = pytest.mark.asyncio(loop_scope="module")


@dataclass(eq=False)
class FakePrepared:
    backend: FakePreparingBackend
    job: Job
    state: str = "prepared"

    def run(self) -> ExecResult:
        assert self.state == "prepared", self.state
        self.state = "running"
        self.backend.ran.append(self.job.code)
        if self.job.code.startswith("block"):
            self.backend.gate.wait(30)
        self.state = "done"
        return ExecResult(Verdict.OK, 0, None, self.job.code.encode(), b"", Usage(0.01, 0.01, 1024))

    def cancel(self) -> None:
        if self.state == "prepared":
            self.state = "cancelled"
            self.backend.cancelled.append(self.job.code)


@dataclass
class FakePreparingBackend:
    """A scripted stand-in for a backend that sets jobs up ahead (like bwrap's staging)."""

    name: str = "fake-preparing"
    gate: threading.Event = field(default_factory=threading.Event)
    prepared: list[FakePrepared] = field(default_factory=list)
    ran: list[str] = field(default_factory=list)
    cancelled: list[str] = field(default_factory=list)

    def prepare(self, job: Job, language: Language) -> FakePrepared:
        p = FakePrepared(self, job)
        self.prepared.append(p)
        return p

    def run(self, job: Job, language: Language) -> ExecResult:
        return self.prepare(job, language).run()

    def waiting(self) -> int:
        return sum(1 for p in self.prepared if p.state == "prepared")

    def close(self) -> None:
        self.gate.set()


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def served() -> AsyncIterator[tuple[ServerHandle, FakePreparingBackend]]:
    backend = FakePreparingBackend()
    assert isinstance(backend, PreparingBackend)
    handle = create_server(ServerConfig(port=0), [SandboxService(backend, SandboxConfig(slots=1, max_queue=8),
                                                                 [Toolchain("python", True, "Python 3")])])
    await handle.start()
    yield handle, backend
    await handle.stop(0)


async def _until(check, timeout_s: float = 10.0) -> None:
    for _ in range(int(timeout_s / 0.01)):
        if check():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("condition not reached")


async def test_one_waiting_job_per_slot_is_prepared_and_all_run_in_order(stub: Any, served: Any) -> None:
    backend = served[1]
    backend.gate.clear()
    calls = [asyncio.ensure_future(stub.Execute(pb.ExecuteRequest(language="python", code=f"block {i}"), timeout=30))
             for i in range(4)]
    try:
        await _until(lambda: len(backend.ran) == 1 and backend.waiting() == 1)
        await asyncio.sleep(0.2)
        assert backend.waiting() == 1 and len(backend.prepared) == 2  # the other two wait unprepared
    finally:
        backend.gate.set()
    answers = await asyncio.gather(*calls)
    assert [a.stdout for a in answers] == [f"block {i}".encode() for i in range(4)]
    order = [p.job.code for p in backend.prepared]
    assert backend.ran == order and sorted(order) == [f"block {i}" for i in range(4)]  # prepared, then run, in turn
    assert backend.cancelled == []


async def test_a_job_whose_caller_leaves_while_prepared_is_cancelled(stub: Any, served: Any) -> None:
    backend = served[1]
    backend.gate.clear()
    first = asyncio.ensure_future(stub.Execute(pb.ExecuteRequest(language="python", code="block first"), timeout=30))
    try:
        await _until(lambda: "block first" in backend.ran)
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.Execute(pb.ExecuteRequest(language="python", code="gave up"), timeout=0.5)
        assert err.value.code() is grpc.StatusCode.DEADLINE_EXCEEDED
        await _until(lambda: backend.cancelled == ["gave up"])
    finally:
        backend.gate.set()
    assert (await first).verdict == pb.VERDICT_OK
    after = await stub.Execute(pb.ExecuteRequest(language="python", code="next"), timeout=10)
    assert after.stdout == b"next" and "gave up" not in backend.ran
