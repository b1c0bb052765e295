"""`referee serve rollout`: a CPU stand-in for an SGLang server, for development and CI.

Request/response fields as in SGLang v0.5.3rc2 io_struct.py GenerateReqInput /
http_server.py (the version named by `python/sglang/version.py`; the subset used here
has kept its names across the 0.4-0.5 releases).

It speaks the part of SGLang's native HTTP API that referee's `sglang` rollout engine
and weight sync use, so that whole path runs on a machine without a GPU: `/generate`
(text or input_ids, single or batch, `sampling_params` with n, temperature, top_p,
top_k, max_new_tokens, stop, stop_token_ids, sampling_seed; `return_logprob`; `rid`),
`/health`, `/health_generate`, `/get_model_info`, `/get_weight_version`,
`/flush_cache`, `/update_weights_from_disk`, `/pause_generation`,
`/continue_generation` and `/abort_request`; the OpenAI-compatible routes live in
`serve_openai.py`. Generation is `HFEngine`, so logprobs follow the trainer's
convention (`base.py`: log_softmax(logits / T), fp32, full vocabulary).

It is not a serving engine, but it batches: requests queued at the same time whose
sampling params match (all but the seed) run as one batch on one worker thread, up to
`max_batch_size` rows (`serve_backend.py` has the rule), so the trainer's one request
per (prompt, sample) does not generate one row at a time. A request's tokens and
logprobs do not depend on what it was batched with. A batch runs to the end of its
longest row before the next starts (no continuous batching); there is no prefix cache
(`/flush_cache` only reports whether a generation is running, as SGLang's refuses to
flush then), no streaming, no authentication and no limit on concurrent connections.
`/get_server_info` reports the batching counters. Aborting one rid of a batch request
ends the whole request (its rows come back with finish_reason abort), and no other
request. Bind it to loopback.
"""

from __future__ import annotations

import asyncio
import socket
import time
import uuid
from pathlib import Path
from typing import Any, Literal

import torch
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response

from .. import tiny
from .base import Completion, SamplingParams
from .hf import HFEngine
from .serve_backend import (
    DEFAULT_WEIGHT_VERSION,
    Call,
    Generated,
    RequestError,
    RolloutBackend,
    Strict,
)

HEALTH_CHECK_TIMEOUT_S = 20.0


class SamplingParamsIn(Strict):
    """The part of SGLang's `sampling_params` this server honours."""

    max_new_tokens: int = 128
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = -1
    n: int = 1
    stop: str | list[str] | None = None
    stop_token_ids: list[int] | None = None
    sampling_seed: int | None = None


class GenerateReqIn(Strict):
    """SGLang's `GenerateReqInput`, restricted to what a text-only rollout needs."""

    text: str | list[str] | None = None
    input_ids: list[int] | list[list[int]] | None = None
    sampling_params: SamplingParamsIn | list[SamplingParamsIn] | None = None
    return_logprob: bool | None = None
    return_text_in_logprobs: bool = False
    logprob_start_len: int | None = None
    top_logprobs_num: int | None = None
    rid: str | list[str] | None = None
    stream: bool = False


class UpdateWeightsFromDiskIn(Strict):
    model_path: str
    load_format: str | None = None
    abort_all_requests: bool = False
    weight_version: str | None = None
    flush_cache: bool = True


class AbortReqIn(Strict):
    rid: str = ""
    abort_all: bool = False


class PauseGenerationIn(Strict):
    mode: Literal["abort", "retract", "in_place"] = "abort"


# -- /generate: request normalisation and response shape --------------------------------


def to_sampling_params(sp: SamplingParamsIn, backend: RolloutBackend) -> SamplingParams:
    stop = [sp.stop] if isinstance(sp.stop, str) else list(sp.stop or [])
    stop_ids = list(sp.stop_token_ids or [])
    if stop_ids:
        backend.check_prompt(stop_ids, "sampling_params.stop_token_ids")
    try:
        return SamplingParams(
            n=sp.n,
            temperature=sp.temperature,
            top_p=sp.top_p,
            top_k=sp.top_k,
            max_new_tokens=sp.max_new_tokens,
            stop=tuple(stop),
            stop_token_ids=tuple(stop_ids),
            seed=sp.sampling_seed,
        )
    except ValueError as e:
        raise RequestError(f"sampling_params: {e}") from None


