"""Calling one of several replicas of a gRPC service, with failover and backoff.

Every referee client (rewards, sandbox) talks to services the same way (DESIGN.md
section 3): a deadline on every call; a call goes to the replica with the fewest calls
in flight; `UNAVAILABLE` (or a `CANCELLED` sent by a replica that is shutting down)
marks that replica down for a jittered while and moves the call to another one;
`RESOURCE_EXHAUSTED` from a busy server is retried after a jittered exponential
backoff; anything else is final and raises `CallError` at once.
"""

from __future__ import annotations

import asyncio
import itertools
import random
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, TypeVar

import grpc

S = TypeVar("S")
T = TypeVar("T")

# CANCELLED reaches us as an RpcError only when the server cancelled the call (our own
# cancellations raise asyncio.CancelledError): a replica shutting down cancels the calls
# it had just accepted, racing its UNAVAILABLE; either way the work was not done.
RETRY_AWAY = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED})
RETRY_LATER = frozenset({grpc.StatusCode.RESOURCE_EXHAUSTED})


class CallError(RuntimeError):
    """A call failed in a way retrying cannot fix; `code` is the gRPC status code."""

    def __init__(self, code: grpc.StatusCode, details: str, target: str) -> None:
        super().__init__(f"{target}: {code.name}: {details}")
        self.code = code
        self.details = details
        self.target = target


class GaveUp(Exception):
    """Every attempt failed for transport reasons until the deadline."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code


@dataclass
class Replica(Generic[S]):
    target: str
    channel: grpc.aio.Channel
    stub: S
    outstanding: int = 0
    down_until: float = 0.0
    failures: int = 0


def split_targets(targets: str | Sequence[str]) -> list[str]:
    """`"a:1,b:2"` or `["a:1", "b:2"]` -> `["a:1", "b:2"]`."""
    names = [targets] if isinstance(targets, str) else list(targets)
    return [t.strip() for n in names for t in n.split(",") if t.strip()]


class ReplicaSet(Generic[S]):
    """Channels to every replica of one service, and the retry policy across them."""

    def __init__(
        self,
        targets: str | Sequence[str],
        make_stub: Callable[[grpc.aio.Channel], S],
        *,
        tls: bool = False,
        tls_ca: Path | bytes | None = None,
        max_message_bytes: int = 64 * 1024 * 1024,
        backoff_base_s: float = 0.05,
        backoff_max_s: float = 2.0,
        error_type: type[CallError] = CallError,
    ) -> None:
        names = split_targets(targets)
        if not names:
            raise ValueError("at least one target address (host:port) is needed")
        self._backoff = (backoff_base_s, backoff_max_s)
        self._error_type = error_type
        self._rr = itertools.count()
        options = [
            ("grpc.max_send_message_length", max_message_bytes),
            ("grpc.max_receive_message_length", max_message_bytes),
        ]
        creds = None
        if tls or tls_ca is not None:
            ca = tls_ca.read_bytes() if isinstance(tls_ca, Path) else tls_ca
            creds = grpc.ssl_channel_credentials(root_certificates=ca)
        self.replicas: list[Replica[S]] = []
        for t in names:
            ch = grpc.aio.secure_channel(t, creds, options) if creds else grpc.aio.insecure_channel(t, options)
            self.replicas.append(Replica(t, ch, make_stub(ch)))

    @property
    def targets(self) -> list[str]:
        return [r.target for r in self.replicas]

    async def close(self) -> None:
        await asyncio.gather(*(r.channel.close() for r in self.replicas))

    async def call(self, invoke: Callable[[S, float], Awaitable[T]], deadline: float) -> T:
        """Runs `invoke(stub, seconds_left)` until it succeeds, fails for good
        (`CallError`), or the deadline passes with only transport failures (`GaveUp`)."""
        last: grpc.aio.AioRpcError | None = None
        for attempt in itertools.count():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            replica = self.pick()
            replica.outstanding += 1
            try:
                result = await invoke(replica.stub, remaining)
            except grpc.aio.AioRpcError as e:
                last = e
                code = e.code()
                if code in RETRY_AWAY:
                    self.mark_down(replica)
                    if self.any_up():
                        continue
                elif code in RETRY_LATER and "larger than max" not in (e.details() or ""):
                    pass
                elif code is grpc.StatusCode.DEADLINE_EXCEEDED:
                    break
                else:
                    raise self._error_type(code, e.details() or "", replica.target) from e
                await asyncio.sleep(min(self.jitter(attempt), max(0.0, deadline - time.monotonic())))
                continue
            finally:
                replica.outstanding -= 1
            replica.failures = 0
            replica.down_until = 0.0
            return result
        # The last error says why: replicas unreachable or busy until the deadline is
        # UNAVAILABLE, not TIMEOUT; TIMEOUT is for an attempt that ran out of time.
        code = last.code() if last is not None else grpc.StatusCode.DEADLINE_EXCEEDED
        detail = f"{last.code().name}: {last.details()}" if last is not None else "no attempt finished"
        raise GaveUp(code, f"gave up after the deadline ({', '.join(self.targets)}); last error {detail}")

    async def call_or_raise(self, invoke: Callable[[S, float], Awaitable[T]], deadline: float) -> T:
        """Like `call`, but a transport failure until the deadline raises `CallError` too
        (for calls with no samples to mark as unavailable)."""
        try:
            return await self.call(invoke, deadline)
        except GaveUp as e:
            raise self._error_type(e.code, str(e), ", ".join(self.targets)) from None

    def pick(self) -> Replica[S]:
        now = time.monotonic()
        up = [r for r in self.replicas if r.down_until <= now]
        if not up:
            return min(self.replicas, key=lambda r: r.down_until)
        low = min(r.outstanding for r in up)
        best = [r for r in up if r.outstanding == low]
        return best[next(self._rr) % len(best)]

    def any_up(self) -> bool:
        now = time.monotonic()
        return any(r.down_until <= now for r in self.replicas)

    def mark_down(self, r: Replica[Any]) -> None:
        r.failures += 1
        r.down_until = time.monotonic() + self.jitter(r.failures)

    def jitter(self, attempt: int) -> float:
        base, cap = self._backoff
        # The exponent is capped: 2**attempt as a float overflows past ~1024 failures.
        return random.uniform(0, min(cap, base * 2.0 ** min(attempt, 60)))
