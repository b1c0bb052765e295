"""LLM-as-judge: the `judge` reward, scored by a model behind an OpenAI-compatible chat API.

`referee serve judge --endpoint URL --model NAME` serves it (a RewardService, the same
skeleton as every referee server); any endpoint that speaks ``/v1/chat/completions``
will do: vLLM, SGLang, `referee serve rollout`, a hosted API.

Modes (the `mode` param):

- ``pointwise``: the judge rates the completion against `rubric` on the integer scale
  `scale_min`..`scale_max`; value = (n - scale_min) / (scale_max - scale_min), in [0, 1];
  component ``verdict`` = n.
- ``pairwise``: completion against `sample.reference`, asked in both orders (completion
  as A, then as B) concurrently. Each order scores the completion 1 (better), 0.5 (tie)
  or 0 (worse); value = the mean of the two. Components ``completion_first``,
  ``completion_second`` and ``position_consistent`` (1 when both orders agree). When
  they disagree the judge followed the position, not the content (position bias): with
  ``on_inconsistent="tie"`` (the default) the mean stands, so a flip (A then A) is 0.5, a
  tie, and ``position_consistent`` = 0 tells it apart from a real tie; with
  ``on_inconsistent="error"`` the sample is ERROR (components still attached).
- ``reference_match``: is the completion's answer equivalent to `sample.reference`;
  value 1 or 0.

The verdict formats, and why only the reply's final line counts, are in `judge_parse`;
the prompt templates, their placeholders and the nonce fences around sample text, in
`judge_prompts`. A template may be overridden per request (the `template` param).

A failure is not a score: no verdict line, a verdict off the scale, a refusal (the
endpoint's `refusal` field or `content_filter` finish) are ERROR with the raw reply
(cut) in `reason`; a request over `timeout_s` is TIMEOUT; an endpoint that cannot be
reached or keeps answering 429/503 is UNAVAILABLE; other HTTP errors are ERROR. Replies
with a valid verdict are cached by (endpoint, model, prompt, sampling params).

Not defended: a judge model that obeys instructions injected into the completion and
writes the verdict line they ask for. The fence and the template make the boundary
clear to the judge; they cannot make it honest.
"""

from __future__ import annotations

import asyncio
import os
from dataclasses import dataclass
from typing import Any

from referee.rewardsvc.judge_client import (
    ChatEndpoint,
    JudgeCallError,
    JudgeMetrics,
    Reply,
    ReplyCache,
    reply_key,
)
from referee.rewardsvc.judge_parse import (
    VerdictError,
    parse_match,
    parse_pairwise,
    parse_pointwise,
    shown,
)
from referee.rewardsvc.judge_prompts import (
    MODES,
    check_template,
    default_template,
    prompt_text,
    render,
)
from referee.types import InvalidInput, InvalidParams, Result, Sample, Status
from referee.verifier import params_from_signature

DEFAULT_RUBRIC = (
    "Overall quality: is the response correct, complete and helpful for the task, "
    "and clearly written?"
)
INCONSISTENT = ("tie", "error")
ENV_ENDPOINT = "REFEREE_JUDGE_ENDPOINT"
ENV_MODEL = "REFEREE_JUDGE_MODEL"
DEFAULT_API_KEY_ENV = "REFEREE_JUDGE_API_KEY"


