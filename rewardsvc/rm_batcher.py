"""Dynamic batching for a model that scores many samples in one forward.

Concurrent requests put their samples on one queue; a dedicated worker thread takes
the oldest, then keeps taking more until the batch has `max_batch_size` samples, its
padded size would pass `max_batch_tokens`, or the oldest sample has waited `max_wait_ms`,
and runs one forward for the lot. The event loop never runs the model: it only awaits
futures the worker resolves.

The batch a sample lands in depends on timing, so the forward must give each sample the
same score whatever shares its batch (`rm_model.score_batch` does). Samples whose
caller has gone (a cancelled future) are dropped before the forward.

>>> import asyncio
>>> b = DynamicBatcher(lambda xs: [float(len(x)) for x in xs], BatchLimits(4, 1.0, 100),
...                    size=len)
>>> [score for score, _seconds in asyncio.run(b.submit(["ab", "abc"]))]
[2.0, 3.0]
>>> b.close()
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

log = logging.getLogger(__name__)
T = TypeVar("T")
Outcome = tuple[float, float] | BaseException
"""A sample's (score, seconds of forward attributed to it), or why it has none."""


@dataclass(frozen=True)
class BatchLimits:
    max_batch_size: int = 32
    """Most samples in one forward; 1 turns batching off (one forward per sample)."""

    max_wait_ms: float = 5.0
    """How long the oldest queued sample waits for others to join its batch."""

    max_batch_tokens: int = 16384
    """Most padded tokens (samples x longest sample) in one forward; a sample longer
    than this alone still runs, alone."""

    def __post_init__(self) -> None:
        if self.max_batch_size < 1:
            raise ValueError(f"max_batch_size must be >= 1, got {self.max_batch_size}")
        if not 0 <= self.max_wait_ms <= 10_000:
            raise ValueError(f"max_wait_ms must be in [0, 10000], got {self.max_wait_ms}")
        if self.max_batch_tokens < 1:
            raise ValueError(f"max_batch_tokens must be >= 1, got {self.max_batch_tokens}")


class BatchFailed(Exception):
    """The forward that held this sample raised; the message says what it raised."""


@dataclass
class BatchStats:
    """What the last forward held, for metrics."""

    size: int
    padded_tokens: int
    seconds: float


@dataclass
class _Item(Generic[T]):
    value: T
    size: int
    future: asyncio.Future[tuple[float, float]]
    loop: asyncio.AbstractEventLoop
    queued_at: float


_STOP = object()


