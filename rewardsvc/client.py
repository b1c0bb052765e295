"""The client the trainer and the CLI use to ask reward services for scores.

What it guarantees, whatever the servers do:

- one `Score` per input sample, in input order, each with a status; a sample that could
  not be scored carries a non-OK status and `value=None`, never a silent 0;
- a deadline on every call (`timeout_s` covers the whole call, retries included);
- retries only where retrying can help: `UNAVAILABLE` or a `CANCELLED` sent by the
  server (moving to another replica) and `RESOURCE_EXHAUSTED` from a busy server (after
  a jittered exponential backoff);
- several replica addresses: each chunk goes to the replica with the fewest calls in
  flight, and a replica that answers UNAVAILABLE (or cancels the call: it is shutting
  down) is avoided for a while, the call moving to another (failover);
- large batches split into chunks (by count and by encoded size) sent concurrently.

When every retry fails for transport reasons, the chunk's samples come back as
`UNAVAILABLE` (or `TIMEOUT` when the last attempt ran out of time) with the cause in
`reason`, so a trainer masks them. Errors that no retry can fix (INVALID_ARGUMENT,
UNAUTHENTICATED, UNIMPLEMENTED, ...) raise `RewardCallError`: they are bugs or
misconfiguration. `list_rewards`, having no samples to mark, raises it for both.

>>> with SyncRewardClient("127.0.0.1:50051") as c:          # doctest: +SKIP
...     [s.value for s in c.score("exact", [{"completion": "4", "reference": "4"}])]
[1.0]
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Coroutine, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import grpc

from referee.convert import dict_to_struct, sample_from_json, sample_to_proto, score_from_proto
from referee.rewardsvc.replicas import CallError, GaveUp, ReplicaSet
from referee.types import Sample, Score, Status
from referee.v1 import reward_pb2 as pb
from referee.v1 import reward_pb2_grpc

T = TypeVar("T")
SampleLike = Sample | Mapping[str, Any] | pb.Sample


class RewardCallError(CallError):
    """A reward call failed in a way retrying cannot fix; `code` is the gRPC status code."""


@dataclass(frozen=True)
class RewardParamInfo:
    name: str
    type: str
    description: str
    default_json: str
    required: bool


@dataclass(frozen=True)
class RewardInfo:
    """One reward a service offers, as ListRewards describes it."""

    name: str
    kind: str
    version: str
    description: str
    timeout_s: float
    params: tuple[RewardParamInfo, ...] = field(default_factory=tuple)


class RewardClient:
    """Async client over one or more replicas of a RewardService."""

    def __init__(
        self,
        targets: str | Sequence[str],
        *,
        token: str | None = None,
        tls: bool = False,
        tls_ca: Path | bytes | None = None,
        timeout_s: float = 120.0,
        chunk_size: int = 256,
        max_concurrent_chunks: int = 8,
        max_message_bytes: int = 64 * 1024 * 1024,
        backoff_base_s: float = 0.05,
        backoff_max_s: float = 2.0,
    ) -> None:
        if timeout_s <= 0 or chunk_size < 1 or max_concurrent_chunks < 1:
            raise ValueError("timeout_s must be > 0, chunk_size and max_concurrent_chunks >= 1")
        self.timeout_s = timeout_s
        self._chunk_size = chunk_size
        self._max_bytes = max_message_bytes
        self._limit = asyncio.Semaphore(max_concurrent_chunks)
        self._metadata = (("authorization", f"Bearer {token}"),) if token else ()
        self._set = ReplicaSet(
            targets,
            reward_pb2_grpc.RewardServiceStub,
            tls=tls,
            tls_ca=tls_ca,
            max_message_bytes=max_message_bytes,
            backoff_base_s=backoff_base_s,
            backoff_max_s=backoff_max_s,
            error_type=RewardCallError,
        )

    @property
    def targets(self) -> list[str]:
        return self._set.targets

    async def __aenter__(self) -> RewardClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        await self._set.close()

    async def list_rewards(self, timeout_s: float | None = None) -> list[RewardInfo]:
        deadline = time.monotonic() + (timeout_s or self.timeout_s)
        resp = await self._set.call_or_raise(lambda stub, t: stub.ListRewards(
            pb.ListRewardsRequest(), timeout=t, metadata=self._metadata), deadline)
        return [
            RewardInfo(r.name, r.kind, r.version, r.description, r.timeout_s, tuple(
                RewardParamInfo(p.name, p.type, p.description, p.default_json, p.required)
                for p in r.params))
            for r in resp.rewards
        ]

    async def score(
        self,
        reward: str,
        samples: Sequence[SampleLike],
        params: Mapping[str, Any] | None = None,
        *,
        timeout_s: float | None = None,
    ) -> list[Score]:
        """Scores `samples` with `reward`; one Score per sample, in input order."""
        msgs = [_as_proto(s, i) for i, s in enumerate(samples)]
        params_struct = dict_to_struct(params or {}, "params")
        deadline = time.monotonic() + (timeout_s or self.timeout_s)
        chunks = self._chunks(msgs)
        tasks = [asyncio.ensure_future(self._score_chunk(reward, params_struct, c, deadline))
                 for c in chunks]
        try:
            parts = await asyncio.gather(*tasks)
        except BaseException:
            # One chunk raised (or we were cancelled): the others' answers are of no use,
            # so stop their calls instead of leaving them to hold server capacity.
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            raise
        return [s for part in parts for s in part]

    # --- internals --------------------------------------------------------------------

    def _chunks(self, msgs: list[pb.Sample]) -> list[list[pb.Sample]]:
        budget = int(self._max_bytes * 0.9) - 1024
        out: list[list[pb.Sample]] = []
        cur: list[pb.Sample] = []
        size = 0
        for m in msgs:
            n = m.ByteSize() + 8
            if n > budget:
                raise ValueError(
                    f"sample {m.id!r} encodes to {n} bytes, over the {self._max_bytes} byte message limit"
                )
            if cur and (len(cur) >= self._chunk_size or size + n > budget):
                out.append(cur)
                cur, size = [], 0
            cur.append(m)
            size += n
        if cur:
            out.append(cur)
        return out

    async def _score_chunk(
        self, reward: str, params: Any, chunk: list[pb.Sample], deadline: float
    ) -> list[Score]:
        req = pb.ScoreRequest(reward=reward, params=params, samples=chunk)
        async with self._limit:
            try:
                resp = await self._set.call(
                    lambda stub, t: stub.Score(req, timeout=t, metadata=self._metadata), deadline
                )
            except GaveUp as e:
                status = Status.TIMEOUT if e.code is grpc.StatusCode.DEADLINE_EXCEEDED else Status.UNAVAILABLE
                return [Score(m.id, status, None, reason=str(e)) for m in chunk]
        if len(resp.scores) != len(chunk):
            raise RewardCallError(grpc.StatusCode.INTERNAL,
                                  f"sent {len(chunk)} samples, got {len(resp.scores)} scores", "server")
        scores = [score_from_proto(s) for s in resp.scores]
        for m, s in zip(chunk, scores, strict=True):
            if m.id != s.id:
                raise RewardCallError(grpc.StatusCode.INTERNAL,
                                      f"scores out of order: sample {m.id!r} got score {s.id!r}", "server")
        return scores


def _as_proto(s: SampleLike, index: int) -> pb.Sample:
    if isinstance(s, pb.Sample):
        return s
    if isinstance(s, Sample):
        try:
            return sample_to_proto(s)
        except (ValueError, TypeError) as e:  # e.g. a non-JSON metadata value, a non-str field
            raise ValueError(f"sample {index} (id {s.id!r}): {e}") from e
    if not isinstance(s, Mapping):
        raise ValueError(
            f"sample {index}: expected a dict, referee.Sample or referee.v1 Sample, got {type(s).__name__}"
        )
    return sample_to_proto(sample_from_json(dict(s), f"sample {index}"))


class SyncRewardClient:
    """Blocking facade over `RewardClient`, for scripts and synchronous trainers.

    It runs a private event loop in a daemon thread; every method blocks until done.
    """

    def __init__(self, targets: str | Sequence[str], **kwargs: Any) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="reward-client", daemon=True)
        self._thread.start()

        async def make() -> RewardClient:
            return RewardClient(targets, **kwargs)

        try:
            self._client = self._run(make())
        except BaseException:  # bad arguments: stop the loop thread before raising
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(5)
            self._loop.close()
            raise

    def _run(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result()

    def score(self, reward: str, samples: Sequence[SampleLike],
              params: Mapping[str, Any] | None = None, *, timeout_s: float | None = None) -> list[Score]:
        return self._run(self._client.score(reward, samples, params, timeout_s=timeout_s))

    def list_rewards(self, timeout_s: float | None = None) -> list[RewardInfo]:
        return self._run(self._client.list_rewards(timeout_s))

    def close(self) -> None:
        if self._loop.is_running():
            self._run(self._client.close())
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(5)
        self._loop.close()

    def __enter__(self) -> SyncRewardClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
