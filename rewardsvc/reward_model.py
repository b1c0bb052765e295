"""The RewardService of `referee serve reward-model --model PATH`.

One reward (``reward_model`` unless named otherwise): a transformers
sequence-classification model with one output scores each (prompt, completion); its
logit is the score. Per request:

1. Samples are checked and encoded off the event loop, on one tokenizer thread
   (`rm_model.encode_pair`: chat template or text pair, then the truncation policy).
   No completion, a prompt the chat template rejects, or a sample too long under
   ``truncation: error`` is INVALID_INPUT for that sample alone.
2. The encoded samples join the dynamic batcher's queue (`rm_batcher`), where samples
   of all concurrent requests are batched into forwards, one at a time, run by the
   model process (`rm_process`: the weights and the forwards live in a child process,
   so they never wait on this process's GIL).
3. Each score comes back with `components`: ``raw`` (the logit before normalisation),
   ``tokens`` (fed to the model) and ``truncated`` (1 when the policy cut the sample).
   A forward that fails (out of memory, say, or a model process that died and is
   replaced) makes its samples ERROR; a sample not done within `timeout_s` is
   TIMEOUT. A failure is not a score.

Normalisation (`normalize`): ``none``; ``fixed``: ``(raw - norm_offset) / norm_scale``
with figures measured offline (e.g. the mean and std of the training set's scores);
``running``: standardised by the mean and std of every raw score this process has
returned so far. ``running`` makes a sample's value depend on what was scored before it
and on the order requests arrived (and restarts from nothing with the process), so it
is off by default and its values are not comparable across runs; prefer ``fixed``.

Not done here: a result cache (a model's score is cheap to recompute next to its
forward), several models in one process, tensor or pipeline parallelism.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import math
import time
from collections import Counter
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path
from typing import Any, Literal

import grpc
from prometheus_client import Counter as PromCounter
from prometheus_client import Histogram

from referee.rewardsvc.metrics import ServerMetrics
from referee.rewardsvc.rm_batcher import BatchFailed, BatchLimits, DynamicBatcher
from referee.rewardsvc.rm_model import (
    DTYPES,
    Encoded,
    RewardModel,
    TooLong,
    default_max_length,
    encode_pair,
    load_reward_model,
    score_batch,
)
from referee.rewardsvc.rm_process import ModelProcess
from referee.rewardsvc.streaming import RequestError, invalid_request, score_stream, score_unary
from referee.v1 import reward_pb2 as pb
from referee.v1 import reward_pb2_grpc

Normalize = Literal["none", "fixed", "running"]


@dataclass
class RewardModelConfig:
    """What `referee serve reward-model` serves, and how it batches."""

    model: Path
    """A Hugging Face sequence-classification directory (config, weights, tokenizer) with num_labels 1."""

    name: str = "reward_model"
    """The reward name clients ask for."""

    device: str = "cpu"
    """torch device: cpu, cuda, cuda:1, ..."""

    dtype: str = "fp32"
    """Weights dtype: fp32 or bf16."""

    max_length: int | None = None
    """Most tokens fed per sample; None: the tokenizer's model_max_length capped by the model's positions."""

    truncation: Literal["left", "right", "error"] = "left"
    """Longer samples: drop tokens from the start (left), from the end (right), or refuse them (error)."""

    max_batch_size: int = 32
    """Most samples in one forward; 1 runs one forward per sample."""

    max_wait_ms: float = 5.0
    """How long the oldest queued sample waits for others to join its forward."""

    max_batch_tokens: int = 16384
    """Most padded tokens in one forward (samples x the longest); bounds activation memory."""

    padding_side: Literal["left", "right"] = "right"
    """Pad side of a batch; scores do not depend on it (left is for decoder models only)."""

    normalize: Normalize = "none"
    """none | fixed ((raw - norm_offset) / norm_scale) | running (order-dependent, see module doc)."""

    norm_offset: float = 0.0
    """Subtracted from the raw score under `normalize: fixed`."""

    norm_scale: float = 1.0
    """Divides the offset score under `normalize: fixed`; must be > 0."""

    timeout_s: float = 60.0
    """Per-sample limit on queueing plus forward; past it the sample is TIMEOUT."""

    max_batch_samples: int = 16384
    """Most samples one request may carry; clients split larger batches."""

    model_process: bool = True
    """Run forwards in a child process with its own GIL (`rm_process`; the weights load
    there only); False runs them on a thread of the server process, which starts
    quicker but makes forwards wait on the event loop for the GIL."""

    def __post_init__(self) -> None:
        self.model = Path(self.model)
        if not self.name.strip():
            raise ValueError("name must not be empty")
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {sorted(DTYPES)}, got {self.dtype!r}")
        if self.truncation not in ("left", "right", "error"):
            raise ValueError(f"truncation must be left, right or error, got {self.truncation!r}")
        if self.padding_side not in ("left", "right"):
            raise ValueError(f"padding_side must be left or right, got {self.padding_side!r}")
        if self.normalize not in ("none", "fixed", "running"):
            raise ValueError(f"normalize must be none, fixed or running, got {self.normalize!r}")
        if not (self.norm_scale > 0 and math.isfinite(self.norm_scale) and math.isfinite(self.norm_offset)):
            raise ValueError(f"norm_scale must be finite and > 0 and norm_offset finite, got "
                             f"{self.norm_scale}, {self.norm_offset}")
        if self.max_length is not None and self.max_length < 2:
            raise ValueError(f"max_length must be >= 2, got {self.max_length}")
        if not self.timeout_s > 0 or self.max_batch_samples < 1:
            raise ValueError("timeout_s must be > 0 and max_batch_samples >= 1")
        _ = self.limits  # validates the batching fields

    @property
    def limits(self) -> BatchLimits:
        return BatchLimits(self.max_batch_size, self.max_wait_ms, self.max_batch_tokens)


class RunningStats:
    """Welford mean and standard deviation of every value folded in."""

    def __init__(self) -> None:
        self.count = 0
        self.mean = 0.0
        self._m2 = 0.0

    def add(self, x: float) -> None:
        self.count += 1
        delta = x - self.mean
        self.mean += delta / self.count
        self._m2 += delta * (x - self.mean)

    @property
    def std(self) -> float:
        """Population std; 1.0 until two distinct values have been seen."""
        if self.count < 2 or self._m2 <= 0:
            return 1.0
        return math.sqrt(self._m2 / self.count)


class RewardModelService(reward_pb2_grpc.RewardServiceServicer):
    """Serves one reward model (see the module doc). Loads the model when built."""

    full_name = "referee.v1.RewardService"

    def __init__(self, cfg: RewardModelConfig) -> None:
        self.cfg = cfg
        self._process = ModelProcess(cfg.model, cfg.device, cfg.dtype) if cfg.model_process else None
        try:
            self.rm: RewardModel = self._process.rm if self._process is not None \
                else load_reward_model(cfg.model, cfg.device, cfg.dtype)
            self.max_length = _checked_max_length(cfg, self.rm)
        except BaseException:
            if self._process is not None:
                self._process.close()
            raise
        self.version = "1+" + _fingerprint(cfg, self.max_length)
        self._running = RunningStats()
        self._metrics = ServerMetrics()  # replaced by the server's in attach()
        self._batch_size: Histogram | None = None
        self._forward_s: Histogram | None = None
        self._truncated: PromCounter | None = None
        self._encoder = ThreadPoolExecutor(1, thread_name_prefix="rm-tokenize")
        if self._process is not None:
            forward = partial(self._process.score, padding_side=cfg.padding_side)
        else:
            forward = partial(score_batch, self.rm, padding_side=cfg.padding_side)
        self._batcher = DynamicBatcher(
            forward, cfg.limits,
            size=lambda e: len(e.ids), on_batch=self._observe_batch,
            on_queue=lambda depth: self._metrics.queue_depth.set(depth),
        )

    def attach(self, server: grpc.aio.Server, metrics: ServerMetrics) -> None:
        self._metrics = metrics
        r = metrics.registry
        self._batch_size = Histogram("referee_rm_batch_size", "samples per reward-model forward",
                                     buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512), registry=r)
        self._forward_s = Histogram("referee_rm_forward_seconds", "seconds per reward-model forward",
                                    registry=r)
        self._truncated = PromCounter("referee_rm_truncated", "samples cut by the truncation policy",
                                      registry=r)
        reward_pb2_grpc.add_RewardServiceServicer_to_server(self, server)

    async def close(self) -> None:
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, self._batcher.close)
        self._encoder.shutdown(wait=False, cancel_futures=True)
        if self._process is not None:
            await loop.run_in_executor(None, self._process.close)

    def _observe_batch(self, stats: Any) -> None:
        if self._batch_size is not None and self._forward_s is not None:
            self._batch_size.observe(stats.size)
            self._forward_s.observe(stats.seconds)

    # --- RPCs -------------------------------------------------------------------------

    async def ListRewards(self, request: pb.ListRewardsRequest, context: Any) -> pb.ListRewardsResponse:
        c = self.cfg
        norm = {"none": "raw logit", "fixed": f"(logit - {c.norm_offset:g}) / {c.norm_scale:g}",
                "running": "logit standardised by running mean/std (order-dependent)"}[c.normalize]
        description = (f"sequence-classification reward model {c.model.name} "
                       f"({self.rm.architecture}, {self.rm.pooling} pooling, "
                       f"{'chat template' if self.rm.chat else 'text pair'}, max_length "
                       f"{self.max_length}, truncation {c.truncation}, {c.dtype} on {self.rm.device}); "
                       f"value: {norm}; components: raw, tokens, truncated")
        info = pb.RewardInfo(name=c.name, kind="model", version=self.version,
                             description=description, timeout_s=c.timeout_s)
        return pb.ListRewardsResponse(rewards=[info])

    async def Score(self, request: pb.ScoreRequest, context: grpc.aio.ServicerContext) -> pb.ScoreResponse:
        return await score_unary(context, self.score(request), invalid_request)

    async def ScoreStream(
        self, request_iterator: AsyncIterator[pb.ScoreRequest], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.ScoreResponse]:
        """Up to STREAM_WINDOW requests of a stream are scored at once (their samples
        share forwards); answers come back as they finish, each with its request_id."""
        async for answer in score_stream(request_iterator, context, self.score, invalid_request):
            yield answer

    # --- scoring ----------------------------------------------------------------------

    async def score(self, req: pb.ScoreRequest) -> pb.ScoreResponse:
        self._check(req)
        samples = list(req.samples)
        loop = asyncio.get_running_loop()
        encoded = await loop.run_in_executor(self._encoder, self._encode_all, samples)
        scores: list[pb.Score | None] = [e if isinstance(e, pb.Score) else None for e in encoded]
        todo = [i for i, e in enumerate(encoded) if isinstance(e, Encoded)]
        started = time.monotonic()
        outcomes = await self._batcher.submit([encoded[i] for i in todo], self.cfg.timeout_s)
        waited = time.monotonic() - started
        raws = [o[0] for o in outcomes if isinstance(o, tuple) and math.isfinite(o[0])]
        values = self._normalize(raws)
        hist = self._metrics.sample_latency.labels(self.cfg.name)
        for i, outcome in zip(todo, outcomes, strict=True):
            enc = encoded[i]
            assert isinstance(enc, Encoded)
            scores[i] = self._to_score(samples[i].id, enc, outcome, values)
            hist.observe(waited)
        n_trunc = sum(1 for i in todo if encoded[i].truncated)  # type: ignore[union-attr]
        if n_trunc and self._truncated is not None:
            self._truncated.inc(n_trunc)
        for status, k in Counter(s.status for s in scores).items():  # type: ignore[union-attr]
            self._metrics.samples.labels(self.cfg.name, pb.Status.Name(status)[7:]).inc(k)
        return pb.ScoreResponse(scores=scores, request_id=req.request_id, reward=self.cfg.name,
                                version=self.version)

    def _check(self, req: pb.ScoreRequest) -> None:
        if req.reward != self.cfg.name:
            raise RequestError(f"unknown reward {req.reward!r}; this service offers: {self.cfg.name}")
        if len(req.samples) > self.cfg.max_batch_samples:
            raise RequestError(f"request has {len(req.samples)} samples; at most "
                               f"{self.cfg.max_batch_samples} per request (the referee client "
                               "splits batches for you)")
        if req.params.fields:
            raise RequestError(f"params: {self.cfg.name} takes no params, got "
                               f"{sorted(req.params.fields)}")

    def _encode_all(self, samples: list[pb.Sample]) -> list[Encoded | pb.Score]:
        """Runs on the tokenizer thread: each sample's ids, or its INVALID_INPUT score."""
        from jinja2 import TemplateError

        out: list[Encoded | pb.Score] = []
        for i, s in enumerate(samples):
            where = f"sample {i} (id {s.id!r})"
            if not s.HasField("completion"):
                out.append(pb.Score(id=s.id, status=pb.STATUS_INVALID_INPUT,
                                    reason=f"{where} has no completion"))
                continue
            which = s.WhichOneof("prompt")
            prompt: str | list[dict[str, str]] = (
                [{"role": m.role, "content": m.content} for m in s.prompt_messages.messages]
                if which == "prompt_messages" else s.prompt_text)
            try:
                out.append(encode_pair(self.rm, prompt, s.completion, self.max_length, self.cfg.truncation))
            except TooLong as e:
                out.append(pb.Score(id=s.id, status=pb.STATUS_INVALID_INPUT, reason=f"{where}: {e}",
                                    components={"max_length": float(self.max_length)}))
            except TemplateError as e:
                out.append(pb.Score(id=s.id, status=pb.STATUS_INVALID_INPUT,
                                    reason=f"{where}: the chat template rejected the prompt: {e}"))
        return out

    def _normalize(self, raws: list[float]) -> dict[float, float]:
        """Each raw score's value under the normalisation mode (see the module doc)."""
        c = self.cfg
        if c.normalize == "none":
            return {r: r for r in raws}
        if c.normalize == "fixed":
            return {r: (r - c.norm_offset) / c.norm_scale for r in raws}
        for r in raws:
            self._running.add(r)
        mean, std = self._running.mean, self._running.std
        return {r: (r - mean) / std for r in raws}

    def _to_score(self, sid: str, enc: Encoded, outcome: Any, values: dict[float, float]) -> pb.Score:
        comps = {"tokens": float(len(enc.ids)), "truncated": float(enc.truncated)}
        if isinstance(outcome, TimeoutError):
            return pb.Score(id=sid, status=pb.STATUS_TIMEOUT, reason=str(outcome), components=comps)
        if isinstance(outcome, BaseException):
            if not isinstance(outcome, BatchFailed):
                raise outcome  # a bug, not a per-sample failure: the call fails with it
            return pb.Score(id=sid, status=pb.STATUS_ERROR, reason=str(outcome), components=comps)
        raw, cost = outcome
        if not math.isfinite(raw):
            return pb.Score(id=sid, status=pb.STATUS_ERROR, components=comps, cost_s=cost,
                            reason=f"the model gave a non-finite score ({raw})")
        reason = f"truncated {enc.full_tokens} -> {len(enc.ids)} tokens ({self.cfg.truncation})" \
            if enc.truncated else ""
        return pb.Score(id=sid, status=pb.STATUS_OK, value=values[raw], cost_s=cost, reason=reason,
                        components={**comps, "raw": raw})


