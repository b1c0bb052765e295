"""The `sglang` rollout engine: HTTP to SGLang servers (or one sglang-router).

Request and response fields as in SGLang's `io_struct.py` (`GenerateReqInput`,
`AbortReq`) and `entrypoints/http_server.py` at commit 001067f (main, after
v0.5.3rc2; see `SGLANG_REFERENCE`). Only the native API is used:

* `POST /generate` with `input_ids`, `sampling_params`, `return_logprob: true` and a
  `rid`: **one request per (prompt, sample)**, each with its own `sampling_seed`
  derived from (call seed, prompt, sample). SGLang's `n` would give the n samples one
  shared seed (identical samples under a fixed seed), so it is not used.
* The response's `output_ids`, `meta_info.output_token_logprobs` (`[logprob, token_id,
  text]` per token), `meta_info.finish_reason` (`{"type": "stop"|"length"|"abort",
  "matched": ...}`) and `meta_info.weight_version` become a `Completion`.
* `GET /health_generate` until it answers 200, at start.
* `POST /abort_request` with `{"rid": ...}` for every in-flight request on `close()`.

Several server URLs are used directly, each request going to the server with the
fewest outstanding requests; one router URL is the same code path with one URL.
Connection errors and 5xx answers are retried with jittered exponential backoff for up
to `retry_total_s`; past that `generate` raises `SGLangUnavailableError` naming the
server. A weight sync that cannot reach a server is retried whole for as long. It never returns a partial group: a prompt's group is complete (n
completions) or the call raises.

Not defended against: a server that answers 200 with wrong tokens, and a router that
loses a request without an error (the per-request timeout bounds the wait).
"""

from __future__ import annotations

import asyncio
import random
import threading
import time
import uuid
from collections.abc import Sequence
from typing import Any, Protocol

import httpx
import torch

from .base import Completion, FinishReason, GroupCallback, SamplingParams, WeightSource
from .hf import _mix
from .weight_sync import WeightSyncError

SGLANG_REFERENCE = "sgl-project/sglang io_struct.py @ 001067f (after v0.5.3rc2)"

GENERATE = "/generate"
HEALTH_GENERATE = "/health_generate"
ABORT_REQUEST = "/abort_request"


class SGLangUnavailableError(RuntimeError):
    """A server stayed unreachable (or kept answering 5xx) past the retry budget."""


class SGLangRequestError(RuntimeError):
    """A server refused a request (4xx) or answered something that is not SGLang's."""


class WeightSync(Protocol):
    """Moves new weights onto a set of servers (see `weight_sync.py`)."""

    def sync(self, urls: Sequence[str], source: WeightSource, version: int) -> None: ...


# -- pure request/response translation -------------------------------------------------


def sampling_params_body(params: SamplingParams, seed: int) -> dict[str, Any]:
    """SGLang's `sampling_params` for one sample (n is always 1: one request per sample).

    >>> body = sampling_params_body(SamplingParams(temperature=0.7, max_new_tokens=4), 5)
    >>> body["max_new_tokens"], body["sampling_seed"]
    (4, 5)
    """
    return {
        "n": 1,
        "temperature": params.temperature,
        "top_p": params.top_p,
        "top_k": params.top_k,
        "max_new_tokens": params.max_new_tokens,
        "stop": list(params.stop),
        "stop_token_ids": list(params.stop_token_ids),
        "sampling_seed": seed,
    }


def generate_body(
    prompt_ids: Sequence[int], params: SamplingParams, seed: int, rid: str
) -> dict[str, Any]:
    """The `/generate` body of one (prompt, sample) request."""
    return {
        "rid": rid,
        "input_ids": [int(t) for t in prompt_ids],
        "sampling_params": sampling_params_body(params, seed),
        "return_logprob": True,
        "stream": False,
    }


def sample_seed(base_seed: int, prompt_index: int, sample_index: int) -> int:
    """One seed per (call, prompt, sample), independent of batching and of the server."""
    return _mix(base_seed, prompt_index, sample_index)


