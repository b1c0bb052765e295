"""What every rollout engine takes and returns, and the protocol it implements.

An engine turns prompts (token ids) into groups of sampled completions. Two engines
fit this protocol: `hf` (in-process transformers, `hf.py`) and `sglang` (HTTP to
SGLang servers). The types follow SGLang's native `/generate` so that engine is a
thin translation: `SamplingParams` maps onto `sampling_params` (`stop`,
`stop_token_ids`, `top_k=-1` for off, `sampling_seed`), and `Completion` holds what
comes back (`output_ids`, `meta_info.output_token_logprobs`, `finish_reason`,
`weight_version`).

Conventions every engine keeps (the trainer relies on them):

* **Logprobs** are `log_softmax(logits / T)` of the sampled token over the whole
  vocabulary, in fp32, where `T = params.logprob_temperature` (the sampling
  temperature, or 1 for greedy decoding). Top-k/top-p truncation is *not* applied:
  the trainer's forward pass (`referee.trainer.logprobs.sequence_logprobs` with the
  same temperature) computes exactly this quantity, so the PPO ratio of a freshly
  sampled batch is 1 up to float error. This is SGLang's default too (without
  `SGLANG_RETURN_ORIGINAL_LOGPROB`).
* **Completion tokens include the token that ended them**: the EOS/stop token, or the
  token that completed a stop string, so the policy is trained to stop. `text`
  leaves out special tokens and everything from the stop string on (SGLang and
  vLLM do the same).
* **Groups are delivered as soon as they are complete**, through `on_group`, so the
  trainer can send them to the reward service while other prompts still generate.
"""

from __future__ import annotations

import os
import queue
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal, Protocol, runtime_checkable

import torch

FinishReason = Literal["stop", "length", "abort"]

#: Called once per prompt with (prompt index, its n completions), from the thread
#: that runs `generate`, in completion order (not necessarily prompt order).
GroupCallback = Callable[[int, list["Completion"]], None]

#: New weights for an engine: a module (for `hf`, the very policy module when
#: shared, which costs nothing), a state dict, or a Hugging Face model directory.
WeightSource = torch.nn.Module | Mapping[str, torch.Tensor] | str | os.PathLike


@dataclass(frozen=True)
class SamplingParams:
    """How to sample; one set for a whole `generate` call."""

    n: int = 1
    """Completions per prompt (the GRPO group size)."""
    temperature: float = 1.0
    """Softmax temperature; 0 means greedy decoding."""
    top_p: float = 1.0
    """Nucleus sampling: keep the smallest set of tokens with this much mass (1 = off)."""
    top_k: int = -1
    """Keep the k most likely tokens; -1 = off (SGLang's convention)."""
    max_new_tokens: int = 128
    """Completion length cap; hitting it gives finish_reason "length"."""
    stop: tuple[str, ...] = ()
    """Stop strings: the completion ends at the first token that completes one."""
    stop_token_ids: tuple[int, ...] = ()
    """Token ids that end a completion, on top of the model's EOS ids."""
    seed: int | None = None
    """Seed for the whole call; each (prompt, sample) gets its own stream derived from
    it, so results do not depend on batching. None draws one from torch's global RNG
    (so `torch.manual_seed` still makes a run reproducible)."""

    def __post_init__(self) -> None:
        if isinstance(self.stop, str):
            object.__setattr__(self, "stop", (self.stop,))
        object.__setattr__(self, "stop", tuple(self.stop))
        object.__setattr__(self, "stop_token_ids", tuple(int(t) for t in self.stop_token_ids))
        if self.n < 1:
            raise ValueError(f"n must be >= 1, got {self.n}")
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0 (0 = greedy), got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}; use 1 to turn it off")
        if self.top_k == 0 or self.top_k < -1:
            raise ValueError(f"top_k must be -1 (off) or >= 1, got {self.top_k}")
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if any(not s for s in self.stop):
            raise ValueError("stop strings must be non-empty")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0

    @property
    def logprob_temperature(self) -> float:
        """The temperature logprobs are computed at: the sampling one, 1 when greedy.
        Pass it to `sequence_logprobs` so the trainer scores tokens the same way."""
        return self.temperature if self.temperature > 0 else 1.0


@dataclass
class Completion:
    """One sampled continuation of one prompt."""

    prompt_index: int
    """Index of the prompt in the list given to `generate`."""
    sample_index: int
    """0..n-1 within the prompt's group."""
    prompt_ids: list[int]
    token_ids: list[int]
    """Completion tokens, including the EOS/stop token that ended it (if any)."""
    text: str
    """Decoded completion without special tokens, cut before a matched stop string."""
    logprobs: list[float]
    """Per token of `token_ids`: log_softmax(logits / logprob_temperature) of that token,
    computed in fp32 by the engine (the values are exact fp32 numbers)."""
    finish_reason: FinishReason
    weight_version: int
    """Version of the weights that generated it (the trainer's step count when synced)."""
    matched_stop: str | int | None = None
    """The stop string or stop token id that ended it, when finish_reason is "stop"."""

    def __post_init__(self) -> None:
        if len(self.logprobs) != len(self.token_ids):
            raise ValueError(
                f"{len(self.logprobs)} logprobs for {len(self.token_ids)} completion tokens"
            )


