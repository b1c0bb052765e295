"""Fixtures shared by the SandboxService tests: `stub`, a client stub for the module's
own `served` (server handle, backend) fixture."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest_asyncio

from referee.v1 import sandbox_pb2_grpc


@pytest_asyncio.fixture(loop_scope="module")
async def stub(served: Any) -> AsyncIterator[sandbox_pb2_grpc.SandboxServiceStub]:
    async with grpc.aio.insecure_channel(served[0].address) as ch:
        yield sandbox_pb2_grpc.SandboxServiceStub(ch)