def plan_generate(
    req: GenerateReqIn, backend: RolloutBackend
) -> tuple[list[Call], list[str], bool]:
    """The calls a /generate request makes, the rid of each prompt, and whether it is
    a batch; raises RequestError on a client mistake."""
    if req.stream:
        raise RequestError("stream=true is not supported by this CPU stand-in server")
    if req.logprob_start_len not in (None, -1) or req.top_logprobs_num not in (None, 0):
        raise RequestError("only output-token logprobs are supported (no prompt or top logprobs)")
    if (req.text is None) == (req.input_ids is None):
        raise RequestError("Either text or input_ids should be provided (exactly one of them).")
    if req.text is not None:
        batch = isinstance(req.text, list)
        texts = req.text if batch else [req.text]
        prompts = [backend.tokenizer(t).input_ids for t in texts]
        what = "text (tokenized)"
    else:
        batch = bool(req.input_ids) and isinstance(req.input_ids[0], list)
        prompts = list(req.input_ids) if batch else [req.input_ids]
        what = "input_ids"
    if not prompts:
        raise RequestError("the batch is empty")
    prompts = [backend.check_prompt(p, what) for p in prompts]
    sps = req.sampling_params if req.sampling_params is not None else SamplingParamsIn()
    if isinstance(sps, list):
        if len(sps) != len(prompts):
            raise RequestError(f"sampling_params has {len(sps)} entries for {len(prompts)} prompts")
        calls = [
            Call([i], [p], to_sampling_params(sp, backend))
            for i, (p, sp) in enumerate(zip(prompts, sps, strict=True))
        ]
    else:
        calls = [Call(list(range(len(prompts))), prompts, to_sampling_params(sps, backend))]
    backend.check_budget(calls)
    if req.rid is None:
        rids = [uuid.uuid4().hex for _ in prompts]
    elif isinstance(req.rid, str):  # a batch's items get it as a prefix
        rids = [f"{req.rid}_{i}" for i in range(len(prompts))] if batch else [req.rid]
    else:
        if len(req.rid) != len(prompts):
            raise RequestError(f"rid has {len(req.rid)} entries for {len(prompts)} prompts")
        rids = list(req.rid)
    if len(set(rids)) != len(rids):
        raise RequestError("rid values must be unique")
    return calls, rids, batch


def finish_reason(c: Completion, abort_message: str) -> dict[str, Any]:
    """SGLang's `finish_reason` object (`schedule_batch.FINISH_*.to_json()`)."""
    if c.finish_reason == "stop":
        return {"type": "stop", "matched": c.matched_stop}
    if c.finish_reason == "length":
        return {"type": "length", "length": len(c.token_ids)}
    return {"type": "abort", "message": abort_message}


def generate_item(
    c: Completion,
    rid: str,
    weight_version: str,
    out: Generated,
    req: GenerateReqIn,
    backend: RolloutBackend,
) -> dict[str, Any]:
    """One element of SGLang's /generate response: text, output_ids, meta_info."""
    meta: dict[str, Any] = {
        "id": rid,
        "finish_reason": finish_reason(c, out.abort_message),
        "prompt_tokens": len(c.prompt_ids),
        "completion_tokens": len(c.token_ids),
        "cached_tokens": 0,
        "weight_version": weight_version,
    }
    if req.return_logprob:
        decode = backend.tokenizer.decode
        meta["output_token_logprobs"] = [
            [lp, t, decode([t]) if req.return_text_in_logprobs else None]
            for lp, t in zip(c.logprobs, c.token_ids, strict=True)
        ]
    return {"text": c.text, "output_ids": c.token_ids, "meta_info": meta}


