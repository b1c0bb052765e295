"""Throughput of the verifiers service against the two designs it replaces.

Prints one JSON object (DESIGN.md section 9). Every figure and its baseline are
measured in the same run, taking turns round by round (``--rounds``), so that a busy
neighbour on a shared machine slows every system alike instead of just one:

- ``exact``: the gRPC service (8 callers, batches of 256 through `RewardClient`)
  against a one-sample-per-request HTTP/JSON reward server, the shape of OpenRLHF's
  ``serve_rm`` and slime's ``--rm-url``: FastAPI + uvicorn, ``POST /score`` with
  ``{prompt, completion, reference}`` answered ``{"reward": float}``, the same `exact`
  function called in the handler, driven by 8 httpx callers. It runs with 1 and with W
  uvicorn workers and the faster counts. Target: the gRPC service moves at least 20x the
  samples per second. The HTTP side's cost is mostly the client's (httpx spends about
  1 ms of CPU per request); when aiohttp is installed the same server is also driven by
  aiohttp and that ratio is reported too, without a target.
- ``math``: the gRPC service against the same verifier called directly in a
  `multiprocessing` pool of as many processes as the service has workers (no network,
  no protobuf). Target: the service takes at most 1.5x the pool's time for the same
  samples, i.e. the serving overhead is small next to the verification itself.
- ``ifeval`` and ``tool_call``: the same comparison (gRPC against the pool, on the
  samples gRPC answered), plus the verifier called in a plain loop in this process (one
  core, no pool), without targets. Samples come from `reward_samples`: IFEval essays of
  a few hundred words with 2-5 instructions, and tool calls in the three text forms
  against schemas, about half right; each with the value the verifier must give.

The server runs as a subprocess (``referee serve verifiers``) so that the client and the
server do not share a GIL, with its result cache off (``--cache-size 0``) so that every
sample is verified; the generated samples are all distinct as well.

What this does not measure: the cache (off on purpose), TLS, auth, more than one
replica, or anything off loopback. Client and servers share the machine's cores, as a
trainer and a co-located reward service would.

    python bench/reward_service.py            # full run (about 1.5 minutes on 2 cores)
    python bench/reward_service.py --quick    # smoke run (well under 30 s)
"""

import argparse
import asyncio
import gc
import importlib.util
import json
import multiprocessing
import os
import platform
import queue
import random
import re
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from reward_samples import ifeval_samples, tool_call_samples

from referee.testing import free_port
from referee.types import Sample

EXACT_SPEC = "referee.verifiers.match:exact"
MATH_SPEC = "referee.verifiers.math_answer:math_reward"
IFEVAL_SPEC = "referee.verifiers.ifeval:ifeval"
TOOL_CALL_SPEC = "referee.verifiers.tool_call:tool_call"
LOOPED = ("ifeval", "tool_call")  # rewards also timed in a plain loop in this process
START_TIMEOUT_S = 180.0
TARGET_HTTP_RATIO = 20.0
TARGET_MATH_RATIO = 1.5
HERE = Path(__file__).resolve().parent


# --- workloads ------------------------------------------------------------------------

_CAPITALS = [("France", "Paris"), ("Japan", "Tokyo"), ("Kenya", "Nairobi"), ("Peru", "Lima"),
             ("Norway", "Oslo"), ("Egypt", "Cairo"), ("Chile", "Santiago"), ("Nepal", "Kathmandu")]


def exact_samples(n: int, seed: int, start: int = 0) -> list[tuple[Sample, float]]:
    """Short-answer samples, all distinct, with the value `exact` should give."""
    rng = random.Random(seed)
    out = []
    for i in range(start, start + n):
        country, city = _CAPITALS[rng.randrange(len(_CAPITALS))]
        ref = f"{city}-{i}"
        kind = rng.random()
        if kind < 0.5:
            completion, want = ref, 1.0
        elif kind < 0.7:
            completion, want = f"  {ref}\n", 1.0  # surrounding whitespace is stripped
        elif kind < 0.85:
            completion, want = ref.lower(), 0.0
        else:
            completion, want = f"{city}-{i + 1}", 0.0
        prompt = f"Q{i}: What is the capital of {country}? Answer with the city and the tag {i}."
        out.append((Sample(completion=completion, id=f"e{i}", prompt=prompt, reference=ref), want))
    return out


_PREAMBLES = [
    "Let me work through this step by step. First I simplify the expression, then I check "
    "the edge cases and make sure nothing cancels unexpectedly.",
    "We set up the equation and solve for the unknown. Substituting back confirms the value.",
    "Counting the cases separately and adding them gives the total below.",
    "Using the formula for the sum of an arithmetic series and simplifying, we get",
]