@dataclass(frozen=True)
class JudgeConfig:
    """Where the judge is and how to call it."""

    endpoint: str
    """Base URL of the OpenAI-compatible API (``http://host:port`` or ``.../v1``)."""

    model: str
    """The `model` field sent with every request."""

    api_key_env: str | None = DEFAULT_API_KEY_ENV
    """Environment variable holding the API key (sent as a bearer token); unset or empty
    variable: no key. A variable, not the key, so the key stays out of process lists."""

    max_concurrency: int = 16
    """Requests in flight to the endpoint at once (pairwise samples make two)."""

    timeout_s: float = 60.0
    """Limit on one request; past it the sample is TIMEOUT (not retried)."""

    retries: int = 3
    """Retries after a 429, a 5xx or a connection failure (so retries + 1 attempts)."""

    backoff_s: float = 0.5
    """First retry waits up to this long (full jitter), doubling per retry."""

    max_backoff_s: float = 8.0
    """Cap on one retry's wait, Retry-After included."""

    cache_size: int = 10_000
    """Judge replies kept in the LRU cache; 0 disables."""

    def __post_init__(self) -> None:
        if not self.endpoint.startswith(("http://", "https://")):
            raise ValueError(f"endpoint must be an http(s) URL, got {self.endpoint!r}")
        if not self.model:
            raise ValueError("model must name the judge model the endpoint serves")
        if self.max_concurrency < 1:
            raise ValueError(f"max_concurrency must be >= 1, got {self.max_concurrency}")
        if not 0 < self.timeout_s <= 600:
            raise ValueError(f"timeout_s must be in (0, 600], got {self.timeout_s}")
        if not 0 <= self.retries <= 10:
            raise ValueError(f"retries must be 0..10, got {self.retries}")
        if self.backoff_s < 0 or self.max_backoff_s < self.backoff_s:
            raise ValueError("backoff_s must be >= 0 and max_backoff_s >= backoff_s")
        if self.cache_size < 0:
            raise ValueError(f"cache_size must be >= 0, got {self.cache_size}")

    @property
    def sample_limit_s(self) -> float:
        """Per-sample limit for the service: every attempt timing out plus every wait."""
        return (self.retries + 1) * (self.timeout_s + self.max_backoff_s) + 10.0

    @classmethod
    def from_env(cls) -> JudgeConfig | None:
        """From $REFEREE_JUDGE_ENDPOINT and $REFEREE_JUDGE_MODEL (for `serve verifiers
        --load referee.rewardsvc.judge:judge_reward`); None when the endpoint is unset."""
        endpoint = os.environ.get(ENV_ENDPOINT, "").strip()
        if not endpoint:
            return None
        return cls(endpoint=endpoint, model=os.environ.get(ENV_MODEL, "").strip())


PARAM_DOCS = {
    "mode": "pointwise (rubric and scale), pairwise (completion vs reference, both orders) "
    "or reference_match (equivalent to the reference: 1/0)",
    "rubric": "pointwise: what the judge grades against",
    "scale_min": "pointwise: the worst verdict (maps to 0)",
    "scale_max": "pointwise: the best verdict (maps to 1)",
    "template": "replaces the mode's prompt template; must contain its placeholders "
    "(pointwise {{prompt}} {{completion}} {{rubric}} {{scale_min}} {{scale_max}}; pairwise "
    "{{prompt}} {{answer_a}} {{answer_b}}; reference_match {{prompt}} {{completion}} "
    "{{reference}}) and may use {{nonce}}",
    "on_inconsistent": "pairwise: when the two orders disagree, 'tie' (value = their mean, "
    "position_consistent = 0) or 'error'",
    "temperature": "judge sampling temperature",
    "max_tokens": "most tokens the judge may write",
    "seed": "sampling seed sent to the endpoint (null: none sent)",
}


