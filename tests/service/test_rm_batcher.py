"""`DynamicBatcher`'s choice of batch under a backlog: the oldest sample, then the
waiting samples nearest to it in length, within the size and padded-token limits."""

from __future__ import annotations

import asyncio
import threading

from referee.rewardsvc.rm_batcher import BatchLimits, DynamicBatcher


async def batches_after_a_backlog(limits: BatchLimits, sizes: list[int]) -> list[list[int]]:
    """The sizes in each forward when `sizes` queue up (in order) behind a forward that
    is still running."""
    running, release = threading.Event(), threading.Event()
    seen: list[list[int]] = []

    def forward(batch: list[str]) -> list[float]:
        seen.append([len(x) for x in batch])
        running.set()
        release.wait(10)
        return [float(len(x)) for x in batch]

    batcher = DynamicBatcher(forward, limits, size=len)
    try:
        first = asyncio.ensure_future(batcher.submit(["x"]))
        await asyncio.get_running_loop().run_in_executor(None, running.wait, 10)
        rest = [asyncio.ensure_future(batcher.submit(["y" * n])) for n in sizes]
        await asyncio.sleep(0)  # every submit has queued its sample
        release.set()
        outcomes = await asyncio.gather(first, *rest)
    finally:
        batcher.close()
    assert [o[0][0] for o in outcomes[1:]] == [float(n) for n in sizes]  # each got its own score
    return seen[1:]


async def test_a_backlog_is_batched_by_length_oldest_first() -> None:
    got = await batches_after_a_backlog(BatchLimits(3, 0.0, 10_000), [20, 5, 21, 6, 19, 40])
    assert got == [[20, 21, 19], [5, 6, 40]]  # the far-off 40 is not passed over: it is the oldest left


async def test_the_token_budget_bounds_each_batch() -> None:
    got = await batches_after_a_backlog(BatchLimits(4, 0.0, 60), [20, 21, 19, 40])
    # 20 + 21 pad to 42 tokens; a third would make 63; 40 fits with nothing.
    assert got == [[20, 21], [19], [40]]
