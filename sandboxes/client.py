"""The client of `referee serve sandbox`, used by the code verifier and `referee exec`.

Same calling discipline as every referee client (`rewardsvc/replicas.py`): a deadline on
each call, failover across replicas on UNAVAILABLE, backoff on RESOURCE_EXHAUSTED (the
sandbox's slots are full). When no replica answers before the deadline it raises
`SandboxUnavailable`, which the code verifier reports as status UNAVAILABLE — never as
a failed program.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path

from referee.rewardsvc.replicas import CallError, GaveUp, ReplicaSet
from referee.sandboxes.convert import job_to_proto, result_from_proto
from referee.sandboxes.languages import Toolchain
from referee.sandboxes.types import ExecResult, Job
from referee.v1 import sandbox_pb2 as pb
from referee.v1 import sandbox_pb2_grpc


class SandboxCallError(CallError):
    """The sandbox refused the job for good (INVALID_ARGUMENT, UNAUTHENTICATED, ...)."""


class SandboxUnavailable(RuntimeError):
    """No sandbox replica ran the job before the deadline (down, or busy throughout)."""


class SandboxClient:
    def __init__(
        self,
        targets: str | Sequence[str],
        *,
        token: str | None = None,
        tls_ca: Path | bytes | None = None,
        timeout_s: float = 120.0,
    ) -> None:
        if timeout_s <= 0:
            raise ValueError(f"timeout_s must be > 0, got {timeout_s}")
        self.timeout_s = timeout_s
        self._metadata = (("authorization", f"Bearer {token}"),) if token else ()
        self._set = ReplicaSet(targets, sandbox_pb2_grpc.SandboxServiceStub, tls_ca=tls_ca,
                               error_type=SandboxCallError)

    @property
    def targets(self) -> list[str]:
        return self._set.targets

    async def __aenter__(self) -> SandboxClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        await self._set.close()

    async def execute(self, job: Job, *, timeout_s: float | None = None, request_id: str = "") -> ExecResult:
        """Runs `job`; raises SandboxUnavailable or SandboxCallError, never guesses a verdict."""
        req = job_to_proto(job, request_id)
        deadline = time.monotonic() + (timeout_s or self.timeout_s)
        try:
            resp = await self._set.call(
                lambda stub, t: stub.Execute(req, timeout=t, metadata=self._metadata), deadline
            )
        except GaveUp as e:
            raise SandboxUnavailable(str(e)) from None
        return result_from_proto(resp)

    async def languages(self, timeout_s: float | None = None) -> tuple[str, list[Toolchain]]:
        """The backend's name and each language's toolchain, as the server sees them."""
        deadline = time.monotonic() + (timeout_s or self.timeout_s)
        resp = await self._set.call_or_raise(
            lambda stub, t: stub.ListLanguages(pb.ListLanguagesRequest(), timeout=t, metadata=self._metadata),
            deadline,
        )
        return resp.backend, [Toolchain(x.name, x.available, x.detail) for x in resp.languages]