# -- the app ----------------------------------------------------------------------------


def error_body(message: str, code: int = 400) -> dict[str, Any]:
    """SGLang's `ErrorResponse` (what its validation-error handler returns)."""
    return {
        "object": "error",
        "message": message,
        "type": "Bad Request",
        "param": None,
        "code": code,
    }


def describe_validation(exc: RequestValidationError) -> str:
    parts = []
    for err in exc.errors():
        if err.get("type") == "json_invalid":
            detail = (err.get("ctx") or {}).get("error", "")
            parts.append(f"the body is not valid JSON ({detail or err.get('msg')})")
            continue
        loc = ".".join(str(p) for p in err.get("loc", ()) if p != "body")
        parts.append(f"{loc or 'body'}: {err.get('msg', 'invalid')}")
    return "; ".join(parts) or "invalid request"


def create_app(backend: RolloutBackend) -> FastAPI:
    """The FastAPI app: SGLang's native routes plus the OpenAI-compatible ones."""
    from .serve_openai import add_openai_routes

    app = FastAPI(title="referee rollout (CPU stand-in for SGLang)")
    app.state.backend = backend

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        return JSONResponse(error_body(describe_validation(exc)), status_code=400)

    @app.exception_handler(RequestError)
    async def _bad_request(request: Request, exc: RequestError) -> JSONResponse:
        if request.url.path.startswith("/v1/"):
            return JSONResponse(error_body(str(exc)), status_code=400)
        return JSONResponse({"error": {"message": str(exc)}}, status_code=400)

    @app.get("/health")
    async def health() -> Response:
        return Response(status_code=200)

    @app.get("/health_generate")
    async def health_generate() -> Response:
        params = SamplingParams(temperature=0.0, max_new_tokens=1)
        call = Call([0], [[0]], params)
        try:
            await asyncio.wait_for(
                backend.generate([call], 1, [f"HEALTH_CHECK_{time.time()}"]),
                HEALTH_CHECK_TIMEOUT_S,
            )
        except asyncio.TimeoutError:
            return Response(status_code=503)
        return Response(status_code=200)

    @app.get("/get_model_info")
    async def get_model_info() -> dict[str, Any]:
        return {
            "model_path": backend.model_path,
            "tokenizer_path": backend.tokenizer_path,
            "is_generation": True,
            "preferred_sampling_params": None,
            "weight_version": backend.weight_version,
        }

    @app.get("/get_server_info")
    async def get_server_info() -> dict[str, Any]:
        """A few of SGLang's fields; the batching counters under `internal_states`."""
        return {
            "model_path": backend.model_path,
            "context_length": backend.context_len,
            "max_total_tokens": backend.max_total_tokens,
            "weight_version": backend.weight_version,
            "internal_states": [backend.server_info()],
        }

    @app.get("/get_weight_version")
    async def get_weight_version() -> dict[str, Any]:
        return {"weight_version": backend.weight_version}

    @app.api_route("/generate", methods=["POST", "PUT"])
    async def generate(req: GenerateReqIn) -> Any:
        calls, rids, batch = plan_generate(req, backend)
        out = await backend.generate(calls, len(rids), rids)
        items = [
            generate_item(c, rid if len(group) == 1 else f"{rid}_{j}", version, out, req, backend)
            for rid, group, version in zip(rids, out.groups, out.weight_versions, strict=True)
            for j, c in enumerate(group)
        ]
        return items if batch or len(items) > 1 else items[0]

    @app.api_route("/flush_cache", methods=["GET", "POST"])
    async def flush_cache() -> Response:
        if backend.busy():
            return Response("Cache not flushed: a request is running.\n", status_code=400)
        return Response("Cache flushed.\n", status_code=200)

    @app.post("/update_weights_from_disk")
    async def update_weights_from_disk(req: UpdateWeightsFromDiskIn) -> JSONResponse:
        ok, message = await asyncio.to_thread(
            backend.reload,
            req.model_path,
            load_format=req.load_format,
            weight_version=req.weight_version,
            abort_all_requests=req.abort_all_requests,
        )
        body = {"success": ok, "message": message, "num_paused_requests": 0}
        return JSONResponse(body, status_code=200 if ok else 400)

    @app.post("/pause_generation")
    async def pause_generation(req: PauseGenerationIn | None = None) -> dict[str, str]:
        backend.pause((req or PauseGenerationIn()).mode)
        return {"message": "Generation paused successfully.", "status": "ok"}

    @app.post("/continue_generation")
    async def continue_generation() -> dict[str, str]:
        backend.resume()
        return {"message": "Generation continued successfully.", "status": "ok"}

    @app.post("/abort_request")
    async def abort_request(req: AbortReqIn) -> Response:
        if not req.abort_all and not req.rid:
            raise RequestError("give rid, or abort_all=true")
        backend.abort(req.rid, abort_all=req.abort_all, reason="Abort by abort_request")
        return Response(status_code=200)

    add_openai_routes(app, backend)
    return app


