"""Benchmark: what isolation costs.

1. Per-execution overhead of the bwrap backend over a bare `subprocess` run of the same
   program (the same interpreter, the same file), measured in pairs, interleaved, so
   machine noise hits both. Reports p50/p99 of each and of the per-pair difference.
2. Throughput of `referee serve sandbox` (a real server process, real gRPC) at its slot
   count on N small test-carrying programs, against the same programs run bare with the
   same parallelism: "typical" programs (a solution doing real work on its tests, tens
   of ms) carry the target; "trivial" ones (under 10 ms) are reported to show that the
   fixed per-job cost dominates when the program itself does almost nothing.

Prints one JSON object. Targets (issue 3): overhead p50 <= 15 ms and p99 <= 60 ms;
service throughput >= 0.7x bare.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from referee.sandboxes.backends import make_backend
from referee.sandboxes.client import SandboxClient
from referee.sandboxes.languages import find_language
from referee.sandboxes.types import Job, Limits, Verdict
from referee.testing import serve_process

SYSTEM_PYTHON = "/usr/bin/python3"
TRIVIAL = "print('hello')\n"

# Test-carrying programs of the size the code reward runs: a solution, then its tests.
# Two sets: "typical" (a solution doing real work on its test inputs, tens of ms, like
# a HumanEval/MBPP check or a small CodeContests case) and "trivial" (a few asserts on
# tiny inputs: under 10 ms, so the figure is nearly all fixed per-job overhead).
_TYPICAL = [
    ("def f(n):\n    sieve = bytearray([1]) * n\n    sieve[0:2] = b'\\x00\\x00'\n"
     "    for p in range(2, int(n ** 0.5) + 1):\n        if sieve[p]:\n"
     "            sieve[p * p :: p] = bytearray(len(range(p * p, n, p)))\n    return sum(sieve)\n",
     "assert f({n}) == {want}\n", lambda i: 4_000_000 + 1000 * i,
     lambda n: sum(1 for k in range(2, n) if all(k % d for d in range(2, int(k**0.5) + 1)))),
    ("def f(a, b):\n    prev = [0] * (len(b) + 1)\n    for x in a:\n        cur = [0]\n"
     "        for j, y in enumerate(b):\n            cur.append(prev[j] + 1 if x == y else max(prev[j + 1], cur[j]))\n"
     "        prev = cur\n    return prev[-1]\n",
     "assert f({n!r}, {n2!r}) == {want}\n", lambda i: "abcab" * (110 + i % 20), None),
    ("def f(n):\n    out = 0\n    def place(row, cols, d1, d2):\n        nonlocal out\n"
     "        if row == n:\n            out += 1\n            return\n        for c in range(n):\n"
     "            if c not in cols and row - c not in d1 and row + c not in d2:\n"
     "                place(row + 1, cols | {c}, d1 | {row - c}, d2 | {row + c})\n"
     "    place(0, frozenset(), frozenset(), frozenset())\n    return out\n",
     "assert f({n}) == {want}\n", lambda i: 9, None),
]
_TRIVIAL = [
    ("def f(n):\n    return sum(range(n + 1))\n", "assert f({n}) == {want}\n", lambda i: i, None),
    ("def f(n):\n    return str(n)[::-1]\n", "assert f({n}) == {want!r}\n", lambda i: 1000 + i, None),
]


def _want(src: str, arg: object, arg2: object = None) -> object:
    scope: dict = {}
    exec(src, scope)  # noqa: S102 - our own generated code, to compute the expected value
    return scope["f"](arg) if arg2 is None else scope["f"](arg, arg2)


def programs(n: int, kind: str = "typical") -> list[str]:
    """`n` distinct programs of one kind, each a solution plus asserts, printing ok."""
    table = _TYPICAL if kind == "typical" else _TRIVIAL
    out = []
    for i in range(n):
        src, test, arg, _ = table[i % len(table)]
        a = arg(i)
        a2 = "bacba" * (100 + i % 10) if isinstance(a, str) else None
        body = test.format(n=a, n2=a2, want=_want(src, a, a2))
        out.append(f"{src}\n{body}print('ok {i}')\n")
    return out


def percentile(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, max(0, round(q * (len(xs) - 1))))]


def bare_run(code: str, workdir: Path) -> tuple[float, int]:
    path = workdir / f"p{os.getpid()}_{time.perf_counter_ns()}.py"
    path.write_text(code)
    t0 = time.perf_counter()
    p = subprocess.run([SYSTEM_PYTHON, "-I", str(path)], capture_output=True, timeout=60, check=False)
    dt = time.perf_counter() - t0
    path.unlink()
    return dt, p.returncode


def overhead(runs: int, workdir: Path) -> dict:
    backend = make_backend("bwrap")
    lang = find_language("python")
    job = Job("python", TRIVIAL, limits=Limits())
    try:
        for _ in range(3):  # warm caches on both sides
            backend.run(job, lang)
            bare_run(TRIVIAL, workdir)
        boxed, bare, diff = [], [], []
        for _ in range(runs):
            t0 = time.perf_counter()
            r = backend.run(job, lang)
            b = time.perf_counter() - t0
            if r.verdict is not Verdict.OK:
                raise RuntimeError(f"trivial program failed in bwrap: {r}")
            a, code = bare_run(TRIVIAL, workdir)
            if code != 0:
                raise RuntimeError("trivial program failed bare")
            boxed.append(b)
            bare.append(a)
            diff.append(b - a)
    finally:
        backend.close()
    ms = lambda x: round(x * 1000, 2)  # noqa: E731
    return {
        "runs": runs,
        "bare_ms": {"p50": ms(percentile(bare, 0.5)), "p99": ms(percentile(bare, 0.99))},
        "bwrap_ms": {"p50": ms(percentile(boxed, 0.5)), "p99": ms(percentile(boxed, 0.99))},
        "overhead_ms": {"p50": ms(percentile(diff, 0.5)), "p99": ms(percentile(diff, 0.99)),
                        "mean": ms(statistics.fmean(diff))},
    }


async def service_throughput(sets: dict[str, list[str]], slots: int) -> dict[str, dict]:
    """Each set through one real `referee serve sandbox` process, `slots` jobs at a time
    (plus as many waiting, so a slot never idles for want of work)."""
    size = max(len(v) for v in sets.values())
    args = ["sandbox", "--backend", "bwrap", "--slots", str(slots), "--max-queue", str(size)]
    out = {}
    with serve_process(args) as server:
        async with SandboxClient(server.address, timeout_s=120) as client:
            await client.execute(Job("python", TRIVIAL))  # warm
            sem = asyncio.Semaphore(slots * 2)

            async def one(code: str) -> Verdict:
                async with sem:
                    return (await client.execute(Job("python", code))).verdict

            for kind, progs in sets.items():
                t0 = time.perf_counter()
                verdicts = await asyncio.gather(*(one(c) for c in progs))
                seconds = time.perf_counter() - t0
                out[kind] = {"programs": len(progs), "seconds": round(seconds, 3),
                             "programs_per_s": round(len(progs) / seconds, 1),
                             "not_ok": sum(1 for v in verdicts if v is not Verdict.OK)}
    return out


def bare_throughput(progs: list[str], slots: int, workdir: Path) -> dict:
    t0 = time.perf_counter()
    with ThreadPoolExecutor(slots) as pool:
        codes = list(pool.map(lambda c: bare_run(c, workdir)[1], progs))
    seconds = time.perf_counter() - t0
    return {"programs": len(progs), "seconds": round(seconds, 3),
            "programs_per_s": round(len(progs) / seconds, 1), "not_ok": sum(1 for c in codes if c != 0)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=200, help="paired runs for the overhead figure")
    parser.add_argument("--programs", type=int, default=200, help="programs for the throughput figure (>= 100)")
    parser.add_argument("--slots", type=int, default=os.cpu_count() or 2)
    parser.add_argument("--quick", action="store_true", help="a smoke run: 20 pairs, 30 programs")
    args = parser.parse_args()
    if args.quick:
        args.runs, args.programs = 20, 30
    sets = {kind: programs(args.programs, kind) for kind in ("typical", "trivial")}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        over = overhead(args.runs, work)
        before = {k: bare_throughput(v, args.slots, work) for k, v in sets.items()}
        served = asyncio.run(service_throughput(sets, args.slots))
        after = {k: bare_throughput(v, args.slots, work) for k, v in sets.items()}  # noise hits both sides
    throughput = {}
    for kind in sets:
        bare_rate = statistics.fmean([before[kind]["programs_per_s"], after[kind]["programs_per_s"]])
        throughput[kind] = {
            "service": served[kind], "bare_before": before[kind], "bare_after": after[kind],
            "bare_ms_per_program": round(1000 * args.slots / bare_rate, 1),
            "service_vs_bare": round(served[kind]["programs_per_s"] / bare_rate, 3),
        }
    ratio = throughput["typical"]["service_vs_bare"]
    all_ok = all(d[k]["not_ok"] == 0 for d in (before, served, after) for k in sets)
    out = {
        "bench": "sandbox",
        "backend": "bwrap",
        "slots": args.slots,
        "overhead": over,
        "throughput": throughput,
        "targets": {"overhead_p50_ms": "<= 15", "overhead_p99_ms": "<= 60", "service_vs_bare (typical)": ">= 0.7"},
        "pass": {
            "overhead_p50": over["overhead_ms"]["p50"] <= 15,
            "overhead_p99": over["overhead_ms"]["p99"] <= 60,
            "service_vs_bare": ratio >= 0.7,
            "all_programs_ok": all_ok,
        },
        "env": {"python": platform.python_version(), "cpu_count": os.cpu_count(), "quick": args.quick,
                "loadavg_1m": round(os.getloadavg()[0], 2)},
    }
    print(json.dumps(out))
    sys.exit(0)


if __name__ == "__main__":
    main()
