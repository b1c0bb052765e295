"""The SandboxService: `referee serve sandbox`.

A request is checked whole before it takes a slot (unknown or unavailable language,
empty or oversized code, too many or too large files, limits over the server's
ceilings: INVALID_ARGUMENT naming the field). Jobs then run on a fixed number of
slots (threads calling the backend, each job one isolated process tree); beyond the
slots up to `max_queue` jobs wait, and further ones are refused RESOURCE_EXHAUSTED so
clients back off or go to another replica. A backend that fails is a SANDBOX_ERROR
verdict, never a program's verdict.

While the slots are busy, one waiting job per slot is set up ahead where the backend
can (`PreparingBackend`: bwrap builds the sandbox up to the program's start), so a slot
that frees starts the next program at once, and the setup's kernel waits (RCU grace
periods when namespaces and mounts are made) fall in time the slot would idle anyway.
A job's wall clock starts with its program, not with its setup.
"""

from __future__ import annotations

import asyncio
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import grpc
from prometheus_client import Counter, Gauge, Histogram

from referee.rewardsvc.metrics import ServerMetrics
from referee.sandboxes.convert import job_from_proto, result_to_proto
from referee.sandboxes.languages import Language, Toolchain, find_language
from referee.sandboxes.types import (
    Deferred,
    ExecResult,
    Job,
    Limits,
    Prepared,
    PreparingBackend,
    SandboxBackend,
    Settled,
    Verdict,
)
from referee.v1 import sandbox_pb2 as pb
from referee.v1 import sandbox_pb2_grpc

log = logging.getLogger(__name__)
MiB = 1024 * 1024


@dataclass
class SandboxConfig:
    slots: int = 2
    """Jobs run at once (each is one isolated process tree); about one per core."""
    max_queue: int = 64
    """Jobs that may wait for a slot; more are refused RESOURCE_EXHAUSTED."""
    defaults: Limits = field(default_factory=Limits)
    """Limits applied where a request leaves a field 0."""
    ceiling: Limits = field(default_factory=lambda: Limits(
        wall_time_s=60.0, cpu_time_s=60.0, memory_bytes=4096 * MiB, output_bytes=16 * MiB,
        max_processes=256, file_size_bytes=256 * MiB, open_files=1024))
    """The most a request may ask for."""
    max_code_bytes: int = 1 * MiB
    max_stdin_bytes: int = 16 * MiB
    max_files: int = 64
    max_files_bytes: int = 16 * MiB

    def __post_init__(self) -> None:
        if self.slots < 1 or self.max_queue < 0:
            raise ValueError(f"slots must be >= 1 and max_queue >= 0, got {self.slots}, {self.max_queue}")
        self.ceiling.merged_with(Limits(), self.ceiling)  # ceilings must be valid
        try:
            Limits().merged_with(self.defaults, self.ceiling)
        except ValueError as e:
            raise ValueError(f"default limits are over the ceiling: {e}") from None


