"""The rollout server's model owner: batched generation on one worker thread, reloads,
pause, abort.

Request/response fields as in SGLang v0.5.3rc2 io_struct.py GenerateReqInput /
http_server.py; this module holds no HTTP, `serve.py` maps the routes onto it.

Dynamic batching: every request waits in one queue. The worker takes the oldest, plus
every other queued call whose sampling params are the same but for the seed, up to
`max_batch_size` rows (prompts times n) and `max_total_tokens`, and runs them as one
`HFEngine.generate` call. It waits up to `batch_wait_ms` after the oldest call arrived
for company, never longer. Each prompt keeps its own seed and cancel event, so a
call's tokens and logprobs do not depend on what it was batched with (up to float
noise from padding) and an abort ends only the aborted request's rows.
"""

from __future__ import annotations

import asyncio
import dataclasses
import threading
import time
from collections.abc import Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path

import torch
from pydantic import BaseModel, ConfigDict

from .base import Completion, SamplingParams
from .hf import HFEngine, _mix

DEFAULT_WEIGHT_VERSION = "default"  # SGLang's ServerArgs.weight_version default


class Strict(BaseModel):
    """Request bodies reject fields they do not know (a typo is an error, not a no-op)."""

    model_config = ConfigDict(extra="forbid")


class RequestError(ValueError):
    """A client mistake: answered with a 400 and this message, never a 500."""


@dataclass
class Call:
    """One `HFEngine.generate` call of a request: its prompts share sampling params."""

    indices: list[int]  # positions of these prompts in the request
    prompts: list[list[int]]
    params: SamplingParams


@dataclass
class Job:
    """One request: what `abort` matches (any of its rids) and ends (all its calls)."""

    rids: set[str]
    cancel: threading.Event = field(default_factory=threading.Event)
    reason: str = "Abort"


@dataclass
class Queued:
    """A call waiting for the worker, with one seed per prompt."""

    call: Call
    seeds: list[int]
    job: Job
    arrived: float  # time.monotonic()
    done: Future[tuple[list[list[Completion]], str]] = field(default_factory=Future)

    @property
    def rows(self) -> int:
        return len(self.call.prompts) * self.call.params.n

    @property
    def tokens(self) -> int:
        """Most tokens its rows can hold: prompt + max_new_tokens, times n."""
        params = self.call.params
        return sum(len(p) + params.max_new_tokens for p in self.call.prompts) * params.n

    @property
    def key(self) -> SamplingParams:
        """Calls with equal keys can share a `generate` call (seeds travel per prompt)."""
        return dataclasses.replace(self.call.params, seed=None)


@dataclass
class Generated:
    groups: list[list[Completion]]  # in prompt order, n completions each
    weight_versions: list[str]  # per group: of the weights that generated it
    abort_message: str  # why, for completions with finish_reason "abort"

    @property
    def weight_version(self) -> str:
        """The last prompt's (`weight_versions` differ only when a request with
        per-prompt sampling params was split over batches around a reload)."""
        return self.weight_versions[-1]


@dataclass
class BatchStats:
    """Counters for /get_server_info, so a client (or a test) can see batching work."""

    batches_run: int = 0  # HFEngine.generate calls
    calls_run: int = 0  # calls they answered (a request is one call per sampling params)
    rows_run: int = 0  # (prompt, sample) rows they generated
    largest_batch_rows: int = 0


def prompt_seeds(seed: int | None, count: int) -> list[int]:
    """The seeds of a call's prompts: the call's own for its first prompt (so a
    one-prompt request samples as `HFEngine` with that seed), one derived from
    (seed, i) for prompt i > 0; a call without a seed draws one from torch's RNG."""
    if seed is None:
        seed = int(torch.randint(0, 2**62, (1,)).item())
    return [seed if i == 0 else _mix(seed, i) for i in range(count)]