def math_samples(n: int, seed: int, start: int = 0) -> list[tuple[Sample, float]]:
    """Math samples with \\boxed{} answers, fractions, decimals, roots and wrong answers,
    all distinct, with the value a math verifier is expected to give (for a sanity check)."""
    rng = random.Random(seed)
    out = []
    for i in range(start, start + n):
        k = i + 2
        pre = _PREAMBLES[rng.randrange(len(_PREAMBLES))]
        kind = i % 10
        if kind == 0:  # boxed integer, right
            ref, ans, want = str(k * 7), f"\\boxed{{{k * 7}}}", 1.0
        elif kind == 1:  # boxed integer, wrong
            ref, ans, want = str(k * 7), f"\\boxed{{{k * 7 + 1}}}", 0.0
        elif kind == 2:  # fraction in latex against a plain fraction
            b = rng.choice([3, 7, 9, 11, 13])
            ref, ans, want = f"{k}/{b}", f"\\boxed{{\\frac{{{k}}}{{{b}}}}}", 1.0
        elif kind == 3:  # terminating decimal against a latex fraction
            b = rng.choice([2, 4, 5, 8, 16, 20, 25])
            dec = f"{k / b:.6f}".rstrip("0").rstrip(".")
            ref, ans, want = f"\\frac{{{k}}}{{{b}}}", f"The answer is {dec}.", 1.0
        elif kind == 4:  # decimal, wrong
            ref, ans, want = f"{k}.5", f"\\boxed{{{k}.25}}", 0.0
        elif kind == 5:  # negative number after "Answer:"
            ref, ans, want = f"-{k}", f"Answer: $-{k}$", 1.0
        elif kind == 6:  # equivalent radical forms
            ref, ans, want = f"\\sqrt{{{2 * k * k}}}", f"\\boxed{{{k}\\sqrt{{2}}}}", 1.0
        elif kind == 7:  # unsimplified fraction
            ref, ans, want = f"\\frac{{{k}}}{{3}}", f"\\boxed{{\\frac{{{2 * k}}}{{6}}}}", 1.0
        elif kind == 8:  # a sum the verifier must evaluate
            ref, ans, want = str(3 * k), f"so the total is $\\boxed{{{k} + {2 * k}}}$", 1.0
        else:  # no final answer at all
            ref, ans, want = str(k), "I could not finish this one in time, sorry.", 0.0
        prompt = f"Problem {i}: compute the quantity described for n = {k}."
        completion = f"{pre} {ans}" if kind != 9 else ans
        out.append((Sample(completion=completion, id=f"m{i}", prompt=prompt, reference=ref), want))
    return out


def batches(items: Sequence[Any], size: int) -> list[Sequence[Any]]:
    return [items[i : i + size] for i in range(0, len(items), size)]


# --- subprocesses ---------------------------------------------------------------------


@contextmanager
def subprocess_group(
    cmd: list[str], name: str
) -> Iterator[tuple[subprocess.Popen[str], queue.Queue[str], Path]]:
    """Starts `cmd` in its own process group; on exit SIGTERMs it, then SIGKILLs the group.

    Yields the process, a queue of its stdout lines (read by a thread, so the pipe never
    fills) and the file its stderr goes to.
    """
    err = tempfile.NamedTemporaryFile("w+", prefix=f"bench-{name}-", suffix=".log", delete=False)
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=err, text=True, start_new_session=True)
    lines: queue.Queue[str] = queue.Queue()

    def pump() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.put(line)

    threading.Thread(target=pump, name=f"{name}-stdout", daemon=True).start()
    try:
        yield proc, lines, Path(err.name)
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                pass
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # workers, fork server, uvicorn children
        except (ProcessLookupError, PermissionError):
            pass
        proc.wait(5)
        err.close()
        os.unlink(err.name)


def _tail(path: Path, n: int = 2000) -> str:
    try:
        return path.read_text(errors="replace")[-n:]
    except OSError:
        return ""


def wait_for_line(proc: subprocess.Popen[str], lines: queue.Queue[str], pattern: str,
                  err: Path, timeout_s: float) -> re.Match[str]:
    deadline = time.monotonic() + timeout_s
    rx = re.compile(pattern)
    while time.monotonic() < deadline:
        try:
            line = lines.get(timeout=0.2)
        except queue.Empty:
            if proc.poll() is not None:
                raise RuntimeError(f"{proc.args[:6]} exited with {proc.returncode}: {_tail(err)}") from None
            continue
        if m := rx.search(line):
            return m
    raise RuntimeError(f"no line matching {pattern!r} within {timeout_s:.0f}s: {_tail(err)}")


# --- gRPC ------------------------------------------------------------------------------


@dataclass
class Run:
    """One measured run: how many samples were answered, in how long."""

    samples: int
    seconds: float
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "samples": self.samples,
            "seconds": round(self.seconds, 4),
            "samples_per_s": round(self.samples / self.seconds, 1) if self.seconds > 0 else None,
            **self.extra,
        }