class DynamicBatcher(Generic[T]):
    """Runs `forward(batch) -> one float per item` on its own thread, batching across
    callers. `size(item)` is an item's token count (for the token budget)."""

    def __init__(
        self,
        forward: Callable[[list[T]], Sequence[float]],
        limits: BatchLimits,
        size: Callable[[T], int],
        on_batch: Callable[[BatchStats], None] | None = None,
        on_queue: Callable[[int], None] | None = None,
        name: str = "rm-batcher",
    ) -> None:
        self._forward = forward
        self._limits = limits
        self._size = size
        self._on_batch = on_batch
        self._on_queue = on_queue
        self._queue: queue.SimpleQueue[_Item[T] | object] = queue.SimpleQueue()
        self._carry: _Item[T] | None = None
        self._closed = False
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def queued(self) -> int:
        return self._queue.qsize() + (self._carry is not None)

    async def submit(self, values: Sequence[T], timeout_s: float | None = None) -> list[Outcome]:
        """Scores `values`: each entry is (score, its share of the forward's seconds), or
        the exception its forward raised (`BatchFailed`), or `TimeoutError` when it was
        not done within `timeout_s` (it is then dropped if not yet run). Cancelling the
        caller drops its samples not yet run."""
        if self._closed:
            raise RuntimeError("the batcher is closed")
        loop = asyncio.get_running_loop()
        now = time.monotonic()
        items = [_Item(v, self._size(v), loop.create_future(), loop, now) for v in values]
        for it in items:
            self._queue.put(it)
        if self._on_queue is not None:
            self._on_queue(self.queued())
        futures = [it.future for it in items]
        try:
            if futures:
                await asyncio.wait(futures, timeout=timeout_s)
        finally:
            for f in futures:
                f.cancel()  # no-op on the done ones
        out: list[Outcome] = []
        for f in futures:
            if f.cancelled():
                out.append(TimeoutError(f"not scored within {timeout_s:g}s (queue and forward)"))
            else:
                out.append(f.exception() or f.result())
        return out

    def close(self, timeout: float = 30.0) -> None:
        """Stops the worker after the batch in progress; samples still queued fail."""
        if self._closed:
            return
        self._closed = True
        self._queue.put(_STOP)
        self._thread.join(timeout)

    # --- the worker thread --------------------------------------------------------------

    def _run(self) -> None:
        while True:
            batch = self._take()
            if batch is None:
                break
            if batch:
                self._run_batch(batch)
        self._fail_rest(RuntimeError("the reward model server is shutting down"))

    def _next(self, timeout: float | None) -> _Item[T] | object | None:
        if self._carry is not None:
            item, self._carry = self._carry, None
            return item
        try:
            return self._queue.get(timeout=timeout) if timeout is None or timeout > 0 else self._queue.get_nowait()
        except queue.Empty:
            return None

    def _take(self) -> list[_Item[T]] | None:
        """The next batch (possibly empty when all were cancelled); None to stop."""
        first = self._next(None)
        if first is _STOP:
            return None
        assert isinstance(first, _Item)
        lim = self._limits
        batch = [first]
        longest = first.size
        deadline = first.queued_at + lim.max_wait_ms / 1000.0
        while len(batch) < lim.max_batch_size:
            item = self._next(deadline - time.monotonic())
            if item is None:
                break
            if item is _STOP:
                self._queue.put(_STOP)  # seen again after this batch
                break
            assert isinstance(item, _Item)
            if (len(batch) + 1) * max(longest, item.size) > lim.max_batch_tokens:
                self._carry = item  # heads the next batch
                break
            batch.append(item)
            longest = max(longest, item.size)
        return [it for it in batch if not it.future.cancelled()]

    def _run_batch(self, batch: list[_Item[T]]) -> None:
        started = time.perf_counter()
        try:
            scores = list(self._forward([it.value for it in batch]))
            if len(scores) != len(batch):
                raise RuntimeError(f"forward returned {len(scores)} scores for {len(batch)} samples")
        except (RuntimeError, ValueError) as e:  # e.g. out of memory: the batch fails, not the server
            log.warning("reward model forward failed on %d samples: %s", len(batch), e)
            failed = BatchFailed(f"forward failed ({type(e).__name__}: {e})")
            for it in batch:
                _resolve(it, exception=failed)
            return
        except Exception as e:  # a bug: the callers' calls fail with it; the worker lives on
            log.exception("reward model forward raised")
            for it in batch:
                _resolve(it, exception=e)
            return
        if self._on_batch is not None:
            width = max(it.size for it in batch)
            self._on_batch(BatchStats(len(batch), width * len(batch), time.perf_counter() - started))
        share = (time.perf_counter() - started) / len(batch)
        for it, s in zip(batch, scores, strict=True):
            _resolve(it, value=(s, share))
        if self._on_queue is not None:
            self._on_queue(self.queued())

    def _fail_rest(self, error: BaseException) -> None:
        while (item := self._next(0)) is not None:
            if isinstance(item, _Item):
                _resolve(item, exception=error)


def _resolve(it: _Item[T], value: tuple[float, float] | None = None, exception: BaseException | None = None) -> None:
    def settle() -> None:
        if it.future.done():  # cancelled meanwhile
            return
        if exception is not None:
            it.future.set_exception(exception)
        else:
            it.future.set_result(value)  # type: ignore[arg-type]

    try:
        it.loop.call_soon_threadsafe(settle)
    except RuntimeError:  # the caller's loop is closed: nobody is waiting
        pass
