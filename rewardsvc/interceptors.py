"""What every call passes through before a servicer sees it: auth, the concurrency
limit, draining, and per-method metrics.

The gRPC health service is exempt from all of them, so an orchestrator can probe a
server that is busy or that needs a token. Reflection needs the token (it describes the
API) but is not counted against the limit.

Draining (`drain`, on SIGTERM): new calls get UNAVAILABLE, which clients retry on another
replica, while the calls in flight finish. Stopping the gRPC server outright would
instead answer calls arriving on already-open connections with CANCELLED, which clients
(rightly) do not retry.
"""

from __future__ import annotations

import asyncio
import hmac
import time
from collections.abc import Awaitable, Callable
from typing import Any

import grpc

from referee.rewardsvc.metrics import ServerMetrics

HEALTH_PREFIX = "/grpc.health.v1.Health/"
REFLECTION_PREFIX = "/grpc.reflection."


class GateInterceptor(grpc.aio.ServerInterceptor):
    def __init__(self, token: str | None, max_concurrency: int, metrics: ServerMetrics) -> None:
        self._expected = f"Bearer {token}".encode() if token else None
        self._max = max_concurrency
        self._inflight = 0
        self._draining = False
        self._metrics = metrics

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        method = details.method
        handler = await continuation(details)
        if handler is None or method.startswith(HEALTH_PREFIX):
            return handler
        if self._expected is not None and not self._authorized(details):
            self._metrics.rejected.labels("unauthenticated").inc()
            self._metrics.requests.labels(method, "UNAUTHENTICATED").inc()
            return _replace(
                handler,
                lambda inner: _refuse(grpc.StatusCode.UNAUTHENTICATED, "missing or wrong bearer token"),
            )
        if self._draining:
            self._metrics.rejected.labels("draining").inc()
            self._metrics.requests.labels(method, "UNAVAILABLE").inc()
            return _replace(
                handler,
                lambda inner: _refuse(grpc.StatusCode.UNAVAILABLE,
                                      "server is shutting down; retry on another replica"),
            )
        if method.startswith(REFLECTION_PREFIX):
            return handler
        return _replace(handler, lambda inner: self._limited(method, inner, handler))

    async def drain(self, timeout: float) -> None:
        """Refuses new calls from now on; returns when none is in flight or after `timeout`."""
        self._draining = True
        deadline = time.monotonic() + timeout
        while self._inflight > 0 and time.monotonic() < deadline:
            await asyncio.sleep(0.02)

    def _authorized(self, details: grpc.HandlerCallDetails) -> bool:
        for key, value in details.invocation_metadata or ():
            if key == "authorization":
                got = value.encode() if isinstance(value, str) else value
                return hmac.compare_digest(got, self._expected or b"")
        return False

    def _limited(self, method: str, inner: Callable[..., Any], handler: grpc.RpcMethodHandler) -> Any:
        streaming = handler.response_streaming

        async def admit(context: grpc.aio.ServicerContext) -> None:
            if self._inflight >= self._max:
                self._metrics.rejected.labels("concurrency").inc()
                self._metrics.requests.labels(method, "RESOURCE_EXHAUSTED").inc()
                await context.abort(
                    grpc.StatusCode.RESOURCE_EXHAUSTED,
                    f"server is at its limit of {self._max} concurrent calls; retry with backoff",
                )
            self._inflight += 1
            self._metrics.inflight.set(self._inflight)

        def finish(started: float, code: str) -> None:
            self._inflight -= 1
            self._metrics.inflight.set(self._inflight)
            self._metrics.latency.labels(method).observe(time.perf_counter() - started)
            self._metrics.requests.labels(method, code).inc()

        if streaming:

            async def stream_behavior(request: Any, context: grpc.aio.ServicerContext) -> Any:
                await admit(context)
                started, code = time.perf_counter(), "OK"
                try:
                    async for item in inner(request, context):
                        yield item
                except BaseException:
                    code = _code_name(context)
                    raise
                finally:
                    finish(started, _code_name(context) if code == "OK" else code)

            return stream_behavior

        async def unary_behavior(request: Any, context: grpc.aio.ServicerContext) -> Any:
            await admit(context)
            started = time.perf_counter()
            try:
                return await inner(request, context)
            finally:
                finish(started, _code_name(context))

        return unary_behavior


def _code_name(context: grpc.aio.ServicerContext) -> str:
    code = context.code()
    if code is None:
        return "OK"
    return code.name if isinstance(code, grpc.StatusCode) else str(code)


def _refuse(code: grpc.StatusCode, message: str) -> Callable[..., Any]:
    async def behavior(request: Any, context: grpc.aio.ServicerContext) -> Any:
        await context.abort(code, message)

    return behavior


def _replace(
    handler: grpc.RpcMethodHandler, make: Callable[[Callable[..., Any]], Callable[..., Any]]
) -> grpc.RpcMethodHandler:
    """A handler of the same shape as `handler` whose behaviour is `make(old behaviour)`."""
    kw = {
        "request_deserializer": handler.request_deserializer,
        "response_serializer": handler.response_serializer,
    }
    if handler.request_streaming and handler.response_streaming:
        return grpc.stream_stream_rpc_method_handler(make(handler.stream_stream), **kw)
    if handler.request_streaming:
        return grpc.stream_unary_rpc_method_handler(make(handler.stream_unary), **kw)
    if handler.response_streaming:
        return grpc.unary_stream_rpc_method_handler(make(handler.unary_stream), **kw)
    return grpc.unary_unary_rpc_method_handler(make(handler.unary_unary), **kw)
