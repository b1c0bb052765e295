"""The reward gateway: `referee serve gateway --config FILE`.

One RewardService address for a trainer, in front of any number of reward services
(verifiers, reward models, judges, other gateways: anything speaking RewardService).
Each configured reward (see `gateway_config`) is either

- a **route**: the request goes to one upstream reward (config params as defaults under
  the request's), and its scores come back unchanged, statuses included; or
- a **composite**: the batch goes to every component's upstream at once, and each
  sample's component scores are combined (`gateway_compose.combine`: weighted sum,
  gates, a failed component fails the sample naming it, or the configured fallback).
  A request's params for a composite are per component: ``{"format": {"strict": true}}``.

Calls to upstreams go through `RewardClient` (one per upstream): deadlines (the
upstream's `timeout_s`, shortened to the caller's own deadline), retries on UNAVAILABLE,
failover across replicas; a transport failure becomes per-sample UNAVAILABLE or TIMEOUT,
never 0. An upstream that refuses the gateway's call for a reason retrying cannot fix
(a bad token, a missing reward) gives per-sample ERROR naming it; INVALID_ARGUMENT caused
by the caller's own params or samples is returned to the caller as INVALID_ARGUMENT.

Health: every `health.interval_s` each upstream is asked for its gRPC health and its
reward list (bounded by `health.timeout_s`); while a required upstream is down, or does
not offer a reward the config names, the gateway reports NOT_SERVING (for "" and for
referee.v1.RewardService); `upstream/NAME` reports each upstream on its own. Scoring is
never refused on account of health: a call may still succeed on a recovering upstream.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections import Counter
from collections.abc import AsyncIterator, Sequence
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2
from prometheus_client import Gauge

from referee.convert import score_to_proto, struct_to_dict
from referee.rewardsvc.client import RewardCallError, RewardClient, RewardInfo
from referee.rewardsvc.config import ServerConfig
from referee.rewardsvc.gateway_compose import combine
from referee.rewardsvc.gateway_config import Composite, GatewayConfig, Route
from referee.rewardsvc.gateway_health import UpstreamProbe
from referee.rewardsvc.metrics import ServerMetrics
from referee.rewardsvc.server import serve
from referee.rewardsvc.streaming import score_stream, score_unary
from referee.types import Score, Status
from referee.v1 import reward_pb2 as pb
from referee.v1 import reward_pb2_grpc

log = logging.getLogger(__name__)

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
DEADLINE_MARGIN_S = 0.05
"""Kept from the caller's deadline for the gateway's own work on the answer."""


class Refused(Exception):
    """The call as a whole fails with gRPC status `code`."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code


def _refusal(e: Exception) -> grpc.StatusCode | None:
    return e.code if isinstance(e, Refused) else None


