"""Real servers on port 0 for the client tests, serving `client_fixture_verifiers`.

This directory goes on `sys.path` at collection time, before any worker pool starts its
forkserver; the forkserver copies `sys.path`, so the worker processes can import
`client_fixture_verifiers` as well.
"""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

HERE = str(Path(__file__).resolve().parent)
if HERE not in sys.path:
    sys.path.insert(0, HERE)

from client_servers import Servers  # noqa: E402


@pytest.fixture
async def servers() -> AsyncIterator[Servers]:
    """Starts servers on demand; every one still running is stopped at teardown."""
    s = Servers()
    try:
        yield s
    finally:
        await s.stop_all()