# -- loading and serving ----------------------------------------------------------------


def load_backend(
    model: str,
    *,
    dtype: str = "fp32",
    max_total_tokens: int | None = None,
    weight_version: str = DEFAULT_WEIGHT_VERSION,
    max_batch_size: int = 64,
    batch_wait_ms: float = 2.0,
) -> RolloutBackend:
    """A backend for `model`: a Hugging Face directory, or `tiny:tiny` / `tiny:small`
    (built from `referee.trainer.tiny` with its fixed seed, so a test can rebuild the
    very same weights in process). `max_batch_size` rows (prompts times n) at most run
    as one batch; `batch_wait_ms` is how long a request may wait for others to join."""
    torch_dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[dtype]
    if model.startswith("tiny:"):
        preset = model.split(":", 1)[1]
        if preset not in tiny.PRESETS:
            raise ValueError(f"unknown preset {model!r}; choose tiny:tiny or tiny:small")
        tokenizer = tiny.build_tokenizer()
        net = tiny.build_model(preset, tokenizer=tokenizer).to(torch_dtype)  # type: ignore[arg-type]
    else:
        path = Path(model)
        if not path.is_dir():
            raise ValueError(
                f"--model {model}: not a directory (give a Hugging Face model "
                "directory, or tiny:tiny / tiny:small)"
            )
        if (path / "tokenizer.json").exists():
            tokenizer = tiny.load_tokenizer(path)
        else:
            from transformers import AutoTokenizer

            tokenizer = AutoTokenizer.from_pretrained(path)
        net = tiny.load_model(path, dtype=torch_dtype)
    net.eval()
    engine = HFEngine(net, tokenizer, micro_batch_prompts=max_batch_size)  # one forward per batch
    return RolloutBackend(
        engine,
        model,
        max_total_tokens=max_total_tokens,
        weight_version=weight_version,
        max_batch_size=max_batch_size,
        batch_wait_ms=batch_wait_ms,
    )


def serve(backend: RolloutBackend, host: str, port: int, log_level: str = "warning") -> None:
    """Serve until SIGTERM/SIGINT; prints `referee rollout listening on http://HOST:PORT`
    once it accepts connections (port 0 picks a free port)."""
    import uvicorn

    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    config = uvicorn.Config(
        create_app(backend), log_level=log_level.lower(), timeout_graceful_shutdown=5
    )
    server = uvicorn.Server(config)
    shown = f"[{host}]" if ":" in host else host

    async def main() -> None:
        task = asyncio.create_task(server.serve(sockets=[sock]))
        while not server.started and not task.done():
            await asyncio.sleep(0.02)
        if server.started:
            print(
                f"referee rollout listening on http://{shown}:{sock.getsockname()[1]}", flush=True
            )
        await task

    try:
        asyncio.run(main())
    finally:
        backend.close()
        sock.close()