async def drive_grpc(client: Any, reward: str, work: list[Sequence[Sample]], callers: int,
                     time_cap_s: float) -> tuple[Run, list[Any]]:
    """`callers` loops share `client` and take batches from `work` until it runs out or
    `time_cap_s` passes; returns the run and the scores per batch (None where skipped)."""
    results: list[Any] = [None] * len(work)
    next_batch = iter(range(len(work)))
    t0 = time.perf_counter()

    async def caller() -> None:
        for b in next_batch:
            if time.perf_counter() - t0 > time_cap_s:
                return
            results[b] = await client.score(reward, work[b])

    await asyncio.gather(*(caller() for _ in range(callers)))
    seconds = time.perf_counter() - t0
    done = [r for r in results if r is not None]
    return Run(sum(len(r) for r in done), seconds, {"batches": len(done)}), results


def grpc_server_cmd(workers: int, specs: list[str]) -> list[str]:
    cmd = [sys.executable, "-m", "referee.cli", "serve", "verifiers", "--host", "127.0.0.1",
           "--port", "0", "--workers", str(workers), "--cache-size", "0", "--grace", "2",
           "--no-builtins", "--no-entrypoints"]
    for s in specs:
        cmd += ["--load", s]
    return cmd


# --- in-process baseline ---------------------------------------------------------------

_TABLE: dict[str, Any] = {}


def _pool_init(specs: list[str]) -> None:
    from referee.registry import load_specs

    _TABLE.update(load_specs(specs))


def verify_one(table: dict[str, Any], name: str, sample: Sample) -> tuple[str, Any]:
    """The verifier called directly; exceptions become statuses as the service does."""
    from referee.types import InvalidInput

    try:
        r = table[name].verify(sample)
    except InvalidInput:
        return ("INVALID_INPUT", None)
    except Exception as e:  # reported as a status, like the service; compared below
        return ("ERROR", f"{type(e).__name__}: {e}")
    return (r.status.value, r.value)


def _pool_verify(job: tuple[str, Sample]) -> tuple[str, Any]:
    return verify_one(_TABLE, *job)


@contextmanager
def verifier_pool(specs: list[str], warm: list[tuple[str, Sample]], workers: int) -> Iterator[Any]:
    """A plain `multiprocessing` pool of `workers` processes with the verifiers loaded,
    started from a fork server like the service's workers; `warm` ((reward, sample)
    pairs) is scored first, one sample per task, so that every worker has made its
    first calls before timing."""
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(["referee.registry", "referee.types"])
    pool = ctx.Pool(workers, initializer=_pool_init, initargs=(specs,))
    try:
        pool.map(_pool_verify, warm, chunksize=1)
        yield pool
    finally:
        pool.terminate()
        pool.join()


def run_pool(pool: Any, reward: str, samples: list[Sample], chunksize: int,
             time_cap_s: float) -> tuple[Run, list[tuple[str, Any]]]:
    jobs = [(reward, s) for s in samples]
    t0 = time.perf_counter()
    out = pool.map_async(_pool_verify, jobs, chunksize=chunksize).get(timeout=time_cap_s * 3)
    return Run(len(samples), time.perf_counter() - t0), out


def run_loop(table: dict[str, Any], reward: str, samples: list[Sample],
             time_cap_s: float) -> tuple[Run, list[tuple[str, Any]]]:
    """The verifier called sample by sample in this process: one core, no pool, no IPC."""
    out = []
    t0 = time.perf_counter()
    for s in samples:
        out.append(verify_one(table, reward, s))
        if time.perf_counter() - t0 > time_cap_s:
            break
    return Run(len(out), time.perf_counter() - t0, {"processes": 1}), out


# --- HTTP baseline ---------------------------------------------------------------------


def make_http_app() -> Any:
    """The one-sample-per-request reward server (uvicorn --factory target).

    Generous to the baseline: an `async def` handler (no thread-pool hop) reading the raw
    JSON body (no pydantic model), calling the verifier in the event loop. (This module has
    no ``from __future__ import annotations`` because FastAPI must see `Request` itself.)
    """
    from fastapi import FastAPI, Request
    from fastapi.responses import JSONResponse

    from referee.registry import load_specs

    table = load_specs([EXACT_SPEC])
    app = FastAPI()

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.post("/score")
    async def score(request: Request) -> JSONResponse:
        data = await request.json()
        s = Sample(completion=data.get("completion"), prompt=data.get("prompt", ""),
                   reference=data.get("reference", ""))
        r = table["exact"].verify(s)
        return JSONResponse({"reward": r.value})

    return app


