"""The judge's side of HTTP: one OpenAI-compatible chat endpoint, called with care.

`ChatEndpoint.chat` sends one ``POST {base}/chat/completions`` and returns the reply's
text, finish reason, refusal and token usage. Around that call:

- a semaphore bounds the requests in flight to the endpoint (waiting for it does not
  count against the request's timeout);
- a per-request timeout (the whole request, not only each socket read) is a `TIMEOUT`,
  not retried: a judge that is too slow now will likely be too slow again;
- 429, 5xx and connection failures are retried, a bounded number of times, after a
  full-jitter exponential backoff (a `Retry-After` header, capped, is honoured); when
  the retries run out the call fails `UNAVAILABLE` (429, 503, unreachable) or `ERROR`
  (other 5xx). Other 4xx answers are `ERROR` at once, with the endpoint's message;
- token usage (the response's `usage`), request outcomes and latency go to Prometheus.

Failures are `JudgeCallError(status, message)`; the judge turns them into non-OK
results. `ReplyCache` keeps judge replies by (endpoint, model, messages, sampling).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import random
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import httpx
from prometheus_client import CollectorRegistry, Counter, Histogram

from referee.types import Status

_LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
ERROR_BODY_SHOWN = 300


class JudgeCallError(Exception):
    """A judge request that produced no reply; `status` is the per-sample status to report."""

    def __init__(self, status: Status, message: str) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class Reply:
    """What the judge answered (the first choice)."""

    content: str
    finish_reason: str = "stop"
    refusal: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0


class JudgeMetrics:
    """The judge's Prometheus series, on a server's registry (or a private one)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = r = registry or CollectorRegistry()
        self.tokens = Counter(
            "referee_judge_tokens", "tokens reported in the judge endpoint's usage",
            ["kind"], registry=r,
        )
        self.requests = Counter(
            "referee_judge_requests", "HTTP requests to the judge endpoint by outcome "
            "(ok, http_<code>, timeout, connection_error)", ["outcome"], registry=r,
        )
        self.retries = Counter("referee_judge_retries", "judge requests retried", registry=r)
        self.latency = Histogram(
            "referee_judge_request_seconds", "judge endpoint request latency",
            buckets=_LATENCY_BUCKETS, registry=r,
        )
        self.cache_hits = Counter(
            "referee_judge_reply_cache_hits", "judge replies served from the cache", registry=r
        )
        self.cache_misses = Counter(
            "referee_judge_reply_cache_misses", "judge replies requested", registry=r
        )


def chat_url(endpoint: str) -> str:
    """The chat completions URL for a base URL (``http://h:p``, ``http://h:p/v1``, or
    the full ``.../chat/completions``)."""
    base = endpoint.rstrip("/")
    if base.endswith("/chat/completions"):
        return base
    if base.endswith("/v1"):
        return base + "/chat/completions"
    return base + "/v1/chat/completions"


