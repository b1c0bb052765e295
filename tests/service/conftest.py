"""Real referee servers on port 0 for the service tests (STYLE.md item 10).

Two ways to get one:

- `cli_servers`: a factory running the real `referee serve verifiers --port 0 ...` as a
  subprocess (waits for its "listening on" line; SIGTERM and wait at teardown);
- `inproc_servers`: a factory for the skeleton in this process (`create_server` +
  `handle.start()`; `handle.stop(0)` at teardown). It is module-scoped and bound to the
  module's event loop, so modules using it declare
  ``pytestmark = pytest.mark.asyncio(loop_scope="module")``.

`custom_server` is a shared in-process server with only the fixture verifiers.

This folder must be on sys.path before any worker pool starts the forkserver (which
copies sys.path), so workers can import `fixture_verifiers`; pytest's default import
mode puts it there when it loads this file, and the insert below makes sure.
"""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

HERE = str(Path(__file__).resolve().parent)
if HERE not in sys.path:
    sys.path.insert(0, HERE)

from service_kit import CliServer, start_cli_server, start_inprocess  # noqa: E402

from referee.rewardsvc.config import VerifierPoolConfig  # noqa: E402
from referee.rewardsvc.server import ServerHandle  # noqa: E402


@pytest.fixture(scope="module")
def cli_servers() -> Iterator[Callable[..., CliServer]]:
    """Starts `referee serve verifiers --port 0 ARGS` subprocesses; stops them at teardown."""
    started: list[CliServer] = []

    def start(args: list[str], env: dict[str, str] | None = None) -> CliServer:
        server = start_cli_server(args, env)
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def inproc_servers() -> AsyncIterator[Callable[..., Any]]:
    """``await start(specs, pool_cfg, **server_cfg)`` -> a started ServerHandle."""
    started: list[ServerHandle] = []

    async def start(*args: Any, **kwargs: Any) -> ServerHandle:
        handle = await start_inprocess(*args, **kwargs)
        started.append(handle)
        return handle

    yield start
    for handle in started:
        await handle.stop(0)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def custom_server(inproc_servers: Callable[..., Any]) -> ServerHandle:
    """An in-process server with the fixture verifiers and two workers."""
    return await inproc_servers(pool=VerifierPoolConfig(workers=2))
