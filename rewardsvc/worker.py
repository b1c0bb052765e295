"""The body of one verifier worker process (the parent side is `pool.py`).

A worker rebuilds the verifier table from the server's specs, then serves jobs from
its pipe: a job is (job_id, reward, params, [(index, serialized Sample), ...]). Before
each sample it writes (start time, index) into shared memory, so the parent can tell
exactly which sample overran and kill the process without a message per sample.
Results go back in batches: when the job ends, or every FLUSH_S while it runs.

Verifier exceptions become statuses (`calling.py`), never scores.
"""

from __future__ import annotations

import resource
import signal
import time
from multiprocessing.connection import Connection
from typing import Any

from referee.convert import sample_from_proto
from referee.registry import LoadError, load_specs
from referee.rewardsvc.calling import call_sync
from referee.types import InvalidParams, Result
from referee.v1 import reward_pb2 as pb
from referee.verifier import Verifier

FLUSH_S = 0.05
# Not a per-sample status: the parent turns it into INVALID_ARGUMENT for the request.
INVALID_PARAMS = "INVALID_PARAMS"

# (index, status value, value or None, reason, components, cost seconds)
RawResult = tuple[int, str, "float | None", str, dict[str, float], float]


def worker_main(conn: Connection, progress: Any, specs: list[str], memory_mb: int | None) -> None:
    """Entry point of a worker process; returns (and the process exits) on EOF or None."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides when workers stop
    if memory_mb:
        limit = memory_mb * 1024 * 1024
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    try:
        table = load_specs(specs)
    except LoadError as e:
        conn.send(("fatal", str(e)))
        return
    conn.send(("ready", sorted(table)))
    while True:
        try:
            job = conn.recv()
        except EOFError:
            return
        if job is None:
            return
        run_job(conn, progress, table, *job)


def run_job(
    conn: Connection,
    progress: Any,
    table: dict[str, Verifier],
    job_id: int,
    reward: str,
    params: dict[str, Any],
    items: list[tuple[int, bytes]],
) -> None:
    v = table[reward]
    out: list[RawResult] = []
    last_flush = time.monotonic()
    for pos, (index, blob) in enumerate(items):
        progress[1] = time.monotonic()  # start time first: the parent reads index then time
        progress[0] = index
        t0 = time.perf_counter()
        try:
            result = score_one(v, blob, params)
        except InvalidParams as e:
            # Every other sample would fail the same way: answer them all at once.
            out.extend((i, INVALID_PARAMS, None, str(e), {}, 0.0) for i, _ in items[pos:])
            break
        cost = time.perf_counter() - t0
        out.append((index, result.status.value, result.value, result.reason, result.components, cost))
        if time.monotonic() - last_flush > FLUSH_S:
            conn.send(("results", job_id, out, False))
            out = []
            last_flush = time.monotonic()
    progress[0] = -1
    conn.send(("results", job_id, out, True))


def score_one(v: Verifier, blob: bytes, params: dict[str, Any]) -> Result:
    """Parses one sample and scores it; InvalidParams propagates (see calling.py)."""
    return call_sync(v, sample_from_proto(pb.Sample.FromString(blob)), params)