class GatewayService(reward_pb2_grpc.RewardServiceServicer):
    """Serves the rewards of a `GatewayConfig`. Build it inside the server's event loop."""

    full_name = "referee.v1.RewardService"

    def __init__(self, cfg: GatewayConfig) -> None:
        self._cfg = cfg
        self._clients = {
            name: RewardClient(list(u.targets), token=u.token, tls=u.tls, tls_ca=u.tls_ca,
                               timeout_s=u.timeout_s, max_concurrent_chunks=u.max_concurrent_calls)
            for name, u in cfg.upstreams.items()
        }
        self._probes = {name: UpstreamProbe(u) for name, u in cfg.upstreams.items()}
        self._needed: dict[str, set[str]] = {name: set() for name in cfg.upstreams}
        for r in cfg.rewards.values():
            for upstream, reward in _uses(r):
                self._needed[upstream].add(reward)
        self._catalogue: dict[str, dict[str, RewardInfo]] = {}
        self._problems: dict[str, str | None] = {}
        self._metrics = ServerMetrics()  # replaced by the server's in attach()
        self._up_gauge: Gauge | None = None
        self._health: health.aio.HealthServicer | None = None
        self._watch_task: asyncio.Task[None] | None = None

    @property
    def upstream_problems(self) -> dict[str, str | None]:
        """Each upstream's last health check: None when up, else why not."""
        return dict(self._problems)

    def attach(self, server: grpc.aio.Server, metrics: ServerMetrics) -> None:
        self._metrics = metrics
        self._up_gauge = Gauge("referee_gateway_upstream_up", "1 while the upstream's health "
                               "check passes", ["upstream"], registry=metrics.registry)
        reward_pb2_grpc.add_RewardServiceServicer_to_server(self, server)

    async def on_start(self, health_servicer: health.aio.HealthServicer) -> None:
        """Called by the server once started: one round of checks, then one per interval."""
        self._health = health_servicer
        await self.check_upstreams()
        self._watch_task = asyncio.create_task(self._watch(), name="gateway-upstream-health")

    async def close(self) -> None:
        if self._watch_task is not None:
            self._watch_task.cancel()
            await asyncio.gather(self._watch_task, return_exceptions=True)
        await asyncio.gather(*(c.close() for c in self._clients.values()),
                             *(p.close() for p in self._probes.values()))

    # --- upstream health --------------------------------------------------------------

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(self._cfg.health.interval_s)
            try:
                await self.check_upstreams()
            except Exception:  # a bug here must not freeze the reported health
                log.exception("upstream health round failed")
                if self._health is not None:
                    await self._set_health(NOT_SERVING)

    async def check_upstreams(self) -> dict[str, str | None]:
        """One round of checks (health, then the reward list); publishes and returns them."""
        names = list(self._probes)
        answers = await asyncio.gather(*(self._check(n) for n in names))
        problems = dict(zip(names, answers, strict=True))
        for name, why in problems.items():
            was = self._problems.get(name, "unchecked")
            if (why is None) != (was is None):
                if why is None:
                    (log.info if was == "unchecked" else log.warning)("upstream %s is up", name)
                else:
                    log.warning("upstream %s is down: %s", name, why)
            if self._up_gauge is not None:
                self._up_gauge.labels(name).set(0.0 if why else 1.0)
        self._problems = problems
        if self._health is not None:
            for name, why in problems.items():
                await self._health.set(f"upstream/{name}", NOT_SERVING if why else SERVING)
            down = [n for n, why in problems.items() if why and self._cfg.upstreams[n].required]
            await self._set_health(NOT_SERVING if down else SERVING)
        return problems

    async def _set_health(self, status: int) -> None:
        assert self._health is not None
        await self._health.set("", status)
        await self._health.set(self.full_name, status)

    async def _check(self, name: str) -> str | None:
        timeout = self._cfg.health.timeout_s
        why = await self._probes[name].check(timeout)
        if why is not None:
            return why
        try:
            infos = await self._clients[name].list_rewards(timeout)
        except RewardCallError as e:
            return f"ListRewards failed: {e.code.name}: {e.details}"
        offered = {r.name: r for r in infos}
        self._catalogue[name] = offered
        missing = sorted(self._needed[name] - set(offered))
        if missing:
            return f"does not offer {', '.join(missing)} (it offers {', '.join(sorted(offered))})"
        return None

    # --- RPCs -------------------------------------------------------------------------

    async def ListRewards(self, request: pb.ListRewardsRequest, context: Any) -> pb.ListRewardsResponse:
        return pb.ListRewardsResponse(rewards=[self._info(r) for r in self._cfg.rewards.values()])

    async def Score(self, request: pb.ScoreRequest, context: grpc.aio.ServicerContext) -> pb.ScoreResponse:
        return await score_unary(context, self.score(request, context.time_remaining()), _refusal)

    async def ScoreStream(
        self, request_iterator: AsyncIterator[pb.ScoreRequest], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.ScoreResponse]:
        """Up to STREAM_WINDOW requests of a stream are scored at once; answers come back
        as they finish, each carrying its request_id."""
        async def score(req: pb.ScoreRequest) -> pb.ScoreResponse:
            return await self.score(req, context.time_remaining())

        async for answer in score_stream(request_iterator, context, score, _refusal):
            yield answer

    # --- scoring ----------------------------------------------------------------------

    async def score(self, req: pb.ScoreRequest, time_left: float | None = None) -> pb.ScoreResponse:
        """Scores one request; `time_left` is the caller's remaining deadline, if any."""
        r = self._cfg.rewards.get(req.reward)
        if r is None:
            offered = ", ".join(sorted(self._cfg.rewards))
            raise Refused(grpc.StatusCode.INVALID_ARGUMENT,
                          f"unknown reward {req.reward!r}; this gateway offers: {offered}")
        deadline = None if time_left is None else time.monotonic() + time_left - DEADLINE_MARGIN_S
        if isinstance(r, Route):
            scores = await self._call(r.upstream, r.reward, list(req.samples),
                                      {**r.params, **struct_to_dict(req.params)}, deadline,
                                      r.name, caller_at_fault=True)
            info = self._catalogue.get(r.upstream, {}).get(r.reward)
            version = info.version if info else ""
        else:
            scores = await self._composite(r, req, deadline)
            version = r.version
        for status, k in Counter(s.status.value for s in scores).items():
            self._metrics.samples.labels(r.name, status).inc(k)
        return pb.ScoreResponse(scores=[score_to_proto(s) for s in scores],
                                request_id=req.request_id, reward=r.name, version=version)

    async def _composite(self, c: Composite, req: pb.ScoreRequest, deadline: float | None) -> list[Score]:
        overrides = struct_to_dict(req.params)
        names = [comp.name for comp in c.components]
        for k, v in overrides.items():
            if k not in names:
                raise Refused(grpc.StatusCode.INVALID_ARGUMENT,
                              f"params: {k!r} is not a component of {c.name} (components: "
                              f"{', '.join(names)}); a composite takes {{component: {{param: value}}}}")
            if not isinstance(v, dict):
                raise Refused(grpc.StatusCode.INVALID_ARGUMENT,
                              f"params.{k} must be an object of params for component {k}")
        samples = list(req.samples)
        if not samples:
            return []
        results = await asyncio.gather(*(
            self._call(comp.upstream, comp.reward, samples, {**comp.params, **overrides.get(comp.name, {})},
                       deadline, f"{c.name} component {comp.name}", caller_at_fault=comp.name in overrides)
            for comp in c.components), return_exceptions=True)
        for res in results:
            if isinstance(res, BaseException):
                raise res
        parts: list[list[Score]] = results  # type: ignore[assignment]
        return [combine(c, m.id, [p[i] for p in parts]) for i, m in enumerate(samples)]

    async def _call(
        self, upstream: str, reward: str, samples: Sequence[pb.Sample], params: dict[str, Any],
        deadline: float | None, label: str, caller_at_fault: bool,
    ) -> list[Score]:
        """One upstream call; failures the caller cannot fix become per-sample ERROR."""
        if not samples:
            return []
        timeout = self._cfg.upstreams[upstream].timeout_s
        if deadline is not None:
            timeout = max(0.001, min(timeout, deadline - time.monotonic()))
        where = f"{label}: upstream {upstream} reward {reward}"
        try:
            return await self._clients[upstream].score(reward, samples, params, timeout_s=timeout)
        except ValueError as e:  # a sample over the message size limit
            raise Refused(grpc.StatusCode.INVALID_ARGUMENT, f"{where}: {e}") from e
        except RewardCallError as e:
            if e.code is grpc.StatusCode.INVALID_ARGUMENT and caller_at_fault:
                raise Refused(e.code, f"{where}: {e.details}") from e
            why = f"{where} refused the gateway's call: {e.code.name}: {e.details}"
            return [Score(m.id, Status.ERROR, None, reason=why) for m in samples]

    # --- ListRewards ------------------------------------------------------------------

    def _info(self, r: Route | Composite) -> pb.RewardInfo:
        if isinstance(r, Composite):
            params = [pb.RewardParam(name=comp.name, type="object", default_json=json.dumps(comp.params),
                                     description=f"params for {comp.reward} on {comp.upstream}, "
                                     "merged over the defaults")
                      for comp in r.components]
            timeout = max(self._cfg.upstreams[comp.upstream].timeout_s for comp in r.components)
            return pb.RewardInfo(name=r.name, kind="composite", version=r.version,
                                 description=r.description, params=params, timeout_s=timeout)
        up = self._catalogue.get(r.upstream, {}).get(r.reward)
        params = [pb.RewardParam(name=k, type=_json_type(v), default_json=json.dumps(v),
                                 description="set by the gateway; a request may override it")
                  for k, v in r.params.items()]
        if up is not None:
            params += [pb.RewardParam(name=p.name, type=p.type, description=p.description,
                                      default_json=p.default_json, required=p.required)
                       for p in up.params if p.name not in r.params]
        description = r.description or f"{r.reward} on upstream {r.upstream}" + (
            f": {up.description}" if up and up.description else "")
        return pb.RewardInfo(name=r.name, kind="route", version=up.version if up else "",
                             description=description, params=params,
                             timeout_s=self._cfg.upstreams[r.upstream].timeout_s)


def _uses(r: Route | Composite) -> list[tuple[str, str]]:
    if isinstance(r, Route):
        return [(r.upstream, r.reward)]
    return [(c.upstream, c.reward) for c in r.components]


def _json_type(v: Any) -> str:
    if isinstance(v, bool):
        return "boolean"
    if isinstance(v, int):
        return "integer"
    if isinstance(v, float):
        return "number"
    if isinstance(v, str):
        return "string"
    return "array" if isinstance(v, list) else "object"


async def serve_gateway(cfg: ServerConfig, gateway: GatewayConfig) -> None:
    """Runs the gateway until SIGTERM/SIGINT (the clients are built inside the loop)."""
    await serve(cfg, [GatewayService(gateway)], "gateway")
