"""OpenAI-compatible routes of `referee serve rollout`: chat and text completions, models.

Request/response fields as in SGLang v0.5.3rc2 io_struct.py GenerateReqInput /
http_server.py, whose `/v1/chat/completions`, `/v1/completions` and `/v1/models` follow
OpenAI's API. What the judge service needs, and no more: no streaming, no tools, no
top logprobs (the chosen token's logprob only), text message content only. The chat
prompt is the tokenizer's own chat template with the generation prompt added.
"""

from __future__ import annotations

import time
import uuid
from typing import Any, Literal

from fastapi import FastAPI

from .base import Completion, SamplingParams
from .serve_backend import Call, RequestError, RolloutBackend, Strict


class ChatMessage(Strict):
    role: Literal["system", "user", "assistant", "tool", "developer"]
    content: str
    name: str | None = None


class _Sampling(Strict):
    """Fields both OpenAI routes share. Neutral defaults of fields this server does
    not implement (penalties, streaming) are accepted; other values are refused."""

    model: str | None = None
    n: int = 1
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = -1  # an SGLang/vLLM extension
    stop: str | list[str] | None = None
    seed: int | None = None
    stream: bool = False
    frequency_penalty: float = 0.0
    presence_penalty: float = 0.0
    user: str | None = None


class ChatCompletionIn(_Sampling):
    messages: list[ChatMessage]
    max_tokens: int | None = None
    max_completion_tokens: int | None = None
    logprobs: bool = False
    top_logprobs: int | None = None


class CompletionIn(_Sampling):
    prompt: str | list[str] | list[int] | list[list[int]]
    max_tokens: int = 16  # OpenAI's default for completions
    logprobs: int | None = None
    echo: bool = False


def _check_unsupported(req: _Sampling) -> None:
    if req.stream:
        raise RequestError("stream=true is not supported by this CPU stand-in server")
    if req.frequency_penalty or req.presence_penalty:
        raise RequestError("frequency_penalty and presence_penalty are not supported (use 0)")


def _params(req: _Sampling, max_tokens: int) -> SamplingParams:
    stop = [req.stop] if isinstance(req.stop, str) else list(req.stop or [])
    try:
        return SamplingParams(
            n=req.n,
            temperature=req.temperature,
            top_p=req.top_p,
            top_k=req.top_k,
            max_new_tokens=max_tokens,
            stop=tuple(stop),
            seed=req.seed,
        )
    except ValueError as e:
        raise RequestError(str(e)) from None


def _usage(groups: list[list[Completion]]) -> dict[str, int]:
    prompt = sum(len(g[0].prompt_ids) for g in groups if g)
    completion = sum(len(c.token_ids) for g in groups for c in g)
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }


def _finish(c: Completion) -> str:
    return c.finish_reason  # "stop" | "length" | "abort", as SGLang reports them


async def _run(backend: RolloutBackend, prompts: list[list[int]], params: SamplingParams):
    call = Call(list(range(len(prompts))), prompts, params)
    backend.check_budget([call])
    rid = uuid.uuid4().hex
    return await backend.generate([call], len(prompts), [f"{rid}_{i}" for i in range(len(prompts))])


def add_openai_routes(app: FastAPI, backend: RolloutBackend) -> None:
    """`/v1/chat/completions`, `/v1/completions` and `/v1/models` on `app`."""
    model_name = str(backend.model_path)
    created = int(time.time())
    tokenizer = backend.tokenizer

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        card = {
            "id": model_name,
            "object": "model",
            "created": created,
            "owned_by": "referee",
            "root": model_name,
            "max_model_len": backend.context_len,
        }
        return {"object": "list", "data": [card]}

    @app.post("/v1/chat/completions")
    async def chat_completions(req: ChatCompletionIn) -> dict[str, Any]:
        _check_unsupported(req)
        if req.top_logprobs:
            raise RequestError(
                "top_logprobs > 0 is not supported; only the chosen tokens' logprobs"
            )
        if not req.messages:
            raise RequestError("messages is empty")
        if not getattr(tokenizer, "chat_template", None):
            raise RequestError("this model's tokenizer has no chat template; use /v1/completions")
        text = tokenizer.apply_chat_template(
            [m.model_dump(exclude_none=True) for m in req.messages],
            tokenize=False,
            add_generation_prompt=True,
        )
        prompt = backend.check_prompt(
            tokenizer(text, add_special_tokens=False).input_ids, "messages"
        )
        max_tokens = req.max_completion_tokens or req.max_tokens
        if max_tokens is None:  # SGLang: what is left of the context
            max_tokens = max(backend.context_len - len(prompt), 1)
        out = await _run(backend, [prompt], _params(req, max_tokens))
        choices = []
        for c in out.groups[0]:
            logprobs = None
            if req.logprobs:
                logprobs = {
                    "content": [
                        {
                            "token": tokenizer.decode([t]),
                            "logprob": lp,
                            "bytes": list(tokenizer.decode([t]).encode()),
                            "top_logprobs": [],
                        }
                        for t, lp in zip(c.token_ids, c.logprobs, strict=True)
                    ]
                }
            choices.append(
                {
                    "index": c.sample_index,
                    "message": {"role": "assistant", "content": c.text},
                    "logprobs": logprobs,
                    "finish_reason": _finish(c),
                    "matched_stop": c.matched_stop,
                }
            )
        return {
            "id": f"chatcmpl-{uuid.uuid4().hex}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": req.model or model_name,
            "choices": choices,
            "usage": _usage(out.groups),
            "weight_version": out.weight_version,
        }

    @app.post("/v1/completions")
    async def completions(req: CompletionIn) -> dict[str, Any]:
        _check_unsupported(req)
        if req.echo:
            raise RequestError("echo=true is not supported")
        if req.logprobs not in (None, 0):
            raise RequestError("logprobs > 0 (top logprobs) is not supported; use logprobs=0")
        p = req.prompt
        if isinstance(p, str):
            raw = [tokenizer(p).input_ids]
        elif p and isinstance(p[0], str):
            raw = [tokenizer(t).input_ids for t in p]
        elif p and isinstance(p[0], list):
            raw = list(p)
        else:
            raw = [p]
        prompts = [backend.check_prompt(ids, "prompt") for ids in raw]
        out = await _run(backend, prompts, _params(req, req.max_tokens))
        choices = []
        for group in out.groups:
            for c in group:
                logprobs = None
                if req.logprobs is not None:
                    tokens = [tokenizer.decode([t]) for t in c.token_ids]
                    offsets, at = [], 0
                    for tok in tokens:
                        offsets.append(at)
                        at += len(tok)
                    logprobs = {
                        "tokens": tokens,
                        "token_logprobs": list(c.logprobs),
                        "top_logprobs": None,
                        "text_offset": offsets,
                    }
                choices.append(
                    {
                        "index": len(choices),
                        "text": c.text,
                        "logprobs": logprobs,
                        "finish_reason": _finish(c),
                        "matched_stop": c.matched_stop,
                    }
                )
        return {
            "id": f"cmpl-{uuid.uuid4().hex}",
            "object": "text_completion",
            "created": int(time.time()),
            "model": req.model or model_name,
            "choices": choices,
            "usage": _usage(out.groups),
            "weight_version": out.weight_version,
        }