def _nodelay_protocol() -> type:
    """uvicorn's HTTP protocol with TCP_NODELAY set on every connection.

    With ``--workers`` > 1 uvicorn binds the listening socket itself as
    ``socket.socket(AF_INET)``, whose ``proto`` is 0, and asyncio only sets TCP_NODELAY on
    sockets whose proto is IPPROTO_TCP; so every response (headers and body written
    separately) waits out the client's delayed ACK, about 40 ms. One worker does not hit
    this. The baseline would be slowed by a configuration accident, not by its design, so
    it gets Nagle switched off, as any tuned deployment would.
    """
    from uvicorn.protocols.http.auto import AutoHTTPProtocol

    class NoDelayHTTPProtocol(AutoHTTPProtocol):  # type: ignore[misc, valid-type]
        def connection_made(self, transport: Any) -> None:
            sock = transport.get_extra_info("socket")
            if sock is not None:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            super().connection_made(transport)

    return NoDelayHTTPProtocol


def __getattr__(name: str) -> Any:  # uvicorn --http imports the protocol by name
    if name == "NoDelayHTTPProtocol":
        return _nodelay_protocol()
    raise AttributeError(name)


def http_server_cmd(port: int, workers: int, nodelay: bool = True) -> list[str]:
    mod = Path(__file__).stem
    return [sys.executable, "-m", "uvicorn", "--factory", "--app-dir", str(HERE),
            f"{mod}:make_http_app", "--host", "127.0.0.1", "--port", str(port),
            "--workers", str(workers), "--no-access-log", "--log-level", "warning",
            *(["--http", f"{mod}:NoDelayHTTPProtocol"] if nodelay else [])]


async def wait_http(url: str, proc: subprocess.Popen[str], err: Path, timeout_s: float) -> None:
    """Polls GET /health until uvicorn answers."""
    import httpx

    deadline = time.monotonic() + timeout_s
    async with httpx.AsyncClient() as c:
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"uvicorn exited with {proc.returncode}: {_tail(err)}")
            try:
                if (await c.get(url + "/health", timeout=1.0)).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            await asyncio.sleep(0.1)
    raise RuntimeError(f"uvicorn at {url} did not answer within {timeout_s:.0f}s")


async def drive_http(url: str, samples: list[tuple[Sample, float]], callers: int,
                     workers: int, time_cap_s: float, client: str = "httpx") -> Run:
    """`callers` loops, one sample per POST, over one keep-alive connection pool.

    `client` is "httpx" (the baseline the targets use) or "aiohttp" (a leaner client,
    reported beside it when installed: the HTTP side's cost is mostly the client's).
    """
    stats = {"errors": 0, "wrong": 0, "done": 0}

    def check(status: int, body: Any, want: float) -> None:
        if status != 200:
            stats["errors"] += 1
        elif body["reward"] != want:
            stats["wrong"] += 1
        stats["done"] += 1

    async def run(post: Callable[[Sample], Any]) -> float:
        await asyncio.gather(*(post(s) for s, _ in samples[: 2 * callers]))  # open connections
        stats.update(errors=0, wrong=0, done=0)
        todo = iter(samples)
        t0 = time.perf_counter()

        async def caller() -> None:
            for s, want in todo:
                if time.perf_counter() - t0 > time_cap_s:
                    return
                check(*(await post(s)), want)

        await asyncio.gather(*(caller() for _ in range(callers)))
        return time.perf_counter() - t0

    def body(s: Sample) -> dict[str, Any]:
        return {"prompt": s.prompt, "completion": s.completion, "reference": s.reference}

    if client == "httpx":
        import httpx

        limits = httpx.Limits(max_connections=callers, max_keepalive_connections=callers)
        async with httpx.AsyncClient(base_url=url, limits=limits, timeout=30.0) as c:

            async def post(s: Sample) -> tuple[int, Any]:
                resp = await c.post("/score", json=body(s))
                return resp.status_code, resp.json() if resp.status_code == 200 else None

            seconds = await run(post)
    else:
        import aiohttp

        async with aiohttp.ClientSession(url, connector=aiohttp.TCPConnector(limit=callers)) as c:

            async def post(s: Sample) -> tuple[int, Any]:
                async with c.post("/score", json=body(s)) as resp:
                    return resp.status, await resp.json() if resp.status == 200 else None

            seconds = await run(post)
    return Run(stats["done"], seconds, {"client": client, "uvicorn_workers": workers,
                                        "http_errors": stats["errors"], "wrong_values": stats["wrong"],
                                        "capped": stats["done"] < len(samples)})


# --- the benchmark ----------------------------------------------------------------------


def answered(work: list[Sequence[Any]], scores: list[Any]) -> tuple[list[Any], list[Any]]:
    """The items of the batches that were answered (a time cap may skip some), and their scores."""
    items = [x for b, sc in zip(work, scores, strict=True) if sc is not None for x in b]
    got = [x for sc in scores if sc is not None for x in sc]
    return items, got