@dataclass
class RolloutTensors:
    """A rollout batch as right-padded tensors, one row per completion.

    Row i is `prompt_ids + token_ids` of completion i, then padding. Every tensor that
    is per token is aligned the same way: column t holds token t and, for logprobs,
    log p(token t | tokens < t). Response positions are those of completion tokens.
    """

    input_ids: torch.Tensor  # [N, T] long, pad_token_id after the sequence
    attention_mask: torch.Tensor  # [N, T] long, 1 on prompt + completion tokens
    response_mask: torch.Tensor  # [N, T] bool, True on completion tokens only
    rollout_logprobs: torch.Tensor  # [N, T] float32, engine logprobs on response, 0 elsewhere
    prompt_lengths: torch.Tensor  # [N] long
    completion_lengths: torch.Tensor  # [N] long
    group_index: torch.Tensor  # [N] long, index of the row's group in RolloutBatch.groups
    truncated: torch.Tensor  # [N] bool, finish_reason == "length"
    weight_version: torch.Tensor  # [N] long


@dataclass
class RolloutBatch:
    """Completions grouped by prompt: `groups[i]` holds the samples of one prompt.

    Groups may have different sizes (a filtered or aborted group); rows of the
    tensor view go group by group, sample by sample.
    """

    groups: list[list[Completion]] = field(default_factory=list)

    @property
    def completions(self) -> list[Completion]:
        """All completions, group-major: the row order of `to_tensors`."""
        return [c for group in self.groups for c in group]

    def __len__(self) -> int:
        return sum(len(group) for group in self.groups)

    def to_tensors(self, pad_token_id: int) -> RolloutTensors:
        """Right-padded `[N, T]` tensors, `T` the longest prompt + completion.

        Prompt and completion are contiguous (no padding between them), so position
        ids are `0..len-1` for every row; `sequence_logprobs` derives them from the
        attention mask either way.
        """
        rows = [(g, c) for g, group in enumerate(self.groups) for c in group]
        if not rows:
            raise ValueError("empty rollout batch")
        lengths = [len(c.prompt_ids) + len(c.token_ids) for _, c in rows]
        n, t = len(rows), max(lengths)
        input_ids = torch.full((n, t), pad_token_id, dtype=torch.long)  # [N, T]
        attention_mask = torch.zeros((n, t), dtype=torch.long)  # [N, T]
        response_mask = torch.zeros((n, t), dtype=torch.bool)  # [N, T]
        logprobs = torch.zeros((n, t), dtype=torch.float32)  # [N, T]
        for i, (_, c) in enumerate(rows):
            p, length = len(c.prompt_ids), lengths[i]
            input_ids[i, :length] = torch.tensor(c.prompt_ids + c.token_ids, dtype=torch.long)
            attention_mask[i, :length] = 1
            response_mask[i, p:length] = True
            logprobs[i, p:length] = torch.tensor(c.logprobs, dtype=torch.float32)
        return RolloutTensors(
            input_ids=input_ids,
            attention_mask=attention_mask,
            response_mask=response_mask,
            rollout_logprobs=logprobs,
            prompt_lengths=torch.tensor([len(c.prompt_ids) for _, c in rows]),  # [N]
            completion_lengths=torch.tensor([len(c.token_ids) for _, c in rows]),  # [N]
            group_index=torch.tensor([g for g, _ in rows]),  # [N]
            truncated=torch.tensor([c.finish_reason == "length" for _, c in rows]),  # [N]
            weight_version=torch.tensor([c.weight_version for _, c in rows]),  # [N]
        )


@runtime_checkable
class RolloutEngine(Protocol):
    """Samples completions from the current policy weights.

    `generate` is synchronous and may be slow; it reports each prompt's group through
    `on_group` the moment the group is complete, so a caller can score groups while
    the rest generate (or use `iter_groups` to consume them as an iterator). An engine
    holds the weights of one `weight_version`; the trainer moves it on with
    `update_weights` after each optimiser step.
    """

    weight_version: int

    def generate(
        self,
        prompts: Sequence[Sequence[int]],
        params: SamplingParams,
        on_group: GroupCallback | None = None,
    ) -> list[list[Completion]]:
        """Sample `params.n` completions for each prompt (token ids, no padding).

        Returns the groups in prompt order; `result[i]` holds prompt i's completions in
        sample order. `on_group(i, result[i])` has been called for every i by the
        time it returns (an exception from it aborts the call and propagates).
        """
        ...

    def update_weights(self, source: WeightSource, version: int | None = None) -> None:
        """Generate with new weights from now on; `version` defaults to the current + 1.

        Not called while `generate` runs (an engine may refuse if it is)."""
        ...

    def close(self) -> None:
        """Stop: a `generate` in progress ends early with finish_reason "abort" on the
        unfinished completions; release resources. Idempotent."""
        ...


def iter_groups(
    engine: RolloutEngine,
    prompts: Sequence[Sequence[int]],
    params: SamplingParams,
) -> Iterator[tuple[int, list[Completion]]]:
    """Yield `(prompt index, completions)` as each group completes.

    Runs `engine.generate` in a background thread; an exception there is re-raised
    here. Abandoning the iterator early does not stop generation: call
    `engine.close()` for that.
    """
    done = object()
    items: queue.Queue = queue.Queue()
    failure: list[BaseException] = []

    def run() -> None:
        try:
            engine.generate(prompts, params, on_group=lambda i, group: items.put((i, group)))
        except BaseException as exc:  # re-raised in the consuming thread
            failure.append(exc)
        finally:
            items.put(done)

    thread = threading.Thread(target=run, name="rollout-generate", daemon=True)
    thread.start()
    while (item := items.get()) is not done:
        yield item
    thread.join()
    if failure:
        raise failure[0]
