"""Health checks of the gateway's upstreams (the standard `grpc.health.v1` service).

An upstream is up while at least one of its replicas answers SERVING within the check's
deadline; the gateway's own health follows its required upstreams, so an orchestrator
(or `referee health`) sees an outage behind the gateway, not only the gateway itself.

What this does not see: an upstream that answers health checks but fails its rewards
(a judge whose endpoint is gone answers SERVING and scores UNAVAILABLE). Those failures
reach callers as per-sample statuses instead.
"""

from __future__ import annotations

import asyncio

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from referee.rewardsvc.gateway_config import Upstream
from referee.rewardsvc.replicas import Replica, ReplicaSet

SERVING = health_pb2.HealthCheckResponse.SERVING


class UpstreamProbe:
    """Asks every replica of one upstream whether it is serving."""

    def __init__(self, up: Upstream) -> None:
        self.name = up.name
        self._set = ReplicaSet(list(up.targets), health_pb2_grpc.HealthStub,
                               tls=up.tls, tls_ca=up.tls_ca)

    async def check(self, timeout_s: float) -> str | None:
        """None when some replica is SERVING, else why none is (each replica's answer)."""
        answers = await asyncio.gather(*(self._one(r, timeout_s) for r in self._set.replicas))
        if any(a is None for a in answers):
            return None
        return "; ".join(a for a in answers if a)

    async def _one(self, r: Replica[health_pb2_grpc.HealthStub], timeout_s: float) -> str | None:
        try:
            resp = await r.stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=timeout_s)
        except grpc.aio.AioRpcError as e:
            return f"{r.target}: {e.code().name}"
        if resp.status == SERVING:
            return None
        return f"{r.target}: {health_pb2.HealthCheckResponse.ServingStatus.Name(resp.status)}"

    async def close(self) -> None:
        await self._set.close()