def parse_weight_version(value: Any, default: int) -> int:
    """SGLang reports `weight_version` as a string ("default" until a sync sets one)."""
    try:
        return int(value)
    except (TypeError, ValueError):
        return default


def parse_completion(
    response: dict[str, Any],
    *,
    prompt_index: int,
    sample_index: int,
    prompt_ids: Sequence[int],
    default_version: int,
) -> Completion:
    """A `Completion` from one `/generate` response (non-streaming, one prompt)."""
    try:
        meta = response["meta_info"]
        logprob_rows = meta["output_token_logprobs"]
        finish = meta.get("finish_reason") or {"type": "abort"}
    except (KeyError, TypeError) as exc:
        raise SGLangRequestError(
            f"/generate answer lacks {exc}; is this an SGLang server?"
        ) from exc
    token_ids = response.get("output_ids")
    if token_ids is None:
        token_ids = [int(row[1]) for row in logprob_rows]
    kind = finish.get("type") if isinstance(finish, dict) else str(finish)
    if kind not in ("stop", "length", "abort"):
        raise SGLangRequestError(f"/generate finish_reason {finish!r} is not stop/length/abort")
    reason: FinishReason = kind
    matched = finish.get("matched") if isinstance(finish, dict) and kind == "stop" else None
    return Completion(
        prompt_index=prompt_index,
        sample_index=sample_index,
        prompt_ids=list(prompt_ids),
        token_ids=[int(t) for t in token_ids],
        text=response.get("text", ""),
        logprobs=[float(row[0]) for row in logprob_rows],
        finish_reason=reason,
        weight_version=parse_weight_version(meta.get("weight_version"), default_version),
        matched_stop=matched,
    )


def aborted_response() -> dict[str, Any]:
    """What stands in for a sample never sent because the engine was closed."""
    return {
        "text": "",
        "output_ids": [],
        "meta_info": {"output_token_logprobs": [], "finish_reason": {"type": "abort"}},
    }


def backoff_delay(attempt: int, base_s: float = 0.1, cap_s: float = 5.0) -> float:
    """Full-jitter exponential backoff: uniform in [0, min(cap, base * 2**attempt)]."""
    return random.uniform(0, min(cap_s, base_s * 2**attempt))


def wait_healthy(url: str, timeout_s: float, poll_s: float = 0.2) -> None:
    """Block until `GET url/health_generate` answers 200, or raise naming the URL."""
    deadline = time.monotonic() + timeout_s
    last = "no answer"
    with httpx.Client(timeout=max(poll_s, 5.0)) as client:
        while True:
            try:
                response = client.get(url + HEALTH_GENERATE)
                if response.status_code == 200:
                    return
                last = f"HTTP {response.status_code}"
            except httpx.TransportError as exc:
                last = f"{type(exc).__name__}: {exc}"
            if time.monotonic() >= deadline:
                raise SGLangUnavailableError(
                    f"SGLang server {url} not healthy after {timeout_s:g}s "
                    f"({HEALTH_GENERATE}: {last}); is it running? (rollout.sglang.health_timeout_s)"
                )
            time.sleep(poll_s)


