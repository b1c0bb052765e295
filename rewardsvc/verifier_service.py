"""The RewardService backed by verifiers run in a worker pool: `referee serve verifiers`.

A request is checked whole before anything runs (unknown reward, bad params, too many
samples: INVALID_ARGUMENT naming the problem); per-sample problems (no completion, a
malformed metadata field) become per-sample INVALID_INPUT scores, so one bad sample
never costs the batch. Cache hits are answered from the parent process; the rest goes
to the pool, which enforces each reward's per-sample time limit. Async verifiers (the
I/O-bound kind, e.g. `code` waiting on a sandbox) run on the event loop instead.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import AsyncIterator
from typing import Any

import grpc

from referee.convert import sample_from_proto, struct_to_dict
from referee.registry import load_specs
from referee.rewardsvc.cache import ResultCache, params_digest, sample_key
from referee.rewardsvc.calling import call_async, is_async
from referee.rewardsvc.config import VerifierPoolConfig
from referee.rewardsvc.metrics import ServerMetrics
from referee.rewardsvc.pool import WorkerPool
from referee.rewardsvc.streaming import RequestError, invalid_request, score_stream, score_unary
from referee.rewardsvc.worker import INVALID_PARAMS, RawResult
from referee.types import InvalidParams
from referee.v1 import reward_pb2 as pb
from referee.v1 import reward_pb2_grpc
from referee.verifier import Verifier, validate_params

_STATUS = {
    "OK": pb.STATUS_OK,
    "INVALID_INPUT": pb.STATUS_INVALID_INPUT,
    "TIMEOUT": pb.STATUS_TIMEOUT,
    "ERROR": pb.STATUS_ERROR,
    "UNAVAILABLE": pb.STATUS_UNAVAILABLE,
}


class VerifierService(reward_pb2_grpc.RewardServiceServicer):
    """Serves the verifiers named by `specs` (see `referee.registry`)."""

    full_name = "referee.v1.RewardService"

    def __init__(self, specs: list[str], cfg: VerifierPoolConfig) -> None:
        self._cfg = cfg
        self._table: dict[str, Verifier] = load_specs(specs)
        if not self._table:
            raise ValueError(f"no verifiers to serve from {specs}")
        self._cache = ResultCache(cfg.cache_size)
        self._async_limit = asyncio.Semaphore(cfg.async_concurrency)
        self._metrics = ServerMetrics()  # replaced by the server's in attach()
        preload = sorted({type(v).__module__ for v in self._table.values()} |
                         {getattr(getattr(v, "fn", None), "__module__", "") for v in self._table.values()})
        self._pool = WorkerPool(
            specs,
            cfg.workers,
            chunk_size=cfg.chunk_size,
            memory_mb=cfg.worker_memory_mb,
            preload=[m for m in preload if m and m != "__main__"],
            on_restart=lambda reason: self._metrics.worker_restarts.labels(reason).inc(),
            on_queue=lambda depth: self._metrics.queue_depth.set(depth),
        )
        names = self._pool.start()
        if sorted(names) != sorted(self._table):
            self._pool.close()
            raise RuntimeError(f"workers loaded {names}, the server {sorted(self._table)}")

    @property
    def rewards(self) -> dict[str, Verifier]:
        return dict(self._table)

    def attach(self, server: grpc.aio.Server, metrics: ServerMetrics) -> None:
        self._metrics = metrics
        reward_pb2_grpc.add_RewardServiceServicer_to_server(self, server)

    async def close(self) -> None:
        await asyncio.get_running_loop().run_in_executor(None, self._pool.close)

    # --- RPCs -------------------------------------------------------------------------

    async def ListRewards(self, request: pb.ListRewardsRequest, context: Any) -> pb.ListRewardsResponse:
        return pb.ListRewardsResponse(rewards=[self._info(v) for v in self._table.values()])

    async def Score(self, request: pb.ScoreRequest, context: grpc.aio.ServicerContext) -> pb.ScoreResponse:
        return await score_unary(context, self.score(request), invalid_request)

    async def ScoreStream(
        self, request_iterator: AsyncIterator[pb.ScoreRequest], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.ScoreResponse]:
        """Scores up to STREAM_WINDOW requests of one stream at once; reading pauses
        beyond that, which is the stream's backpressure."""
        async for answer in score_stream(request_iterator, context, self.score, invalid_request):
            yield answer

    # --- scoring ----------------------------------------------------------------------

    async def score(self, req: pb.ScoreRequest) -> pb.ScoreResponse:
        v, params = self._check(req)
        prefix = params_digest(v.name, v.version, params)
        n = len(req.samples)
        scores: list[pb.Score | None] = [None] * n
        keys: list[bytes] = []
        todo: list[int] = []
        hits = 0
        for i, s in enumerate(req.samples):
            if not s.HasField("completion"):
                scores[i] = pb.Score(id=s.id, status=pb.STATUS_INVALID_INPUT,
                                     reason=f"sample {i} (id {s.id!r}) has no completion")
                keys.append(b"")
                continue
            key = sample_key(prefix, s) if self._cache.enabled else b""
            keys.append(key)
            hit = self._cache.get(key) if key else None
            if hit is None:
                todo.append(i)
                continue
            hits += 1
            status, value, reason, comps = hit
            scores[i] = pb.Score(id=s.id, status=_STATUS[status], value=value or 0.0,
                                 components=comps, reason=reason, cached=True)
        self._metrics.cache_hits.inc(hits)  # samples with no completion are neither
        self._metrics.cache_misses.inc(len(todo))
        if todo:
            timeout = min(v.timeout_s or self._cfg.timeout_s, self._cfg.max_timeout_s)
            if is_async(v):
                raw = await self._run_async(v, params, [req.samples[i] for i in todo], timeout)
            else:
                blobs = [req.samples[i].SerializeToString() for i in todo]
                raw = await self._pool.run(v.name, params, blobs, timeout)
            bad = next((r for r in raw if r[1] == INVALID_PARAMS), None)
            if bad is not None:
                raise RequestError(f"params: {bad[3]}")
            self._record(v.name, raw)
            for r in raw:
                i = todo[r[0]]
                if keys[i]:
                    self._cache.put(keys[i], r)
                scores[i] = _to_score(req.samples[i].id, r)
        # One labels().inc(k) per status, not per sample: at ~2 us a call, per-sample
        # counting was a fifth of the server's CPU on cheap verifiers (bench/reward_service.py).
        for status, k in Counter(s.status for s in scores).items():  # type: ignore[union-attr]
            self._metrics.samples.labels(v.name, pb.Status.Name(status)[7:]).inc(k)
        return pb.ScoreResponse(scores=scores, request_id=req.request_id, reward=v.name, version=v.version)

    async def _run_async(
        self, v: Verifier, params: dict[str, Any], samples: list[pb.Sample], timeout: float
    ) -> list[RawResult]:
        """I/O-bound verifiers run here, on the event loop, not in the worker pool:
        a worker process would sit idle while the verifier waits on its dependency."""

        async def one(index: int, msg: pb.Sample) -> RawResult:
            async with self._async_limit:
                started = time.perf_counter()
                try:
                    r = await call_async(v, sample_from_proto(msg), params, timeout)
                except InvalidParams as e:
                    return (index, INVALID_PARAMS, None, str(e), {}, 0.0)
                return (index, r.status.value, r.value, r.reason, r.components, time.perf_counter() - started)

        return list(await asyncio.gather(*(one(i, m) for i, m in enumerate(samples))))

    def _check(self, req: pb.ScoreRequest) -> tuple[Verifier, dict[str, Any]]:
        v = self._table.get(req.reward)
        if v is None:
            offered = ", ".join(sorted(self._table))
            raise RequestError(f"unknown reward {req.reward!r}; this service offers: {offered}")
        if len(req.samples) > self._cfg.max_batch_samples:
            raise RequestError(
                f"request has {len(req.samples)} samples; at most {self._cfg.max_batch_samples} "
                "per request (the referee client splits batches for you)"
            )
        try:
            params = validate_params(v, struct_to_dict(req.params))
            check = getattr(v, "check_params", None)
            if check is not None:
                check(params)
        except ValueError as e:
            raise RequestError(f"params: {e}") from e
        return v, params

    def _record(self, reward: str, raw: list[RawResult]) -> None:
        hist = self._metrics.sample_latency.labels(reward)
        for r in raw:
            hist.observe(r[5])

    def _info(self, v: Verifier) -> pb.RewardInfo:
        return pb.RewardInfo(
            name=v.name,
            kind=v.kind,
            version=v.version,
            description=v.description,
            timeout_s=min(v.timeout_s or self._cfg.timeout_s, self._cfg.max_timeout_s),
            params=[
                pb.RewardParam(name=p.name, type=p.type, description=p.description,
                               default_json=p.default_json(), required=p.required)
                for p in v.params
            ],
        )


def _to_score(sample_id: str, r: RawResult) -> pb.Score:
    _, status, value, reason, comps, cost = r
    score = pb.Score(
        id=sample_id,
        status=_STATUS[status],
        value=value if value is not None else 0.0,
        reason=reason,
        cost_s=cost,
    )
    if comps:  # passing an empty dict to the constructor still costs a map update (~1 us)
        score.components.update(comps)
    return score