class JudgeVerifier:
    """The `judge` reward. Unconfigured, it reads $REFEREE_JUDGE_ENDPOINT/_MODEL."""

    name = "judge"
    version = "1"
    kind = "judge"
    description = (
        "LLM-as-judge over an OpenAI-compatible chat endpoint: pointwise rubric scores "
        "normalised to [0,1], pairwise against the reference (both orders), or "
        "reference_match (1/0). Unparseable or refused verdicts are ERROR."
    )

    def __init__(self, config: JudgeConfig | None = None) -> None:
        self._config = config
        self.metrics = JudgeMetrics()
        self._endpoint: tuple[Any, ChatEndpoint] | None = None
        self._cache = ReplyCache(config.cache_size if config else 10_000)

    def configure(self, config: JudgeConfig) -> None:
        """Points this verifier at `config` (before it serves any request)."""
        self._config = config
        self._endpoint = None
        self._cache = ReplyCache(config.cache_size)

    def bind_metrics(self, metrics: JudgeMetrics) -> None:
        """Reports to `metrics` (a server's registry) from now on."""
        self.metrics = metrics
        self._endpoint = None

    @property
    def config(self) -> JudgeConfig | None:
        return self._config or JudgeConfig.from_env()

    @property
    def timeout_s(self) -> float | None:
        try:
            cfg = self.config
        except ValueError:  # a bad environment: verify() reports it per sample
            return None
        return cfg.sample_limit_s if cfg else None

    def check_params(self, params: dict[str, Any]) -> None:
        """Rejects well-typed but wrong params once per request (ValueError)."""
        mode = params.get("mode", "pointwise")
        if mode not in MODES:
            raise ValueError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
        lo, hi = params.get("scale_min", 1), params.get("scale_max", 10)
        if not lo < hi or hi - lo > 1000:
            raise ValueError(f"need scale_min < scale_max, at most 1000 apart; got {lo}..{hi}")
        if params.get("on_inconsistent", "tie") not in INCONSISTENT:
            raise ValueError(f"on_inconsistent must be 'tie' or 'error', got {params['on_inconsistent']!r}")
        if not 0 <= params.get("temperature", 0.0) <= 2:
            raise ValueError(f"temperature must be in [0, 2], got {params['temperature']}")
        if params.get("max_tokens", 1024) < 1:
            raise ValueError(f"max_tokens must be >= 1, got {params['max_tokens']}")
        if not params.get("rubric", DEFAULT_RUBRIC).strip():
            raise ValueError("rubric must not be empty")
        template = params.get("template")
        if template is not None:
            check_template(mode, template)

    async def verify(
        self,
        sample: Sample,
        *,
        mode: str = "pointwise",
        rubric: str = DEFAULT_RUBRIC,
        scale_min: int = 1,
        scale_max: int = 10,
        template: str | None = None,
        on_inconsistent: str = "tie",
        temperature: float = 0.0,
        max_tokens: int = 1024,
        seed: int | None = None,
    ) -> Result:
        params = {"mode": mode, "rubric": rubric, "scale_min": scale_min, "scale_max": scale_max,
                  "template": template, "on_inconsistent": on_inconsistent,
                  "temperature": temperature, "max_tokens": max_tokens}
        try:
            self.check_params(params)
        except ValueError as e:
            raise InvalidParams(str(e)) from None
        if sample.completion is None:
            raise InvalidInput("completion is missing")
        if mode != "pointwise" and not sample.reference:
            raise InvalidInput(f"mode {mode!r} needs sample.reference (it is empty)")
        endpoint = self._current_endpoint()
        if endpoint is None:
            return Result.unavailable(
                f"no judge endpoint configured: run `referee serve judge --endpoint URL --model "
                f"NAME`, or set {ENV_ENDPOINT} and {ENV_MODEL}"
            )
        text = template or default_template(mode)
        sampling: dict[str, Any] = {"temperature": temperature, "max_tokens": max_tokens}
        if seed is not None:
            sampling["seed"] = seed
        values = {"prompt": prompt_text(sample.prompt), "completion": sample.completion,
                  "reference": sample.reference}
        try:
            if mode == "pointwise":
                values |= {"rubric": rubric, "scale_min": str(scale_min), "scale_max": str(scale_max)}
                n = await self._ask(endpoint, render(text, values), sampling,
                                    lambda r: parse_pointwise(r, scale_min, scale_max))
                return Result.ok((n - scale_min) / (scale_max - scale_min),
                                 f"verdict {n} on {scale_min}..{scale_max}", {"verdict": float(n)})
            if mode == "reference_match":
                same = await self._ask(endpoint, render(text, values), sampling, parse_match)
                return Result.ok(float(same), "equivalent" if same else "not equivalent")
            return await self._pairwise(endpoint, text, values, sampling, on_inconsistent)
        except JudgeCallError as e:
            return Result(None, e.status, str(e))
        except VerdictError as e:
            return Result.error(str(e))

    params = params_from_signature(verify, PARAM_DOCS)

    async def _pairwise(
        self, endpoint: ChatEndpoint, template: str, values: dict[str, str],
        sampling: dict[str, Any], on_inconsistent: str,
    ) -> Result:
        base = {"prompt": values["prompt"]}
        first = render(template, base | {"answer_a": values["completion"], "answer_b": values["reference"]})
        second = render(template, base | {"answer_a": values["reference"], "answer_b": values["completion"]})
        outcomes = await asyncio.gather(
            self._ask(endpoint, first, sampling, parse_pairwise),
            self._ask(endpoint, second, sampling, parse_pairwise),
            return_exceptions=True,
        )
        for label, got in zip(("completion as A", "completion as B"), outcomes, strict=True):
            if isinstance(got, JudgeCallError):
                raise JudgeCallError(got.status, f"{label}: {got}")
            if isinstance(got, VerdictError):
                raise VerdictError(f"{label}: {got}")
            if isinstance(got, BaseException):
                raise got
        v1, v2 = outcomes
        s1 = {"A": 1.0, "B": 0.0, "TIE": 0.5}[v1]  # type: ignore[index]
        s2 = {"A": 0.0, "B": 1.0, "TIE": 0.5}[v2]  # type: ignore[index]
        consistent = s1 == s2
        comps = {"completion_first": s1, "completion_second": s2,
                 "position_consistent": float(consistent)}
        reason = f"completion as A: [[{v1}]]; completion as B: [[{v2}]]"
        if consistent:
            return Result.ok(s1, reason, comps)
        reason += "; position-inconsistent: the verdict changed with the order"
        if on_inconsistent == "error":
            return Result(None, Status.ERROR, reason, comps)
        return Result.ok((s1 + s2) / 2, reason + ", scored as the mean of the two", comps)

    async def _ask(self, endpoint: ChatEndpoint, text: str, sampling: dict[str, Any], parse: Any) -> Any:
        """One judge call (or a cached reply) and its verdict; raises JudgeCallError or
        VerdictError."""
        messages = [{"role": "user", "content": text}]
        key = reply_key(endpoint.url, endpoint.model, messages, sampling)
        reply = self._cache.get(key)
        if reply is None:
            self.metrics.cache_misses.inc()
            reply = await endpoint.chat(messages, sampling)
        else:
            self.metrics.cache_hits.inc()
        verdict = _read(reply, parse)
        self._cache.put(key, reply)
        return verdict

    def _current_endpoint(self) -> ChatEndpoint | None:
        """The endpoint client for the running event loop (made on first use)."""
        cfg = self.config
        if cfg is None:
            return None
        key = (cfg, asyncio.get_running_loop())
        if self._endpoint is None or self._endpoint[0] != key:
            api_key = os.environ.get(cfg.api_key_env, "") if cfg.api_key_env else ""
            self._endpoint = (key, ChatEndpoint(
                cfg.endpoint, cfg.model, api_key=api_key or None,
                max_concurrency=cfg.max_concurrency, timeout_s=cfg.timeout_s,
                retries=cfg.retries, backoff_s=cfg.backoff_s,
                max_backoff_s=cfg.max_backoff_s, metrics=self.metrics,
            ))
        return self._endpoint[1]

    async def aclose(self) -> None:
        """Closes the HTTP client (from the loop that made it)."""
        if self._endpoint is not None and self._endpoint[0][1] is asyncio.get_running_loop():
            await self._endpoint[1].aclose()
        self._endpoint = None


def _read(reply: Reply, parse: Any) -> Any:
    if reply.refusal:
        raise VerdictError(f"the judge refused: {shown(reply.refusal)!r}")
    if reply.finish_reason == "content_filter":
        raise VerdictError(f"the judge's reply was stopped by a content filter; raw reply: "
                           f"{shown(reply.content)!r}")
    try:
        return parse(reply.content)
    except VerdictError as e:
        if reply.finish_reason == "length":
            raise VerdictError(f"{e} (the reply was cut off at max_tokens)") from None
        raise


judge_reward = JudgeVerifier()
"""An instance configured from the environment, for `serve verifiers --load`."""
