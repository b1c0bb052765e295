"""Benchmark: what isolation costs.

1. Per-execution overhead of the bwrap backend over a bare `subprocess` run of the same
   program (the same interpreter, the same file), measured in pairs, interleaved, so
   machine noise hits both. Reports p50/p99 of each and of the per-pair difference.
2. Throughput of `referee serve sandbox` (a real server process, real gRPC) at its slot
   count on N small test-carrying programs, against the same programs run bare with the
   same parallelism.

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

# Small programs that carry their own tests, as the code verifier sends them.
_FUNCS = [
    ("def f(n):\n    return sum(range(n + 1))\n", lambda n: n * (n + 1) // 2),
    ("def f(n):\n    a, b = 0, 1\n    for _ in range(n):\n        a, b = b, a + b\n    return a\n", None),
    ("def f(n):\n    return sorted(str(n), reverse=True)\n", lambda n: sorted(str(n), reverse=True)),
    ("def f(n):\n    return [p for p in range(2, n) if all(p % d for d in range(2, int(p**0.5) + 1))]\n", None),
    ("def f(n):\n    return str(n)[::-1]\n", lambda n: str(n)[::-1]),
]


def programs(n: int) -> list[str]:
    """`n` distinct programs: a function plus asserts on a few inputs."""
    out = []
    for i in range(n):
        src, ref = _FUNCS[i % len(_FUNCS)]
        scope: dict = {}
        exec(src, scope)  # noqa: S102 - our own generated code, to compute expectations
        asserts = "".join(f"assert f({k}) == {scope['f'](k)!r}\n" for k in range(i % 7, i % 7 + 4 + i % 5))
        out.append(f"{src}\n{asserts}print('ok {i}')\n")
    return out


def percentile(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, max(0, round(q * (len(xs) - 1))))]


def bare_run(code: str, workdir: Path) -> tuple[float, int]:
    path = workdir / f"p{os.getpid()}_{time.perf_counter_ns()}.py"
    path.write_text(code)
    t0 = time.perf_counter()
    p = subprocess.run([SYSTEM_PYTHON, "-I", "-S", str(path)], capture_output=True, timeout=60, check=False)
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


async def service_throughput(progs: list[str], slots: int) -> dict:
    args = ["sandbox", "--backend", "bwrap", "--slots", str(slots), "--max-queue", str(len(progs))]
    with serve_process(args) as server:
        async with SandboxClient(server.address, timeout_s=120) as client:
            await client.execute(Job("python", TRIVIAL))  # warm
            sem = asyncio.Semaphore(slots * 2)  # keep every slot busy, the queue short

            async def one(code: str) -> Verdict:
                async with sem:
                    return (await client.execute(Job("python", code))).verdict

            t0 = time.perf_counter()
            verdicts = await asyncio.gather(*(one(c) for c in progs))
            seconds = time.perf_counter() - t0
    bad = [v.value for v in verdicts if v is not Verdict.OK]
    return {"programs": len(progs), "seconds": round(seconds, 3),
            "programs_per_s": round(len(progs) / seconds, 1), "not_ok": len(bad)}


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
    progs = programs(args.programs)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        over = overhead(args.runs, work)
        bare = bare_throughput(progs, args.slots, work)
        served = asyncio.run(service_throughput(progs, args.slots))
        bare2 = bare_throughput(progs, args.slots, work)  # again, after: noise hits both sides
    bare_rate = statistics.fmean([bare["programs_per_s"], bare2["programs_per_s"]])
    ratio = round(served["programs_per_s"] / bare_rate, 3)
    out = {
        "bench": "sandbox",
        "backend": "bwrap",
        "slots": args.slots,
        "overhead": over,
        "throughput": {"service": served, "bare_before": bare, "bare_after": bare2, "service_vs_bare": ratio},
        "targets": {"overhead_p50_ms": "<= 15", "overhead_p99_ms": "<= 60", "service_vs_bare": ">= 0.7"},
        "pass": {
            "overhead_p50": over["overhead_ms"]["p50"] <= 15,
            "overhead_p99": over["overhead_ms"]["p99"] <= 60,
            "service_vs_bare": ratio >= 0.7,
            "all_programs_ok": served["not_ok"] == 0 and bare["not_ok"] == 0,
        },
        "env": {"python": platform.python_version(), "cpu_count": os.cpu_count(), "quick": args.quick,
                "loadavg_1m": round(os.getloadavg()[0], 2)},
    }
    print(json.dumps(out))
    sys.exit(0)


if __name__ == "__main__":
    main()
