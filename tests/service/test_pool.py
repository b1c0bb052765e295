"""WorkerPool on its own: order, hard timeouts, crashes, and a clean close."""

from __future__ import annotations

import multiprocessing
import time
from collections.abc import Iterator

import fixture_verifiers as fx
import pytest
from service_kit import CUSTOM, sample

from referee.rewardsvc.pool import PoolError, WorkerPool


def blobs(*completions: str) -> list[bytes]:
    return [sample(str(i), c).SerializeToString() for i, c in enumerate(completions)]


@pytest.fixture
def restarts() -> list[str]:
    return []


@pytest.fixture
def pool(restarts: list[str]) -> Iterator[WorkerPool]:
    before = set(multiprocessing.active_children())
    p = WorkerPool([CUSTOM], workers=2, chunk_size=2, on_restart=restarts.append)
    names = p.start()
    assert names == fx.NAMES
    yield p
    p.close()
    leaked = [c for c in set(multiprocessing.active_children()) - before if c.is_alive()]
    assert leaked == [], f"worker processes left after close: {leaked}"


async def test_results_come_back_in_order_across_chunks(pool: WorkerPool) -> None:
    completions = ["a" * n for n in (3, 1, 4, 1, 5, 9, 2, 6, 5)]  # 9 samples, chunks of 2
    out = await pool.run("scaled", {"scale": 2.0}, blobs(*completions), timeout_s=30)
    assert [r[0] for r in out] == list(range(9))
    assert [r[1] for r in out] == ["OK"] * 9
    assert [r[2] for r in out] == [2.0 * len(c) for c in completions]
    assert all(r[5] >= 0 for r in out)


async def test_hang_gets_timeout_and_worker_is_replaced(
    pool: WorkerPool, restarts: list[str]
) -> None:
    t0 = time.monotonic()
    out = await pool.run("spin", {}, blobs("ab", fx.SPIN, "abc", "abcd"), timeout_s=1.0)
    elapsed = time.monotonic() - t0
    assert [r[1] for r in out] == ["OK", "TIMEOUT", "OK", "OK"]
    assert out[1][2] is None
    assert "exceeded the 1s per-sample limit" in out[1][3]
    assert [r[2] for r in out if r[1] == "OK"] == [2.0, 3.0, 4.0]
    assert 1.0 <= elapsed < 10.0
    assert restarts == ["timeout"]
    # The replacement serves both slots' work as before.
    again = await pool.run("spin", {}, blobs("x", "yy", "zzz"), timeout_s=1.0)
    assert [(r[1], r[2]) for r in again] == [("OK", 1.0), ("OK", 2.0), ("OK", 3.0)]


@pytest.mark.parametrize(
    ("completion", "why"),
    [(fx.EXIT, "worker exited with code 3"), (fx.KILL, "worker died with signal 9")],
)
async def test_crash_gets_error_naming_the_death(
    pool: WorkerPool, restarts: list[str], completion: str, why: str
) -> None:
    out = await pool.run("crash", {}, blobs("a", completion, "abc"), timeout_s=10)
    assert [r[1] for r in out] == ["OK", "ERROR", "OK"]
    assert out[1][2] is None
    assert why in out[1][3], out[1][3]
    assert [out[0][2], out[2][2]] == [1.0, 3.0]
    assert restarts == ["error"]
    again = await pool.run("crash", {}, blobs("ok", "fine"), timeout_s=10)
    assert [(r[1], r[2]) for r in again] == [("OK", 2.0), ("OK", 4.0)]


async def test_verifier_exceptions_become_statuses(pool: WorkerPool, restarts: list[str]) -> None:
    out = await pool.run("boom", {}, blobs("a", fx.BOOM), timeout_s=10)
    assert [r[1] for r in out] == ["OK", "ERROR"]
    assert "raised RuntimeError: kaboom in the fixture" in out[1][3]
    out = await pool.run("picky", {}, blobs("a"), timeout_s=10)
    assert out[0][1] == "INVALID_INPUT"
    assert "metadata.level must be a number" in out[0][3]
    assert restarts == []


async def test_close_stops_every_worker() -> None:
    before = set(multiprocessing.active_children())
    p = WorkerPool([CUSTOM], workers=2)
    p.start()
    workers = [c for c in multiprocessing.active_children() if c not in before]
    assert len(workers) == 2 and all(w.is_alive() for w in workers)
    assert (await p.run("scaled", {}, blobs("abc"), timeout_s=10))[0][2] == 3.0
    p.close()
    for w in workers:
        w.join(10)
    assert [w.is_alive() for w in workers] == [False, False]
    assert not set(multiprocessing.active_children()) - before
    with pytest.raises(PoolError, match="closed"):
        await p.run("scaled", {}, blobs("abc"), timeout_s=10)


def test_bad_spec_fails_start_with_the_reason() -> None:
    p = WorkerPool(["fixture_verifiers:NOPE"], workers=1)
    with pytest.raises(PoolError, match="NOPE"):
        p.start()


async def test_close_does_not_wait_for_a_hung_sample() -> None:
    import asyncio

    p = WorkerPool([CUSTOM], workers=1, chunk_size=4)
    p.start()
    running = asyncio.ensure_future(p.run("spin", {}, blobs("ab", fx.SPIN), timeout_s=60.0))
    await asyncio.sleep(0.5)  # the worker is now spinning on the second sample
    t0 = time.monotonic()
    await asyncio.get_running_loop().run_in_executor(None, p.close)
    assert time.monotonic() - t0 < 5.0, "close waited for the 60 s per-sample limit"
    out = await asyncio.wait_for(running, 5)
    # The first result may have been buffered in the killed worker: OK or ERROR, never lost.
    assert out[0][1] in ("OK", "ERROR") and out[1][1] == "ERROR"
    assert "shut down" in out[1][3]