class SandboxService(sandbox_pb2_grpc.SandboxServiceServicer):
    full_name = "referee.v1.SandboxService"

    def __init__(self, backend: SandboxBackend, cfg: SandboxConfig, toolchains: list[Toolchain]) -> None:
        self._backend = backend
        self._cfg = cfg
        self._toolchains = {t.language: t for t in toolchains}
        self._threads = ThreadPoolExecutor(cfg.slots, thread_name_prefix="sandbox-slot")
        self._prep_threads = ThreadPoolExecutor(cfg.slots, thread_name_prefix="sandbox-prepare")
        self._preparing = backend if isinstance(backend, PreparingBackend) else None
        self._slots = asyncio.Semaphore(cfg.slots)
        self._staging = asyncio.Semaphore(cfg.slots)
        """Jobs set up ahead of a slot (`_prepare`) and waiting for one: one per slot,
        so the next job is ready to start when a slot frees, and no more are held."""
        self._waiting = 0
        self._jobs: Counter | None = None

    def attach(self, server: grpc.aio.Server, metrics: ServerMetrics) -> None:
        r = metrics.registry
        self._jobs = Counter("referee_sandbox_jobs", "jobs by language and verdict", ["language", "verdict"], registry=r)
        self._seconds = Histogram("referee_sandbox_job_seconds", "job wall time including the queue",
                                  ["language"], registry=r)
        self._busy = Gauge("referee_sandbox_busy_slots", "slots running a job", registry=r)
        self._queued = Gauge("referee_sandbox_queued_jobs", "jobs waiting for a slot", registry=r)
        sandbox_pb2_grpc.add_SandboxServiceServicer_to_server(self, server)

    async def close(self) -> None:
        await asyncio.get_running_loop().run_in_executor(None, self._shutdown)

    def _shutdown(self) -> None:
        self._prep_threads.shutdown(wait=True, cancel_futures=True)
        self._threads.shutdown(wait=True, cancel_futures=True)
        self._backend.close()  # also ends jobs set up that never got a slot

    async def ListLanguages(self, request: pb.ListLanguagesRequest, context: Any) -> pb.ListLanguagesResponse:
        return pb.ListLanguagesResponse(
            backend=self._backend.name,
            languages=[pb.Language(name=t.language, available=t.available, detail=t.detail)
                       for t in self._toolchains.values()],
        )

    async def Execute(self, request: pb.ExecuteRequest, context: grpc.aio.ServicerContext) -> pb.ExecuteResponse:
        try:
            job, language = self.check(request)
        except ValueError as e:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(e))
            raise  # unreachable: abort raises
        if self._slots.locked() and self._waiting >= self._cfg.max_queue:
            await context.abort(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"all {self._cfg.slots} sandbox slots are busy and {self._waiting} jobs are queued; retry with backoff",
            )
        started = time.perf_counter()
        result = await self._run(job, language)
        self._record(language.name, result, time.perf_counter() - started)
        return result_to_proto(result, request.request_id)

    def check(self, request: pb.ExecuteRequest) -> tuple[Job, Language]:
        """The whole request's validity; ValueError names the field."""
        cfg = self._cfg
        language = find_language(request.language) if request.language else None
        if language is None:
            raise ValueError("language is empty; see ListLanguages")
        tool = self._toolchains.get(language.name)
        if tool is None or not tool.available:
            why = tool.detail if tool else "not probed"
            raise ValueError(f"language {language.name!r} is not available on this sandbox: {why}")
        if not request.code.strip():
            raise ValueError("code is empty")
        if len(request.code.encode()) > cfg.max_code_bytes:
            raise ValueError(f"code is {len(request.code.encode())} bytes; the limit is {cfg.max_code_bytes}")
        if len(request.stdin) > cfg.max_stdin_bytes:
            raise ValueError(f"stdin is {len(request.stdin)} bytes; the limit is {cfg.max_stdin_bytes}")
        if len(request.files) > cfg.max_files:
            raise ValueError(f"{len(request.files)} files; the limit is {cfg.max_files}")
        total = sum(len(f.content) for f in request.files)
        if total > cfg.max_files_bytes:
            raise ValueError(f"files hold {total} bytes; the limit is {cfg.max_files_bytes}")
        job = job_from_proto(request)
        names = [f.path for f in job.files]
        if language.source in names or len(set(names)) != len(names):
            raise ValueError(f"files repeat a path or overwrite the source file {language.source!r}")
        limits = cfg.defaults.merged_with(job.limits, cfg.ceiling)
        return Job(job.language, job.code, job.stdin, job.files, job.args, limits), language

    async def _run(self, job: Job, language: Language) -> ExecResult:
        loop = asyncio.get_running_loop()
        self._waiting += 1
        self._queued.set(self._waiting)
        try:
            async with self._staging:
                prepared = await self._prepare(job, language)
                try:
                    await self._slots.acquire()
                except BaseException:
                    self._cancel(prepared)  # the caller left while the job waited for a slot
                    raise
        finally:
            self._waiting -= 1
            self._queued.set(self._waiting)
        self._busy.inc()
        fut = loop.run_in_executor(self._threads, self._run_prepared, prepared)
        fut.add_done_callback(self._free_slot)  # when the job ends, even if the caller left
        return await asyncio.shield(fut)

    async def _prepare(self, job: Job, language: Language) -> Prepared:
        """The job set up while it waits for a slot, by a backend that can."""
        if self._preparing is None:
            return Deferred(self._backend, job, language)
        fut = asyncio.get_running_loop().run_in_executor(self._prep_threads, self._prepare_backend, job, language)
        try:
            return await asyncio.shield(fut)
        except asyncio.CancelledError:
            fut.add_done_callback(lambda f: f.cancelled() or self._cancel(f.result()))
            raise

    def _prepare_backend(self, job: Job, language: Language) -> Prepared:
        assert self._preparing is not None
        try:
            return self._preparing.prepare(job, language)
        except Exception as e:  # the backend failed, not the program: a verdict of our own
            log.exception("sandbox backend %s failed to prepare a job", self._backend.name)
            return Settled(self._backend_error(e))

    def _cancel(self, prepared: Prepared) -> None:
        try:
            self._prep_threads.submit(prepared.cancel)
        except RuntimeError:  # shutting down: end it here
            prepared.cancel()

    def _free_slot(self, _: object) -> None:
        self._busy.dec()
        self._slots.release()

    def _run_prepared(self, prepared: Prepared) -> ExecResult:
        try:
            return prepared.run()
        except Exception as e:  # the backend failed, not the program: a verdict of our own
            log.exception("sandbox backend %s failed", self._backend.name)
            return self._backend_error(e)

    def _backend_error(self, e: Exception) -> ExecResult:
        return ExecResult(Verdict.SANDBOX_ERROR, message=f"{self._backend.name} backend failed: {type(e).__name__}: {e}")

    def _record(self, language: str, result: ExecResult, seconds: float) -> None:
        if self._jobs is not None:
            self._jobs.labels(language, result.verdict.value).inc()
            self._seconds.labels(language).observe(seconds)
