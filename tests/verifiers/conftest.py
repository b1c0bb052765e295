"""Fixtures for the code verifier's tests: a real sandbox backend in-process.

`code_backend` is one bwrap backend for the session (the same one `referee serve
sandbox` uses); tests needing it are skipped, with bwrap's own reason, where it cannot
create namespaces. REFEREE_CODE_TEST_BACKEND=local runs them on the unsafe local backend
instead (for debugging on a host without bwrap; never the default).
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterator

import pytest

from referee.sandboxes.backends import make_backend
from referee.sandboxes.languages import find_language
from referee.sandboxes.types import ExecResult, Job, SandboxBackend
from referee.verifiers.code import CodeVerifier


class BackendExecutor:
    """The code verifier's Executor over a backend in this process (no gRPC)."""

    def __init__(self, backend: SandboxBackend) -> None:
        self.backend = backend
        self.jobs: list[Job] = []

    async def execute(self, job: Job) -> ExecResult:
        self.jobs.append(job)
        return await asyncio.to_thread(self.backend.run, job, find_language(job.language))


@pytest.fixture(scope="session")
def code_backend() -> Iterator[SandboxBackend]:
    name = os.environ.get("REFEREE_CODE_TEST_BACKEND", "bwrap")
    try:
        backend = make_backend(name, allow_unsafe=name == "local")
    except RuntimeError as e:
        pytest.skip(f"{name} sandbox unusable on this host: {e}")
    yield backend
    backend.close()


@pytest.fixture
def code_executor(code_backend: SandboxBackend) -> BackendExecutor:
    return BackendExecutor(code_backend)


@pytest.fixture
def code_verifier(code_executor: BackendExecutor) -> CodeVerifier:
    return CodeVerifier(code_executor)