def share(items: Sequence[Any], k: int, rounds: int) -> Sequence[Any]:
    """Round k's share of `items` (shares differ in size by at most one)."""
    n = len(items)
    return items[k * n // rounds : (k + 1) * n // rounds]


def total(runs: list[Run], **extra: Any) -> Run:
    return Run(sum(r.samples for r in runs), sum(r.seconds for r in runs), extra)


def rate(r: Run) -> float:
    return r.samples / r.seconds


def settle() -> None:
    """Moves what is alive now (the workload, earlier results) out of the collector's reach.

    Without it, full collections over the bench's own hundred thousand samples and scores
    land inside timed runs: exact over gRPC then alternates between about 40k and 65k
    samples/s from one round to the next.
    """
    gc.collect()
    gc.freeze()


async def measure(args: argparse.Namespace, addr: str, http_urls: dict[tuple[str, int], str],
                  math_spec: str, math_reward: str, work: dict[str, list[tuple[Sample, float]]],
                  log: Callable[[str], None]) -> dict[str, Any]:
    """Every system, round by round: exact over gRPC, exact over each HTTP set-up, then
    for math, ifeval and tool_call: gRPC, the pool on the samples gRPC answered, and
    (ifeval, tool_call) the plain loop on the same samples. Alternating spreads a noisy
    neighbour over all of them instead of letting it land on one."""
    from referee.registry import load_specs
    from referee.rewardsvc.client import RewardClient

    W, C, B, rounds = args.workers, args.callers, args.batch_size, args.rounds
    cap = args.time_cap / rounds
    ex_pairs = batches(work["exact"], B)
    ex_warm = [s for s, _ in exact_samples(8 * W, seed=4, start=10**6)]
    # key: (reward name, warm-up samples); the ifeval warm-up makes every worker load
    # langdetect's profiles before timing.
    versus = {
        "math": (math_reward, [s for s, _ in math_samples(8 * W, seed=5, start=10**6)]),
        "ifeval": ("ifeval", [s for s, _ in ifeval_samples(
            8 * W, seed=6, start=10**6, must=("language:response_language",))]),
        "tool_call": ("tool_call", [s for s, _ in tool_call_samples(8 * W, seed=7, start=10**6)]),
    }
    pairs_of = {key: batches(work[key], B) for key in versus}
    runs: dict[str, list[Run]] = {"exact_grpc": []}
    runs.update({f"http_{c}_{hw}": [] for c, hw in http_urls})
    got: dict[str, list[Any]] = {"exact_items": [], "exact": []}
    for key in versus:
        runs.update({f"{key}_grpc": [], f"{key}_pool": []} | ({f"{key}_loop": []} if key in LOOPED else {}))
        got.update({f"{key}_items": [], key: [], f"{key}_pool": []} | ({f"{key}_loop": []} if key in LOOPED else {}))
    table = load_specs([IFEVAL_SPEC, TOOL_CALL_SPEC])
    for key in LOOPED:
        for s in versus[key][1]:
            verify_one(table, key, s)

    async def against_inprocess(key: str, k: int, pool: Any) -> str:
        reward = versus[key][0]
        pairs = share(pairs_of[key], k, rounds)
        settle()
        g, sc = await drive_grpc(client, reward, [[s for s, _ in b] for b in pairs], C, cap)
        items, scores = answered(pairs, sc)
        settle()
        p, out = run_pool(pool, reward, [s for s, _ in items], args.pool_chunksize, cap)
        runs[f"{key}_grpc"].append(g)
        runs[f"{key}_pool"].append(p)
        got[f"{key}_items"] += items
        got[key] += scores
        got[f"{key}_pool"] += out
        line = f"{reward} gRPC {g.seconds:.2f}s vs pool {p.seconds:.2f}s"
        if key in LOOPED:
            settle()
            lp, lout = run_loop(table, reward, [s for s, _ in items], cap)
            runs[f"{key}_loop"].append(lp)
            got[f"{key}_loop"] += lout
            line += f" ({rate(g):.0f}/s; loop {rate(lp):.0f}/s)"
        return line

    async with RewardClient(addr, chunk_size=B, max_concurrent_chunks=C,
                            timeout_s=max(60.0, args.time_cap * 2)) as client:
        warm_all = [("exact", ex_warm), *versus.values()]
        for reward, warm in warm_all:  # connect, first calls
            await asyncio.gather(*(client.score(reward, warm[i::2]) for i in range(2)))
        pool_warm = [(reward, s) for reward, warm in versus.values() for s in warm]
        with verifier_pool([math_spec, IFEVAL_SPEC, TOOL_CALL_SPEC], pool_warm, W) as pool:
            for k in range(rounds):
                pairs = share(ex_pairs, k, rounds)
                settle()
                g, sc = await drive_grpc(client, "exact", [[s for s, _ in b] for b in pairs], C, cap)
                runs["exact_grpc"].append(g)
                items, scores = answered(pairs, sc)
                got["exact_items"] += items
                got["exact"] += scores
                line = [f"exact gRPC {rate(g):.0f}/s"]

                for (c, hw), url in http_urls.items():
                    settle()
                    h = await drive_http(url, list(share(work["http"], k, rounds)), C, hw, cap, c)
                    runs[f"http_{c}_{hw}"].append(h)
                    line.append(f"HTTP {c} x{hw} {rate(h):.0f}/s")

                for key in versus:
                    line.append(await against_inprocess(key, k, pool))
                log(f"round {k + 1}/{rounds}: " + ", ".join(line))
    return {"runs": runs, "got": got}


def rule_report(key: str, runs: dict[str, list[Run]], got: dict[str, list[Any]], n_batches: int,
                chunksize: int) -> tuple[dict[str, Any], dict[str, Any], dict[str, float]]:
    """The JSON section, checks and untargeted ratios of ifeval or tool_call: gRPC, the
    pool and the loop, and each sample's value against the one it was built to get."""
    g_runs, p_runs, l_runs = runs[f"{key}_grpc"], runs[f"{key}_pool"], runs[f"{key}_loop"]
    answered_batches = sum(r.extra["batches"] for r in g_runs)
    g = total(g_runs, batches=answered_batches, capped=answered_batches < n_batches)
    p = total(p_runs, chunksize=chunksize)
    lp = total(l_runs, processes=1, capped=sum(r.samples for r in l_runs) < p.samples)
    time_rounds = [a.seconds / b.seconds for a, b in zip(g_runs, p_runs, strict=True)]
    scores, items = got[key], got[f"{key}_items"]
    agree = sum(1 for s, (st, v) in zip(scores, got[f"{key}_pool"], strict=True)
                if s.status.value == st and s.value == v)
    checks: dict[str, Any] = {
        f"{key}_grpc_non_ok": sum(1 for s in scores if not s.ok),
        f"{key}_grpc_wrong_values": sum(1 for s, (_, w) in zip(scores, items, strict=True)
                                        if s.ok and s.value != w),
        f"{key}_grpc_equals_inprocess": agree == len(scores),
        # The loop may stop early at the time cap: it is checked on what it scored.
        f"{key}_loop_wrong_values": sum(1 for (st, v), (_, w) in zip(got[f"{key}_loop"], items, strict=False)
                                        if st != "OK" or v != w),
    }
    checks[f"{key}_valid"] = (checks[f"{key}_grpc_non_ok"] == checks[f"{key}_grpc_wrong_values"]
                              == checks[f"{key}_loop_wrong_values"] == 0
                              and checks[f"{key}_grpc_equals_inprocess"] and len(scores) > 0)
    section = {
        "grpc": g.to_json(),
        "inprocess_pool": p.to_json(),
        "inprocess_loop": lp.to_json(),
        "round_time_ratios": [round(x, 3) for x in time_rounds],
        "median_round_time_ratio": round(statistics.median(time_rounds), 3),
    }
    ratios = {f"{key}_grpc_time_ratio": round(g.seconds / p.seconds, 3),
              f"{key}_grpc_vs_loop_throughput": round(rate(g) / rate(lp), 2)}
    return section, checks, ratios


def workload(key: str, pairs: list[tuple[Sample, float]]) -> dict[str, Any]:
    """What the generated samples look like (for reading the rates)."""
    n = max(1, len(pairs))
    out: dict[str, Any] = {
        "samples": len(pairs),
        "mean_completion_chars": round(sum(len(s.completion or "") for s, _ in pairs) / n),
        "mean_expected_value": round(sum(w for _, w in pairs) / n, 3),
    }
    if key == "ifeval":
        out["mean_words"] = round(sum(len(re.findall(r"\w+", s.completion or "")) for s, _ in pairs) / n)
        out["mean_instructions"] = round(
            sum(len(s.metadata["instruction_id_list"]) for s, _ in pairs) / n, 2)
    else:
        out["mean_tools"] = round(sum(len(s.metadata["tools"]) if isinstance(s.metadata["tools"], list)
                                      else len(json.loads(s.metadata["tools"])) for s, _ in pairs) / n, 2)
    return out


def bench(args: argparse.Namespace, log: Callable[[str], None]) -> dict[str, Any]:
    W, C = args.workers, args.callers
    math_ready = importlib.util.find_spec("referee.verifiers.math_answer") is not None
    math_spec, math_reward = (MATH_SPEC, "math") if math_ready else (EXACT_SPEC, "exact")
    specs = [EXACT_SPEC] + ([MATH_SPEC] if math_ready else []) + [IFEVAL_SPEC, TOOL_CALL_SPEC]
    clients = ["httpx"] + (["aiohttp"] if importlib.util.find_spec("aiohttp") else [])
    load_before = os.getloadavg()
    work = {
        "exact": exact_samples(args.exact_batches * args.batch_size, seed=1),
        "math": math_samples(args.math_batches * args.batch_size, seed=2),
        "http": exact_samples(args.http_samples, seed=3),
        "ifeval": ifeval_samples(args.ifeval_batches * args.batch_size, seed=8),
        "tool_call": tool_call_samples(args.tool_call_batches * args.batch_size, seed=9),
    }

    # Every server up at once; an idle one costs no CPU. The HTTP baseline runs with 1 and
    # with W uvicorn workers: on a small machine its client is the bottleneck and one
    # worker can be the faster; the better of the two counts.
    with ExitStack() as stack:
        log(f"starting referee serve verifiers --workers {W} --cache-size 0, uvicorn x1 and x{W}")
        proc, lines, err = stack.enter_context(subprocess_group(grpc_server_cmd(W, specs), "grpc"))
        t_start = time.perf_counter()
        http_urls = {}
        http_procs = {}
        for hw in sorted({1, W}):
            port = free_port()
            url = f"http://127.0.0.1:{port}"
            hproc, _, herr = stack.enter_context(subprocess_group(http_server_cmd(port, hw), f"http{hw}"))
            http_procs[url] = (hproc, herr)
            http_urls.update({(c, hw): url for c in clients})
        addr = wait_for_line(proc, lines, r"listening on grpc://(\S+)", err, START_TIMEOUT_S).group(1)
        startup_s = time.perf_counter() - t_start
        for url, (hproc, herr) in http_procs.items():
            asyncio.run(wait_http(url, hproc, herr, START_TIMEOUT_S))
        log(f"gRPC server at {addr} (up after {startup_s:.1f}s); HTTP at {sorted(set(http_urls.values()))}")
        m = asyncio.run(measure(args, addr, http_urls, math_spec, math_reward, work, log))

    import google.protobuf
    import grpc

    runs, got = m["runs"], m["got"]
    exact_grpc = total(runs["exact_grpc"], batches=sum(r.extra["batches"] for r in runs["exact_grpc"]))
    http = {key: total(rs, **{k: v for k, v in rs[0].extra.items() if k in ("client", "uvicorn_workers")},
                       http_errors=sum(r.extra["http_errors"] for r in rs),
                       wrong_values=sum(r.extra["wrong_values"] for r in rs))
            for key, rs in runs.items() if key.startswith("http_")}
    best = {c: max((k for k in http if http[k].extra["client"] == c), key=lambda k: rate(http[k]))
            for c in clients}
    exact_http = http[best["httpx"]]
    math_grpc = total(runs["math_grpc"], batches=sum(r.extra["batches"] for r in runs["math_grpc"]),
                      capped=sum(r.extra["batches"] for r in runs["math_grpc"]) < args.math_batches)
    math_pool = total(runs["math_pool"], chunksize=args.pool_chunksize)

    http_ratio = rate(exact_grpc) / rate(exact_http)
    http_rounds = [rate(g) / rate(h) for g, h in zip(runs["exact_grpc"], runs[best["httpx"]], strict=True)]
    time_ratio = math_grpc.seconds / math_pool.seconds
    math_rounds = [g.seconds / p.seconds for g, p in zip(runs["math_grpc"], runs["math_pool"], strict=True)]
    informational: dict[str, float] = {}
    if "aiohttp" in best:
        informational["exact_grpc_vs_http_aiohttp_throughput"] = round(
            rate(exact_grpc) / rate(http[best["aiohttp"]]), 2)

    exact_bad = sum(1 for s in got["exact"] if not s.ok)
    exact_wrong = sum(1 for s, (_, w) in zip(got["exact"], got["exact_items"], strict=True)
                      if s.ok and s.value != w)
    agree = sum(1 for s, (st, v) in zip(got["math"], got["math_pool"], strict=True)
                if s.status.value == st and s.value == v)
    labels = sum(1 for s, (_, w) in zip(got["math"], got["math_items"], strict=True) if s.ok and s.value == w)
    n_math = len(got["math"])
    checks = {
        "exact_grpc_non_ok": exact_bad,
        "exact_grpc_wrong_values": exact_wrong,
        "exact_http_errors": sum(h.extra["http_errors"] for h in http.values()),
        "exact_http_wrong_values": sum(h.extra["wrong_values"] for h in http.values()),
        "math_grpc_equals_inprocess": agree == n_math,
        "math_grpc_inprocess_agreement": round(agree / max(1, n_math), 4),
        "math_grpc_non_ok": sum(1 for s in got["math"] if not s.ok),
        "math_expected_label_agreement": round(labels / max(1, n_math), 4),
    }
    valid = (exact_bad == exact_wrong == checks["exact_http_errors"] == checks["exact_http_wrong_values"] == 0
             and checks["math_grpc_equals_inprocess"])
    rules: dict[str, Any] = {}
    for key, n_batches in (("ifeval", args.ifeval_batches), ("tool_call", args.tool_call_batches)):
        section, key_checks, key_ratios = rule_report(key, runs, got, n_batches, args.pool_chunksize)
        rules[key] = {**section, "workload": workload(key, work[key])}
        checks.update(key_checks)
        informational.update(key_ratios)
        valid = valid and key_checks[f"{key}_valid"]
    return {
        "bench": "reward_service",
        "workers": W,
        "callers": C,
        "batch_size": args.batch_size,
        "rounds": args.rounds,
        "quick": args.quick,
        "time_cap_s": args.time_cap,
        "math_verifier": math_reward if math_ready else "exact (referee.verifiers.math_answer not found)",
        "exact": {
            "grpc": exact_grpc.to_json(),
            "http_one_per_request": exact_http.to_json(),
            "http_one_per_request_runs": [h.to_json() for h in http.values()],
            "round_throughput_ratios": [round(x, 2) for x in http_rounds],
            "median_round_throughput_ratio": round(statistics.median(http_rounds), 2),
        },
        "math": {
            "grpc": math_grpc.to_json(),
            "inprocess_pool": math_pool.to_json(),
            "round_time_ratios": [round(x, 3) for x in math_rounds],
            "median_round_time_ratio": round(statistics.median(math_rounds), 3),
        },
        **rules,
        "grpc_server_startup_s": round(startup_s, 2),
        "ratios": {
            "exact_grpc_vs_http_throughput": round(http_ratio, 2),
            "math_grpc_time_ratio": round(time_ratio, 3),
        },
        "informational_ratios": informational,
        "targets": {
            "exact_grpc_vs_http_throughput": f">= {TARGET_HTTP_RATIO:g}",
            "math_grpc_time_ratio": f"<= {TARGET_MATH_RATIO:g}",
        },
        "pass": {
            "exact_grpc_vs_http_throughput": http_ratio >= TARGET_HTTP_RATIO,
            "math_grpc_time_ratio": time_ratio <= TARGET_MATH_RATIO and math_ready,
            "results_valid": valid,
        },
        "checks": checks,
        "env": {
            "python": platform.python_version(),
            "grpcio": grpc.__version__,
            "protobuf": google.protobuf.__version__,
            "cpu_count": os.cpu_count(),
            "platform": platform.platform(),
            "loadavg_1m_before_after": [round(load_before[0], 2), round(os.getloadavg()[0], 2)],
        },
    }


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workers", type=int, default=os.cpu_count() or 2,
                   help="verifier workers of the service, processes of the pool, uvicorn workers (default: CPU count)")
    p.add_argument("--callers", type=int, default=8, help="concurrent callers (default 8)")
    p.add_argument("--batch-size", type=int, default=256, help="samples per gRPC call (default 256)")
    p.add_argument("--exact-batches", type=int, default=400, help="exact batches over gRPC (default 400)")
    p.add_argument("--math-batches", type=int, default=48, help="math batches over gRPC (default 48)")
    p.add_argument("--ifeval-batches", type=int, default=16, help="ifeval batches over gRPC (default 16)")
    p.add_argument("--tool-call-batches", type=int, default=8,
                   help="tool_call batches over gRPC (default 8)")
    p.add_argument("--http-samples", type=int, default=6000,
                   help="exact samples over HTTP, per uvicorn worker count tried (default 6000)")
    p.add_argument("--rounds", type=int, default=6,
                   help="every system runs a share of its samples in each of this many rounds, "
                   "taking turns (default 6)")
    p.add_argument("--pool-chunksize", type=int, default=64,
                   help="Pool.map chunksize of the in-process baseline (default 64, the service's)")
    p.add_argument("--time-cap", type=float, default=60.0,
                   help="seconds each measured system may take over all rounds (default 60)")
    p.add_argument("--quick", action="store_true", help="smoke-sized run (well under 30 s)")
    p.add_argument("--strict", action="store_true", help="exit 1 when a target is missed")
    p.add_argument("--quiet", action="store_true", help="no progress on stderr")
    args = p.parse_args(argv)
    if args.quick:
        args.batch_size = min(args.batch_size, 64)
        args.exact_batches, args.math_batches, args.http_samples, args.rounds = 16, 8, 300, 2
        args.ifeval_batches, args.tool_call_batches = 2, 2
        args.time_cap = min(args.time_cap, 8.0)
    if min(args.workers, args.callers, args.batch_size, args.exact_batches, args.math_batches,
           args.http_samples, args.pool_chunksize, args.rounds) < 1 or args.time_cap <= 0:
        p.error("sizes must be >= 1 and --time-cap > 0")
    if min(args.math_batches, args.ifeval_batches, args.tool_call_batches) < args.rounds:
        p.error("--math-batches, --ifeval-batches and --tool-call-batches must be >= --rounds "
                "(every round takes a share of them)")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)

    def log(msg: str) -> None:
        if not args.quiet:
            print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)

    out = bench(args, log)
    print(json.dumps(out, indent=2))
    return 1 if args.strict and not all(out["pass"].values()) else 0


if __name__ == "__main__":
    sys.exit(main())