def _checked_max_length(cfg: RewardModelConfig, rm: RewardModel) -> int:
    """The max_length in force; ValueError for settings this model cannot honour."""
    max_length = cfg.max_length or default_max_length(rm)
    if rm.max_positions and max_length > rm.max_positions:
        raise ValueError(f"max_length {max_length} exceeds the model's {rm.max_positions} positions")
    if cfg.padding_side == "left" and rm.pooling != "last_token":
        raise ValueError("padding_side left needs a decoder (last-token) model; this one "
                         "pools its first token, so pad on the right")
    return max_length


def _fingerprint(cfg: RewardModelConfig, max_length: int) -> str:
    """A short digest of the model directory and every setting that changes a score.

    Each file contributes its name, size and up to 1 MiB from each end, so loading a
    multi-gigabyte model does not mean reading it twice."""
    h = hashlib.sha256()
    for f in sorted(p for p in cfg.model.iterdir() if p.is_file()):
        size = f.stat().st_size
        h.update(f"{f.name}\0{size}\0".encode())
        with f.open("rb") as fh:
            h.update(fh.read(1 << 20))
            if size > 2 << 20:
                fh.seek(-(1 << 20), 2)
                h.update(fh.read())
    settings = {k: v for k, v in asdict(cfg).items() if k in
                ("dtype", "truncation", "normalize", "norm_offset", "norm_scale")}
    h.update(json.dumps({**settings, "max_length": max_length}, sort_keys=True).encode())
    return h.hexdigest()[:12]
