"""The rollout server's model owner: generation on one worker thread, reloads, pause, abort.

Request/response fields as in SGLang v0.5.3rc2 io_struct.py GenerateReqInput /
http_server.py; this module holds no HTTP, `serve.py` maps the routes onto it.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from pydantic import BaseModel, ConfigDict

from .base import Completion, SamplingParams
from .hf import HFEngine

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
    rids: set[str]
    cancel: threading.Event = field(default_factory=threading.Event)
    reason: str = "Abort"


@dataclass
class Generated:
    groups: list[list[Completion]]  # in prompt order, n completions each
    weight_version: str  # of the weights that generated them
    abort_message: str  # why, for completions with finish_reason "abort"


class RolloutBackend:
    """Owns the model: generation on one worker thread, weight reloads, pause and abort.

    Generation and reloads hold `_model_lock`, so a reload waits for the request being
    generated and never mixes weights within one. While paused, requests queue (the
    worker waits before starting each); a pause in mode "abort" also aborts the
    requests already admitted, as SGLang's does.
    """

    def __init__(
        self,
        engine: HFEngine,
        model_path: str,
        *,
        max_total_tokens: int | None = None,
        weight_version: str = DEFAULT_WEIGHT_VERSION,
    ) -> None:
        self.engine = engine
        self.tokenizer = engine.tokenizer
        self.model_path = model_path
        self.tokenizer_path = model_path
        self.weight_version = weight_version
        config = engine.model.config
        self.context_len = int(getattr(config, "max_position_embeddings", 0) or 2048)
        self.vocab_size = engine.model.get_input_embeddings().num_embeddings
        self.max_total_tokens = max_total_tokens
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="rollout-generate")
        self._model_lock = threading.Lock()
        self._resume = threading.Event()
        self._resume.set()
        self._jobs: list[Job] = []
        self._jobs_lock = threading.Lock()
        self._running: Job | None = None

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
        """Run a request's calls on the worker thread, after those that came before."""
        job = Job(set(rids))
        with self._jobs_lock:
            self._jobs.append(job)
        try:
            loop = asyncio.get_running_loop()
            return await loop.run_in_executor(self._executor, self._run, job, calls, n_prompts)
        finally:
            job.cancel.set()  # a cancelled await (shutdown, timeout) stops the work too
            with self._jobs_lock:
                self._jobs.remove(job)

    def _run(self, job: Job, calls: list[Call], n_prompts: int) -> Generated:
        while not self._resume.wait(0.05) and not job.cancel.is_set():
            pass  # paused: requests wait in arrival order
        groups: list[list[Completion]] = [[] for _ in range(n_prompts)]
        with self._model_lock:
            self._running = job
            try:
                for call in calls:
                    out = self.engine.generate(call.prompts, call.params, cancel=job.cancel)
                    for i, group in zip(call.indices, out, strict=True):
                        groups[i] = group
            finally:
                self._running = None
            return Generated(groups, self.weight_version, job.reason)

    def abort(self, rid: str = "", *, abort_all: bool = False, reason: str = "Abort") -> int:
        """Abort queued or running requests with this rid (or all); how many matched."""
        with self._jobs_lock:
            hits = [j for j in self._jobs if abort_all or rid in j.rids]
            for job in hits:
                job.reason = reason
                job.cancel.set()
        return len(hits)

    def pause(self, mode: str) -> None:
        self._resume.clear()
        if mode == "abort":
            self.abort(abort_all=True, reason="Abort by pause_generation")

    def resume(self) -> None:
        self._resume.set()

    @property
    def paused(self) -> bool:
        return not self._resume.is_set()

    def busy(self) -> bool:
        return self._running is not None

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
        self.abort(abort_all=True, reason="Abort by server shutdown")
        self._resume.set()
        self._executor.shutdown(wait=False, cancel_futures=True)