class ChatEndpoint:
    """One chat endpoint as seen from one event loop (its client and semaphore are bound
    to the loop that first uses them)."""

    def __init__(
        self,
        endpoint: str,
        model: str,
        *,
        api_key: str | None,
        max_concurrency: int,
        timeout_s: float,
        retries: int,
        backoff_s: float,
        max_backoff_s: float,
        metrics: JudgeMetrics,
    ) -> None:
        self.url = chat_url(endpoint)
        self.model = model
        self._timeout = timeout_s
        self._retries = retries
        self._backoff = backoff_s
        self._max_backoff = max_backoff_s
        self._metrics = metrics
        self._sem = asyncio.Semaphore(max_concurrency)
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._client = httpx.AsyncClient(
            headers=headers,
            timeout=httpx.Timeout(timeout_s),
            limits=httpx.Limits(max_connections=max_concurrency),
            trust_env=False,  # a judge on loopback must not go through a proxy
        )

    async def aclose(self) -> None:
        await self._client.aclose()

    async def chat(self, messages: list[dict[str, str]], sampling: dict[str, Any]) -> Reply:
        body = {"model": self.model, "messages": messages, **sampling}
        last: JudgeCallError | None = None
        retry_after: float | None = None
        for attempt in range(self._retries + 1):
            if attempt:
                self._metrics.retries.inc()
                await asyncio.sleep(self._delay(attempt, retry_after))
            async with self._sem:
                resp = await self._post(body)
            if isinstance(resp, JudgeCallError):
                last, retry_after = resp, None
                continue
            if resp.status_code == 429 or resp.status_code >= 500:
                status = Status.UNAVAILABLE if resp.status_code in (429, 503) else Status.ERROR
                last = JudgeCallError(
                    status, f"judge endpoint answered HTTP {resp.status_code}: {_body(resp)}"
                )
                retry_after = _retry_after(resp)
                continue
            if resp.status_code != 200:
                raise JudgeCallError(
                    Status.ERROR, f"judge endpoint refused the request, HTTP "
                    f"{resp.status_code}: {_body(resp)}"
                )
            return self._reply(resp)
        assert last is not None
        raise JudgeCallError(last.status, f"{last} (after {self._retries + 1} attempts)")

    async def _post(self, body: dict[str, Any]) -> httpx.Response | JudgeCallError:
        """One request; a connection failure comes back as a value (to be retried), a
        timeout is raised (not retried)."""
        started = time.perf_counter()
        try:
            resp = await asyncio.wait_for(self._client.post(self.url, json=body), self._timeout)
        except (asyncio.TimeoutError, httpx.TimeoutException):
            self._metrics.requests.labels("timeout").inc()
            raise JudgeCallError(
                Status.TIMEOUT, f"judge endpoint gave no reply within {self._timeout:g}s"
            ) from None
        except httpx.TransportError as e:  # refused, reset, protocol error
            self._metrics.requests.labels("connection_error").inc()
            return JudgeCallError(
                Status.UNAVAILABLE, f"cannot reach the judge at {self.url}: {type(e).__name__}: {e}"
            )
        self._metrics.latency.observe(time.perf_counter() - started)
        self._metrics.requests.labels("ok" if resp.status_code == 200 else f"http_{resp.status_code}").inc()
        return resp

    def _delay(self, attempt: int, retry_after: float | None) -> float:
        """Full jitter: uniform in [0, backoff * 2^(attempt-1)], capped; at least the
        server's Retry-After (capped too)."""
        cap = min(self._max_backoff, self._backoff * 2 ** (attempt - 1))
        delay = random.uniform(0, cap)
        if retry_after is not None:
            delay = max(delay, min(retry_after, self._max_backoff))
        return delay

    def _reply(self, resp: httpx.Response) -> Reply:
        try:
            data = resp.json()
            choice = data["choices"][0]
            message = choice.get("message") or {}
            content = message.get("content")
            usage = data.get("usage") or {}
            prompt_tokens = int(usage.get("prompt_tokens") or 0)
            completion_tokens = int(usage.get("completion_tokens") or 0)
        except (ValueError, KeyError, IndexError, TypeError, AttributeError) as e:
            raise JudgeCallError(
                Status.ERROR, f"judge endpoint sent a malformed chat completion ({e!r}): {_body(resp)}"
            ) from None
        self._metrics.tokens.labels("prompt").inc(prompt_tokens)
        self._metrics.tokens.labels("completion").inc(completion_tokens)
        refusal = message.get("refusal")
        return Reply(
            content=content if isinstance(content, str) else "",
            finish_reason=str(choice.get("finish_reason") or ""),
            refusal=refusal if isinstance(refusal, str) and refusal else None,
            prompt_tokens=prompt_tokens,
            completion_tokens=completion_tokens,
        )


def _body(resp: httpx.Response) -> str:
    text = resp.text.strip().replace("\n", " ")
    return text if len(text) <= ERROR_BODY_SHOWN else text[:ERROR_BODY_SHOWN] + "..."


def _retry_after(resp: httpx.Response) -> float | None:
    try:
        value = float(resp.headers.get("retry-after", ""))
    except ValueError:
        return None
    return value if value >= 0 else None


def reply_key(endpoint: str, model: str, messages: list[dict[str, str]], sampling: dict[str, Any]) -> bytes:
    """The cache key of one judge request."""
    canon = json.dumps([endpoint, model, messages, sampling], sort_keys=True, separators=(",", ":"))
    return hashlib.blake2b(canon.encode("utf-8", "surrogatepass"), digest_size=16).digest()


class ReplyCache:
    """A bounded LRU map from `reply_key` to the judge's reply. Only replies that held
    a valid verdict go in: a malformed one may come out differently next time."""

    def __init__(self, max_entries: int) -> None:
        self._max = max_entries
        self._data: OrderedDict[bytes, Reply] = OrderedDict()

    def __len__(self) -> int:
        return len(self._data)

    def get(self, key: bytes) -> Reply | None:
        hit = self._data.get(key)
        if hit is not None:
            self._data.move_to_end(key)
        return hit

    def put(self, key: bytes, reply: Reply) -> None:
        if self._max <= 0:
            return
        self._data[key] = reply
        self._data.move_to_end(key)
        while len(self._data) > self._max:
            self._data.popitem(last=False)
