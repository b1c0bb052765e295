"""A pool of verifier worker processes with a hard per-sample time limit.

Why not `concurrent.futures.ProcessPoolExecutor`: it cannot kill one worker. A verifier
stuck in sympy or a catastrophic regex would hold a worker forever, and killing a pool
process breaks the whole executor. Here every worker has a slot thread that hands it a
chunk of samples and watches a shared (index, start time) pair; a sample that overruns
gets its worker SIGKILLed and replaced, the sample gets TIMEOUT, and the rest of the
chunk goes to the new worker. A worker that dies on its own (segfault, OOM killer) costs
its current sample an ERROR the same way.

Workers are started from the `forkserver` context: forking from the gRPC server process
(which has threads) is unsafe, and spawning a fresh interpreter for every replacement
would re-import sympy each time. The fork server preloads the verifier modules once.

Not protected against: a verifier that forks children of its own (they are not in the
worker's process group bookkeeping), or one that leaks memory slowly below the limit.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import multiprocessing
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from referee.rewardsvc.worker import RawResult, worker_main

log = logging.getLogger(__name__)

POLL_S = 0.02
START_TIMEOUT_S = 120.0


class PoolError(RuntimeError):
    """The pool cannot serve (workers failed to start, or it is closed)."""


@dataclass
class _Chunk:
    """Samples handed to one worker; resolves `done` with one RawResult per item."""

    job_id: int
    reward: str
    params: dict[str, Any]
    items: list[tuple[int, bytes]]
    timeout_s: float
    loop: asyncio.AbstractEventLoop
    done: asyncio.Future[list[RawResult]]
    results: list[RawResult] = field(default_factory=list)


class _Worker:
    """One process and the shared memory it reports progress in."""

    def __init__(self, ctx: Any, specs: list[str], memory_mb: int | None) -> None:
        self.progress = ctx.Array("d", [-1.0, 0.0], lock=False)  # [index, start monotonic]
        self.conn, child = ctx.Pipe(duplex=True)
        self.proc = ctx.Process(
            target=worker_main, args=(child, self.progress, specs, memory_mb), daemon=True
        )
        self.proc.start()
        child.close()

    def wait_ready(self) -> list[str]:
        if not self.conn.poll(START_TIMEOUT_S):
            self.kill()
            raise PoolError(f"worker did not start within {START_TIMEOUT_S:.0f}s")
        try:
            kind, payload = self.conn.recv()
        except EOFError:
            raise PoolError(f"worker exited during start-up (exit code {self.proc.exitcode})") from None
        if kind != "ready":
            raise PoolError(f"worker could not load the verifiers: {payload}")
        return payload

    def kill(self) -> None:
        if self.proc.is_alive():
            self.proc.kill()
        self.proc.join(5)
        self.conn.close()

    def describe_exit(self) -> str:
        self.proc.join(1)
        code = self.proc.exitcode
        if code is None:
            return "worker stopped answering"
        return f"worker died with signal {-code}" if code < 0 else f"worker exited with code {code}"


class WorkerPool:
    """Runs verifier calls in worker processes; `run` is awaited from the event loop."""

    def __init__(
        self,
        specs: list[str],
        workers: int,
        chunk_size: int = 64,
        memory_mb: int | None = None,
        preload: list[str] | None = None,
        on_restart: Callable[[str], None] | None = None,
        on_queue: Callable[[int], None] | None = None,
    ) -> None:
        self._specs = list(specs)
        self._n = workers
        self._chunk_size = chunk_size
        self._memory_mb = memory_mb
        self._ctx = multiprocessing.get_context("forkserver")
        self._preload = preload or []
        self._on_restart = on_restart or (lambda reason: None)
        self._on_queue = on_queue or (lambda depth: None)
        self._queue: queue.SimpleQueue[_Chunk | None] = queue.SimpleQueue()
        self._queued_samples = 0
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []
        self._workers: list[_Worker] = []  # the live worker of each slot
        self._ids = itertools.count()
        self._closed = False

    def start(self) -> list[str]:
        """Starts every worker and returns the reward names they loaded."""
        self._ctx.set_forkserver_preload(["referee.rewardsvc.worker", *self._preload])
        workers = [_Worker(self._ctx, self._specs, self._memory_mb) for _ in range(self._n)]
        try:
            names = [w.wait_ready() for w in workers][0]
        except PoolError:
            for w in workers:
                w.kill()
            raise
        self._workers = workers
        for i in range(len(workers)):
            t = threading.Thread(target=self._slot, args=(i,), name=f"verifier-slot-{i}", daemon=True)
            t.start()
            self._threads.append(t)
        return names

    async def run(
        self, reward: str, params: dict[str, Any], blobs: list[bytes], timeout_s: float
    ) -> list[RawResult]:
        """Scores serialized samples; one RawResult per blob, in order."""
        if self._closed:
            raise PoolError("the worker pool is closed")
        loop = asyncio.get_running_loop()
        indexed = list(enumerate(blobs))
        size = max(1, min(self._chunk_size, -(-len(indexed) // self._n)))
        chunks = [
            _Chunk(next(self._ids), reward, params, indexed[i : i + size], timeout_s, loop, loop.create_future())
            for i in range(0, len(indexed), size)
        ]
        for c in chunks:
            self._queue_change(len(c.items))
            self._queue.put(c)
        try:
            parts = await asyncio.gather(*(c.done for c in chunks))
        except asyncio.CancelledError:
            for c in chunks:
                c.done.cancel()  # queued chunks are skipped; running ones finish
            raise
        out = [r for part in parts for r in part]
        out.sort(key=lambda r: r[0])
        return out

    def close(self, grace_s: float = 1.0) -> None:
        """Stops the workers: idle ones at once, busy ones after `grace_s` (SIGKILL).

        Called after the server has drained, so a chunk still running here belongs to a
        call that was abandoned; its samples are answered ERROR.
        """
        self._closed = True
        for _ in self._threads:
            self._queue.put(None)
        deadline = time.monotonic() + grace_s
        for t in self._threads:
            t.join(max(0.0, deadline - time.monotonic()))
        for w in self._workers:
            if w.proc.is_alive():
                w.proc.kill()
        for t in self._threads:
            t.join(10)

    def _queue_change(self, delta: int) -> None:
        with self._lock:
            self._queued_samples += delta
            depth = self._queued_samples
        self._on_queue(depth)

    def _slot(self, slot: int) -> None:
        """Slot thread: feeds one worker chunk after chunk, replacing it when it fails."""
        while True:
            chunk = self._queue.get()
            if chunk is None:
                worker = self._workers[slot]
                try:
                    worker.conn.send(None)
                except OSError:
                    pass  # already gone
                worker.proc.join(1)
                worker.kill()
                return
            self._queue_change(-len(chunk.items))
            if chunk.done.cancelled():
                continue
            self._workers[slot] = self._execute(self._workers[slot], chunk)
            chunk.loop.call_soon_threadsafe(_resolve, chunk)

    def _execute(self, worker: _Worker, chunk: _Chunk) -> _Worker:
        """Runs a chunk to the end, whatever the worker does; returns the live worker."""
        pending = dict(chunk.items)
        unpinned = 0
        while pending:
            outcome = self._attempt(worker, chunk, pending)
            if outcome is None:
                continue
            reason, index, status = outcome
            if self._closed:  # close() killed it: answer the rest, start nothing new
                for i in pending:
                    chunk.results.append((i, "ERROR", None, "the server shut down before scoring this sample", {}, 0.0))
                return worker
            self._on_restart(status.lower())
            worker.kill()
            worker = self._replace()
            if index in pending:
                del pending[index]
                chunk.results.append((index, status, None, reason, {}, 0.0))
                continue
            # The failure could not be pinned on one sample: resend what is pending, but
            # not forever (a worker that dies on every job start would loop).
            unpinned += 1
            if unpinned >= 3:
                for i in pending:
                    chunk.results.append((i, "ERROR", None, f"{reason} (3 times in a row)", {}, 0.0))
                pending.clear()
        return worker

    def _attempt(
        self, worker: _Worker, chunk: _Chunk, pending: dict[int, bytes]
    ) -> tuple[str, int, str] | None:
        """Sends what is pending; returns None when done, or why the worker must go."""
        try:
            worker.conn.send((chunk.job_id, chunk.reward, chunk.params, list(pending.items())))
        except (BrokenPipeError, OSError):
            return ("worker pipe broke", -1, "ERROR")
        while True:
            if worker.conn.poll(POLL_S):
                try:
                    _kind, job_id, results, finished = worker.conn.recv()
                except (EOFError, OSError):
                    index = int(worker.progress[0])
                    return (f"{worker.describe_exit()} while scoring this sample", index, "ERROR")
                for r in results:
                    pending.pop(r[0], None)
                    chunk.results.append(r)
                if finished:
                    return None
                continue
            index = int(worker.progress[0])
            started = worker.progress[1]
            if index >= 0 and time.monotonic() - started > chunk.timeout_s:
                return (f"exceeded the {chunk.timeout_s:g}s per-sample limit", index, "TIMEOUT")
            if not worker.proc.is_alive():
                return (f"{worker.describe_exit()} while scoring this sample", index, "ERROR")

    def _replace(self) -> _Worker:
        while True:
            try:
                fresh = _Worker(self._ctx, self._specs, self._memory_mb)
                fresh.wait_ready()
                return fresh
            except (PoolError, OSError) as e:  # keep the slot alive; log and retry
                log.error("replacing a verifier worker failed: %s; retrying", e)
                time.sleep(1.0)


def _resolve(chunk: _Chunk) -> None:
    if not chunk.done.done():
        chunk.done.set_result(chunk.results)
