"""Servers for the client tests: real verifier servers, a scripted fake, helpers.

Everything binds port 0 on loopback and is stopped by its owner (the `servers` fixture,
or `ServerInThread.__exit__`).
"""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import Callable
from typing import Any

import grpc
from client_fixture_verifiers import SPECS

from referee.rewardsvc.config import ServerConfig, VerifierPoolConfig
from referee.rewardsvc.server import ServerHandle, Service, create_server
from referee.rewardsvc.verifier_service import VerifierService
from referee.v1 import reward_pb2 as pb
from referee.v1 import reward_pb2_grpc

SCORE = "/referee.v1.RewardService/Score"

# What the fake does with one Score call: a gRPC code to abort with, or one of
# "ok", "drop_last" (one score too few), "reverse" (ids out of order),
# "error_with_value" (ERROR statuses that still carry a value), "hang" (never answers).
Action = grpc.StatusCode | str


class FakeMisbehavingRewardService(reward_pb2_grpc.RewardServiceServicer):
    """A fake of a misbehaving RewardService server, for the client's failure paths.

    Each Score call takes the next action from `script`, then `default` (an action, or a
    function of the request returning one). It counts calls and keeps the requests it
    got; `cancelled` is set when a call it was still working on is cancelled by the peer.
    A well-behaved call ("ok") scores each sample as float(completion).
    """

    full_name = "referee.v1.RewardService"

    def __init__(
        self,
        script: list[Action] | None = None,
        default: Action | Callable[[pb.ScoreRequest], Action] = "ok",
    ) -> None:
        self.script = list(script or [])
        self.default = default
        self.requests: list[pb.ScoreRequest] = []
        self.list_calls = 0
        self.cancelled = asyncio.Event()

    @property
    def calls(self) -> int:
        return len(self.requests)

    def attach(self, server: grpc.aio.Server, metrics: Any) -> None:
        reward_pb2_grpc.add_RewardServiceServicer_to_server(self, server)

    async def close(self) -> None:
        pass

    async def Score(
        self, request: pb.ScoreRequest, context: grpc.aio.ServicerContext
    ) -> pb.ScoreResponse:
        self.requests.append(request)
        if self.script:
            action = self.script.pop(0)
        else:
            action = self.default(request) if callable(self.default) else self.default
        if isinstance(action, grpc.StatusCode):
            await context.abort(action, f"scripted {action.name}")
        scores = [
            pb.Score(id=s.id, status=pb.STATUS_OK, value=float(s.completion))
            for s in request.samples
        ]
        if action == "hang":
            try:
                await asyncio.sleep(60)
            except asyncio.CancelledError:
                self.cancelled.set()
                raise
        elif action == "drop_last":
            scores = scores[:-1]
        elif action == "reverse":
            scores.reverse()
        elif action == "error_with_value":
            scores = [
                pb.Score(id=s.id, status=pb.STATUS_ERROR, value=0.7, reason="scripted")
                for s in request.samples
            ]
        else:
            assert action == "ok", action
        return pb.ScoreResponse(scores=scores, reward=request.reward, version="1")

    async def ListRewards(
        self, request: pb.ListRewardsRequest, context: Any
    ) -> pb.ListRewardsResponse:
        self.list_calls += 1
        return pb.ListRewardsResponse(
            rewards=[pb.RewardInfo(name="fake", kind="custom", version="1")]
        )


def verifier_service(**pool: Any) -> VerifierService:
    """A real VerifierService over the fixture verifiers, one worker process."""
    return VerifierService(SPECS, VerifierPoolConfig(workers=1, **pool))


async def start(services: list[Service], **cfg: Any) -> ServerHandle:
    try:
        handle = create_server(ServerConfig(port=0, **cfg), services)
    except BaseException:
        for s in services:
            await s.close()
        raise
    await handle.start()
    return handle


class Servers:
    """The servers one test started; stops whatever is still running at teardown."""

    def __init__(self) -> None:
        self.running: list[ServerHandle] = []

    async def real(self, pool: dict[str, Any] | None = None, **cfg: Any) -> ServerHandle:
        return await self._keep(start([verifier_service(**(pool or {}))], **cfg))

    async def fake(self, fake: FakeMisbehavingRewardService, **cfg: Any) -> ServerHandle:
        return await self._keep(start([fake], **cfg))

    async def stop(self, handle: ServerHandle) -> None:
        self.running.remove(handle)
        await handle.stop(0)

    async def stop_all(self) -> None:
        while self.running:
            await self.stop(self.running[-1])

    async def _keep(self, coro: Any) -> ServerHandle:
        handle = await coro
        self.running.append(handle)
        return handle


class ServerInThread:
    """A real verifier server on its own event loop in a thread, for synchronous tests."""

    def __init__(self, **cfg: Any) -> None:
        self._cfg = cfg
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="test-server", daemon=True
        )

    def __enter__(self) -> ServerHandle:
        self._thread.start()

        async def make() -> ServerHandle:
            return await start([verifier_service()], **self._cfg)

        try:
            self.handle = asyncio.run_coroutine_threadsafe(make(), self._loop).result(60)
        except BaseException:
            self._shutdown()
            raise
        return self.handle

    def __exit__(self, *exc: object) -> None:
        try:
            asyncio.run_coroutine_threadsafe(self.handle.stop(0), self._loop).result(60)
        finally:
            self._shutdown()

    def _shutdown(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()


def dead_address() -> str:
    """A loopback address where nothing listens (the port was free a moment ago)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"127.0.0.1:{port}"


def score_calls(handle: ServerHandle, code: str = "OK") -> float:
    """Score calls the server finished with `code`, from its own metrics registry."""
    value = handle.metrics.registry.get_sample_value(
        "referee_requests_total", {"method": SCORE, "code": code}
    )
    return value or 0.0


async def wait_until(cond: Callable[[], bool], timeout_s: float = 10.0) -> None:
    """Polls `cond` until it holds; fails the test after `timeout_s` (no blind sleeps)."""
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout_s
    while not cond():
        if loop.time() > end:
            raise AssertionError(f"condition not met within {timeout_s}s")
        await asyncio.sleep(0.01)