class RolloutBackend:
    """Owns the model: batched generation on one worker thread (see the module
    docstring), weight reloads, pause and abort.

    A batch and a reload each hold `_model_lock`, so a reload waits for the batch being
    generated and never mixes weights within one. While paused, requests queue (no
    batch starts; aborted ones are still answered at once); a pause in mode "abort"
    also aborts the requests already admitted, as SGLang's does.

    Aborting one rid of a request ends the whole request (all its prompts), not the
    other requests in its batch.
    """

    def __init__(
        self,
        engine: HFEngine,
        model_path: str,
        *,
        max_total_tokens: int | None = None,
        weight_version: str = DEFAULT_WEIGHT_VERSION,
        max_batch_size: int = 64,
        batch_wait_ms: float = 2.0,
    ) -> None:
        """`max_batch_size`: most rows (prompts times n) merged into one batch; a larger
        request still runs, alone. `batch_wait_ms`: how long the oldest queued call may
        wait for others to join its batch. `engine.micro_batch_prompts` below
        `max_batch_size` splits a merged batch into several forward passes."""
        if max_batch_size < 1:
            raise ValueError(f"max_batch_size must be >= 1, got {max_batch_size}")
        if batch_wait_ms < 0:
            raise ValueError(f"batch_wait_ms must be >= 0, got {batch_wait_ms}")
        self.engine = engine
        self.tokenizer = engine.tokenizer
        self.model_path = model_path
        self.tokenizer_path = model_path
        self.weight_version = weight_version
        config = engine.model.config
        self.context_len = int(getattr(config, "max_position_embeddings", 0) or 2048)
        self.vocab_size = engine.model.get_input_embeddings().num_embeddings
        self.max_total_tokens = max_total_tokens
        self.max_batch_size = max_batch_size
        self.batch_wait_s = batch_wait_ms / 1000
        self.stats = BatchStats()
        self._model_lock = threading.Lock()
        self._state = threading.Condition()  # guards the fields below; notified on change
        self._paused = False
        self._closed = False
        self._queue: list[Queued] = []  # arrival order
        self._jobs: list[Job] = []  # admitted requests, queued or running
        self._running: list[Queued] = []
        self._worker = threading.Thread(target=self._work, name="rollout-generate", daemon=True)
        self._worker.start()

    # -- validation (RequestError on a client mistake) --------------------------------

    def check_prompt(self, ids: Sequence[int], what: str = "input_ids") -> list[int]:
        if len(ids) == 0:
            raise RequestError(f"{what} is empty; a prompt needs at least one token")
        bad = [t for t in ids if not 0 <= t < self.vocab_size]
        if bad:
            raise RequestError(
                f"{what} contains token id {bad[0]}, outside the vocabulary [0, {self.vocab_size})"
            )
        return list(ids)

    def check_budget(self, calls: Sequence[Call]) -> None:
        """Each sequence must fit the model's context; a request's sequences together
        must fit `max_total_tokens`."""
        total = 0
        for call in calls:
            for prompt in call.prompts:
                need = len(prompt) + call.params.max_new_tokens
                if need > self.context_len:
                    raise RequestError(
                        f"Requested token count exceeds the model's maximum context length of "
                        f"{self.context_len} tokens: {len(prompt)} prompt tokens + "
                        f"max_new_tokens {call.params.max_new_tokens} = {need}. Reduce the "
                        f"prompt or max_new_tokens."
                    )
                total += need * call.params.n
        if self.max_total_tokens is not None and total > self.max_total_tokens:
            raise RequestError(
                f"The request needs up to {total} tokens (prompt + max_new_tokens, times n, "
                f"over all prompts), more than this server's max_total_tokens "
                f"{self.max_total_tokens}. Send fewer prompts or samples at a time."
            )

    # -- generation -------------------------------------------------------------------

    async def generate(self, calls: list[Call], n_prompts: int, rids: Sequence[str]) -> Generated:
        """Queue a request's calls for the worker and wait for all of them."""
        job = Job(set(rids))
        now = time.monotonic()
        queued = [Queued(c, prompt_seeds(c.params.seed, len(c.prompts)), job, now) for c in calls]
        with self._state:
            if self._closed:
                raise RuntimeError("the rollout backend is closed")
            self._jobs.append(job)
            self._queue.extend(queued)
            self._state.notify_all()
        try:
            answers = await asyncio.gather(*(asyncio.wrap_future(q.done) for q in queued))
        finally:
            job.cancel.set()  # a cancelled await (shutdown, timeout) stops the work too
            with self._state:
                self._jobs.remove(job)
                self._state.notify_all()
        groups: list[list[Completion]] = [[] for _ in range(n_prompts)]
        versions = [self.weight_version] * n_prompts
        for call, (call_groups, version) in zip(calls, answers, strict=True):
            for i, group in zip(call.indices, call_groups, strict=True):
                groups[i], versions[i] = group, version
        return Generated(groups, versions, job.reason)

    # -- the worker ---------------------------------------------------------------------

    def _work(self) -> None:
        while True:
            with self._state:
                while not (batch := self._take()):
                    if self._closed:
                        return
                    self._state.wait(self._until_batch())
                live = [q for q in batch if not q.job.cancel.is_set()]
                self._running = live
            for q in batch:
                if q not in live:
                    q.done.set_result((_aborted(q.call, self.engine), self.weight_version))
            if live:
                self._run_batch(live)

    def _take(self) -> list[Queued]:
        """Under `_state`: remove and return the next batch, or aborted calls (answered
        at once, paused or not); [] when there is nothing to do yet."""
        dead = [q for q in self._queue if q.job.cancel.is_set() or q.done.cancelled()]
        if not dead and (self._paused or self._closed or not self._queue):
            return []
        if dead:
            batch = dead
        else:
            head = self._queue[0]
            batch, rows, tokens = [head], head.rows, head.tokens
            for q in self._queue[1:]:
                if q.key != head.key or rows + q.rows > self.max_batch_size:
                    continue
                if self.max_total_tokens is not None and tokens + q.tokens > self.max_total_tokens:
                    continue
                batch.append(q)
                rows, tokens = rows + q.rows, tokens + q.tokens
            if rows < self.max_batch_size and time.monotonic() < head.arrived + self.batch_wait_s:
                return []  # wait a little for company
        for q in batch:
            self._queue.remove(q)
        return [q for q in batch if q.done.set_running_or_notify_cancel()]

    def _until_batch(self) -> float | None:
        """Under `_state`: how long the worker may sleep before `_take` could change
        its answer without a notify (the oldest call's batch wait running out)."""
        if self._paused or not self._queue:
            return None
        return max(self._queue[0].arrived + self.batch_wait_s - time.monotonic(), 0.0) + 1e-4

    def _run_batch(self, batch: list[Queued]) -> None:
        prompts = [p for q in batch for p in q.call.prompts]
        seeds = [s for q in batch for s in q.seeds]
        cancels = [q.job.cancel for q in batch for _ in q.call.prompts]
        try:
            with self._model_lock:
                groups = self.engine.generate(
                    prompts, batch[0].call.params, seeds=seeds, cancels=cancels
                )
                version = self.weight_version
        except Exception as e:  # the engine's error belongs to every caller in the batch
            for q in batch:
                q.done.set_exception(e)
            return
        finally:
            with self._state:
                self._running = []
        with self._state:
            self.stats.batches_run += 1
            self.stats.calls_run += len(batch)
            self.stats.rows_run += sum(q.rows for q in batch)
            self.stats.largest_batch_rows = max(
                self.stats.largest_batch_rows, sum(q.rows for q in batch)
            )
        start = 0
        for q in batch:
            q.done.set_result((groups[start : start + len(q.call.prompts)], version))
            start += len(q.call.prompts)

    def server_info(self) -> dict[str, int | float]:
        """The batching settings and counters (for /get_server_info)."""
        with self._state:
            return {
                "max_batch_size": self.max_batch_size,
                "batch_wait_ms": self.batch_wait_s * 1000,
                "calls_queued": len(self._queue),
                **dataclasses.asdict(self.stats),
            }

    # -- control --------------------------------------------------------------------------

    def abort(self, rid: str = "", *, abort_all: bool = False, reason: str = "Abort") -> int:
        """Abort queued or running requests with this rid (or all); how many matched."""
        with self._state:
            hits = [j for j in self._jobs if abort_all or rid in j.rids]
            for job in hits:
                job.reason = reason
                job.cancel.set()
            self._state.notify_all()
        return len(hits)

    def pause(self, mode: str) -> None:
        with self._state:
            self._paused = True
        if mode == "abort":
            self.abort(abort_all=True, reason="Abort by pause_generation")

    def resume(self) -> None:
        with self._state:
            self._paused = False
            self._state.notify_all()

    @property
    def paused(self) -> bool:
        return self._paused

    def busy(self) -> bool:
        return bool(self._running)

    def reload(
        self,
        model_path: str,
        *,
        load_format: str | None = None,
        weight_version: str | None = None,
        abort_all_requests: bool = False,
    ) -> tuple[bool, str]:
        """Load new weights from an HF directory in place, as SGLang's
        `update_weights_from_disk`: (success, message). Blocks: call it off the loop."""
        if load_format not in (None, "auto", "safetensors", "pt"):
            return False, f"Unsupported load_format {load_format!r}; use auto or safetensors"
        if not Path(model_path).is_dir():
            return False, f"Failed to update weights: {model_path} is not a model directory"
        if abort_all_requests:
            self.abort(abort_all=True, reason="Abort by update_weights_from_disk")
        with self._model_lock:
            try:
                self.engine.update_weights(model_path)
            except (OSError, ValueError, RuntimeError) as e:
                return False, f"Failed to update weights: {e}"
            self.model_path = model_path
            if weight_version is not None:
                self.weight_version = weight_version
        message = "Succeeded to update model weights."
        if weight_version is not None:
            message += f" Weight version updated to {weight_version}."
        return True, message

    def close(self) -> None:
        """Abort everything; the worker answers what is queued and exits."""
        self.abort(abort_all=True, reason="Abort by server shutdown")
        with self._state:
            self._closed = True
            self._state.notify_all()


def _aborted(call: Call, engine: HFEngine) -> list[list[Completion]]:
    """The groups of a call aborted before it ran: n empty "abort" completions each."""
    return [
        [
            Completion(
                prompt_index=i,
                sample_index=j,
                prompt_ids=list(prompt),
                token_ids=[],
                text="",
                logprobs=[],
                finish_reason="abort",
                weight_version=engine.weight_version,
            )
            for j in range(call.params.n)
        ]
        for i, prompt in enumerate(call.prompts)
    ]