def _caused_by_transport(exc: BaseException) -> bool:
    """Whether a connection error (server down or restarting) is in `exc`'s cause chain."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, httpx.TransportError):
            return True
        seen = seen.__cause__
    return False


# -- load spreading ----------------------------------------------------------------------


class ServerPool:
    """Server URLs with their outstanding request counts; `acquire` picks the least
    loaded (ties go to the URL listed first). Thread-safe."""

    def __init__(self, urls: Sequence[str]) -> None:
        if not urls:
            raise ValueError("no SGLang server URLs")
        self.urls = [u.rstrip("/") for u in urls]
        self.outstanding = dict.fromkeys(self.urls, 0)
        self.sent = dict.fromkeys(self.urls, 0)
        self._lock = threading.Lock()

    def acquire(self) -> str:
        with self._lock:
            url = min(self.urls, key=lambda u: self.outstanding[u])
            self.outstanding[url] += 1
            self.sent[url] += 1
            return url

    def release(self, url: str) -> None:
        with self._lock:
            self.outstanding[url] -= 1


# -- the engine ----------------------------------------------------------------------------


class SGLangEngine:
    """Rollouts from SGLang servers over HTTP (implements `RolloutEngine`)."""

    def __init__(
        self,
        urls: Sequence[str],
        *,
        weight_sync: WeightSync | None = None,
        weight_version: int = 0,
        health_timeout_s: float = 300.0,
        retry_total_s: float = 600.0,
        request_timeout_s: float = 600.0,
        max_concurrency: int = 256,
        wait_for_health: bool = True,
    ) -> None:
        """`urls`: base URLs of SGLang servers, or of one router. `weight_sync` moves
        new weights onto them in `update_weights` (None: the engine cannot take new
        weights). `retry_total_s` bounds how long one request keeps retrying
        connection errors and 5xx answers; `max_concurrency` bounds the requests in
        flight at once (over all servers)."""
        if max_concurrency < 1:
            raise ValueError(f"max_concurrency must be >= 1, got {max_concurrency}")
        self.pool = ServerPool(urls)
        self.weight_sync = weight_sync
        self.weight_version = weight_version
        self.retry_total_s = retry_total_s
        self.request_timeout_s = request_timeout_s
        self.max_concurrency = max_concurrency
        self._in_flight: dict[str, str] = {}  # rid -> url
        self._lock = threading.Lock()
        self._busy = threading.Lock()
        self._closed = False
        if wait_for_health:
            for url in self.pool.urls:
                wait_healthy(url, health_timeout_s)

    @property
    def urls(self) -> list[str]:
        return self.pool.urls

    # -- RolloutEngine ---------------------------------------------------------------------

    def generate(
        self,
        prompts: Sequence[Sequence[int]],
        params: SamplingParams,
        on_group: GroupCallback | None = None,
    ) -> list[list[Completion]]:
        if self._closed:
            raise RuntimeError("SGLangEngine is closed")
        for i, prompt in enumerate(prompts):
            if len(prompt) == 0:
                raise ValueError(f"prompt {i} is empty; every prompt needs at least one token")
        if not self._busy.acquire(blocking=False):
            raise RuntimeError("SGLangEngine.generate is already running")
        try:
            return asyncio.run(self._generate(prompts, params, on_group))
        finally:
            self._busy.release()

    def update_weights(self, source: WeightSource, version: int | None = None) -> None:
        """Push new weights to every server through the configured `weight_sync`."""
        if self.weight_sync is None:
            raise RuntimeError("SGLangEngine has no weight_sync; pass one to take new weights")
        if not self._busy.acquire(blocking=False):
            raise RuntimeError("update_weights called while generate is running")
        try:
            version = self.weight_version + 1 if version is None else version
            self._sync_with_retry(source, version)
            self.weight_version = version
        finally:
            self._busy.release()

    def _sync_with_retry(self, source: WeightSource, version: int) -> None:
        """The whole sync again (pause -> update -> flush -> continue, each idempotent)
        while a server is unreachable, with backoff, for `retry_total_s`. A server that
        answers with a failure is not retried."""
        assert self.weight_sync is not None
        started, attempt = time.monotonic(), 0
        while True:
            try:
                self.weight_sync.sync(self.pool.urls, source, version)
                return
            except WeightSyncError as exc:
                if not _caused_by_transport(exc):
                    raise
                elapsed = time.monotonic() - started
                if elapsed >= self.retry_total_s:
                    raise SGLangUnavailableError(
                        f"weight sync to version {version} failed for {elapsed:.1f}s, past "
                        f"rollout.sglang.retry_total_s={self.retry_total_s:g} ({exc})"
                    ) from exc
            time.sleep(max(0.0, min(backoff_delay(attempt), self.retry_total_s - elapsed)))
            attempt += 1

    def close(self) -> None:
        """Abort this engine's in-flight requests on their servers (the running
        `generate` then returns them with finish_reason "abort"). Idempotent."""
        self._closed = True
        with self._lock:
            pending = list(self._in_flight.items())
        if not pending:
            return
        with httpx.Client(timeout=10.0) as client:
            for rid, url in pending:
                try:
                    client.post(url + ABORT_REQUEST, json={"rid": rid})
                except httpx.TransportError:
                    pass  # the server is gone: nothing left to abort there

    # -- generation --------------------------------------------------------------------------

    async def _generate(
        self,
        prompts: Sequence[Sequence[int]],
        params: SamplingParams,
        on_group: GroupCallback | None,
    ) -> list[list[Completion]]:
        if params.seed is not None:
            base_seed = params.seed
        else:  # follows torch.manual_seed, as the hf engine does
            base_seed = int(torch.randint(0, 2**62, (1,)).item())
        results: list[list[Completion | None]] = [[None] * params.n for _ in prompts]
        remaining = [params.n] * len(prompts)
        limit = asyncio.Semaphore(self.max_concurrency)
        timeout = httpx.Timeout(self.request_timeout_s, connect=10.0)
        limits = httpx.Limits(max_connections=self.max_concurrency)
        async with httpx.AsyncClient(timeout=timeout, limits=limits) as client:

            async def one(i: int, j: int) -> None:
                body = generate_body(
                    prompts[i], params, sample_seed(base_seed, i, j), uuid.uuid4().hex
                )
                async with limit:
                    if self._closed:  # closed before this sample was sent
                        response = aborted_response()
                    else:
                        response = await self._post_with_retry(client, body)
                results[i][j] = parse_completion(
                    response,
                    prompt_index=i,
                    sample_index=j,
                    prompt_ids=prompts[i],
                    default_version=self.weight_version,
                )
                remaining[i] -= 1
                if remaining[i] == 0 and on_group is not None:
                    on_group(i, list(results[i]))  # type: ignore[arg-type]

            tasks = [
                asyncio.create_task(one(i, j)) for i in range(len(prompts)) for j in range(params.n)
            ]
            try:
                await asyncio.gather(*tasks)
            finally:
                for task in tasks:
                    task.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
        return [list(group) for group in results]  # type: ignore[arg-type]

    async def _post_with_retry(self, client: httpx.AsyncClient, body: dict) -> dict:
        """POST /generate to the least loaded server; retry transport errors and 5xx
        with backoff (on whichever server is least loaded then) for `retry_total_s`."""
        rid = body["rid"]
        started, attempt = time.monotonic(), 0
        while True:
            url = self.pool.acquire()
            with self._lock:
                self._in_flight[rid] = url
            try:
                response = await client.post(url + GENERATE, json=body)
                if response.status_code < 500:
                    if response.status_code != 200:
                        raise SGLangRequestError(
                            f"{url}{GENERATE} answered HTTP {response.status_code}: "
                            f"{response.text[:500]}"
                        )
                    return response.json()
                problem = f"HTTP {response.status_code}: {response.text[:200]}"
            except httpx.TransportError as exc:
                problem = f"{type(exc).__name__}: {exc}"
            finally:
                self.pool.release(url)
                with self._lock:
                    self._in_flight.pop(rid, None)
            elapsed = time.monotonic() - started
            if self._closed:
                raise SGLangUnavailableError(f"engine closed while {url} was failing: {problem}")
            if elapsed >= self.retry_total_s:
                raise SGLangUnavailableError(
                    f"SGLang server {url} failed {GENERATE} for {elapsed:.1f}s, past "
                    f"rollout.sglang.retry_total_s={self.retry_total_s:g} (last: {problem}); "
                    "no partial batch was returned"
                )
            delay = min(backoff_delay(attempt), self.retry_total_s - elapsed)
            attempt += 1
            await asyncio.sleep(max(delay, 0.0))
