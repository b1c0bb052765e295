"""The `hf` rollout engine: sampling from an in-process transformers causal LM.

The CPU default. `HFEngine` can hold the trainer's own policy module, so generation
always uses the current weights and a weight sync is only a version bump; give it a
separate copy instead when generation must run while the trainer updates the policy
(one-step off-policy), and `update_weights(policy)` copies the parameters over.

The decoding loop is written out here rather than calling `model.generate`, because
the trainer needs what `generate` does not promise: the logprob of every sampled
token computed exactly as the training pass computes it (`gather_logprobs` on
`logits / T`, fp32, full vocabulary; see `base.py`), sampling streams seeded per
(prompt, sample) so results do not depend on how prompts are batched, stop strings
that cut tokens and text consistently, and each group handed over as soon as its
micro-batch finishes.

Batching: prompts go `micro_batch_prompts` at a time, each repeated `n` times, left
padded, with position ids counted over the real tokens (`position_ids_from_mask`, as
the training pass does) and a KV cache; rows that finish are dropped from the batch.
Not defended against: prompts longer than the model's context, and concurrent use of
the same module by the trainer while `generate` runs (the caller serialises them).
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from pathlib import Path

import torch
from transformers import (
    AutoModelForCausalLM,
    DynamicCache,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from ..logprobs import gather_logprobs, position_ids_from_mask
from .base import Completion, FinishReason, GroupCallback, SamplingParams, WeightSource

_MASK64 = (1 << 64) - 1


class HFEngine:
    """Rollouts from a transformers causal LM in this process (implements `RolloutEngine`)."""

    def __init__(
        self,
        model: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        *,
        micro_batch_prompts: int = 8,
        weight_version: int = 0,
    ) -> None:
        """`model` is the raw Hugging Face module (not a DeepSpeed/DDP wrapper: pass
        `engine.module`). `micro_batch_prompts` bounds memory: that many prompts (times
        n rows each) are generated together; their groups are delivered together."""
        if micro_batch_prompts < 1:
            raise ValueError(f"micro_batch_prompts must be >= 1, got {micro_batch_prompts}")
        self.model = model
        self.tokenizer = tokenizer
        self.micro_batch_prompts = micro_batch_prompts
        self.weight_version = weight_version
        pad = tokenizer.pad_token_id
        self.pad_token_id = pad if pad is not None else tokenizer.eos_token_id
        self.eos_token_ids = _eos_ids(model, tokenizer)
        self._abort = threading.Event()
        self._cancel: threading.Event | None = None  # this call's, see `generate`
        self._busy = threading.Lock()
        self._closed = False

    # -- RolloutEngine ---------------------------------------------------------------

    def generate(
        self,
        prompts: Sequence[Sequence[int]],
        params: SamplingParams,
        on_group: GroupCallback | None = None,
        *,
        cancel: threading.Event | None = None,
    ) -> list[list[Completion]]:
        """See `RolloutEngine.generate`. Setting `cancel` ends this call early like
        `close` does (unfinished completions get finish_reason "abort"), but leaves the
        engine usable: the rollout server aborts one request this way."""
        if self._closed:
            raise RuntimeError("HFEngine is closed")
        for i, prompt in enumerate(prompts):
            if len(prompt) == 0:
                raise ValueError(f"prompt {i} is empty; every prompt needs at least one token")
        if not self._busy.acquire(blocking=False):
            raise RuntimeError("HFEngine.generate is already running; it runs one call at a time")
        self._cancel = cancel
        try:
            return self._generate(prompts, params, on_group)
        finally:
            self._cancel = None
            self._busy.release()

    def update_weights(self, source: WeightSource, version: int | None = None) -> None:
        """Take new weights: the engine's own module (nothing to copy), another module
        (its parameters are copied; unwraps `.module` of DeepSpeed/DDP wrappers, but
        ZeRO-3 partitioned parameters must be gathered by the caller), a state dict,
        or a model directory."""
        if not self._busy.acquire(blocking=False):
            raise RuntimeError("update_weights called while generate is running")
        try:
            if isinstance(source, torch.nn.Module):
                source = getattr(source, "module", source)
                if source is not self.model:
                    self.model.load_state_dict(source.state_dict())
            elif isinstance(source, (str, Path)) or hasattr(source, "__fspath__"):
                dtype = next(self.model.parameters()).dtype
                loaded = AutoModelForCausalLM.from_pretrained(source, dtype=dtype)
                self.model.load_state_dict(loaded.state_dict())
            else:
                self.model.load_state_dict(dict(source))
            self.weight_version = self.weight_version + 1 if version is None else version
        finally:
            self._busy.release()

    def close(self) -> None:
        self._abort.set()
        self._closed = True

    # -- generation ------------------------------------------------------------------

    def _stopping(self) -> bool:
        cancel = self._cancel
        return self._abort.is_set() or (cancel is not None and cancel.is_set())

    def _generate(
        self,
        prompts: Sequence[Sequence[int]],
        params: SamplingParams,
        on_group: GroupCallback | None,
    ) -> list[list[Completion]]:
        if params.seed is not None:
            base_seed = params.seed
        else:  # follows torch.manual_seed
            base_seed = int(torch.randint(0, 2**62, (1,)).item())
        stop_ids = self.eos_token_ids | set(params.stop_token_ids)
        results: list[list[Completion]] = [[] for _ in prompts]
        was_training = self.model.training
        self.model.eval()
        try:
            for start in range(0, len(prompts), self.micro_batch_prompts):
                indices = range(start, min(start + self.micro_batch_prompts, len(prompts)))
                groups = self._generate_micro_batch(
                    [(i, list(prompts[i])) for i in indices], params, base_seed, stop_ids
                )
                for i, group in zip(indices, groups, strict=True):
                    results[i] = group
                    if on_group is not None:
                        on_group(i, group)
        finally:
            self.model.train(was_training)
        return results

    @torch.no_grad()
    def _generate_micro_batch(
        self,
        prompts: list[tuple[int, list[int]]],
        params: SamplingParams,
        base_seed: int,
        stop_ids: set[int],
    ) -> list[list[Completion]]:
        device = next(self.model.parameters()).device
        rows = [_Row(i, j, ids) for i, ids in prompts for j in range(params.n)]
        if self._stopping():
            return _finish_groups(rows, params.n, self.weight_version)
        generators = None
        if not params.greedy:
            generators = [
                torch.Generator(device=device).manual_seed(_mix(base_seed, r.prompt_index, r.j))
                for r in rows
            ]

        # Prefill: left-padded prompts, positions over real tokens.
        width = max(len(r.prompt_ids) for r in rows)
        input_ids = torch.full((len(rows), width), self.pad_token_id, dtype=torch.long)  # [R, P]
        attention_mask = torch.zeros((len(rows), width), dtype=torch.long)  # [R, P]
        for k, r in enumerate(rows):
            input_ids[k, width - len(r.prompt_ids) :] = torch.tensor(r.prompt_ids)
            attention_mask[k, width - len(r.prompt_ids) :] = 1
        input_ids, attention_mask = input_ids.to(device), attention_mask.to(device)
        positions = position_ids_from_mask(attention_mask)  # [R, P]
        cache = DynamicCache(config=self.model.config)
        out = self.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=positions,
            past_key_values=cache,
            use_cache=True,
            logits_to_keep=1,
        )
        active = list(range(len(rows)))  # rows still generating, in batch order
        last_position = positions[:, -1:]  # [R, 1]
        max_stop_len = max((len(s) for s in params.stop), default=0)

        for _ in range(params.max_new_tokens):
            if self._stopping():
                for k in active:
                    rows[k].finish = "abort"
                break
            logits = out.logits[:, -1, :].float()  # [A, V]
            tokens, logprobs = sample_tokens(
                logits, params, None if generators is None else [generators[k] for k in active]
            )  # [A], [A]
            keep: list[int] = []
            for b, k in enumerate(active):
                row, token = rows[k], int(tokens[b])
                row.token_ids.append(token)
                row.logprobs.append(float(logprobs[b]))
                if token in stop_ids:
                    row.finish, row.matched = "stop", token
                elif max_stop_len and self._hit_stop_string(row, params.stop):
                    row.finish = "stop"
                elif len(row.token_ids) >= params.max_new_tokens:
                    row.finish = "length"
                else:
                    keep.append(b)
            if not keep:
                break
            if len(keep) < len(active):
                index = torch.tensor(keep, device=device)
                cache.batch_select_indices(index)
                attention_mask, last_position = attention_mask[index], last_position[index]
                tokens = tokens[index]
                active = [active[b] for b in keep]
            attention_mask = torch.cat(
                [attention_mask, attention_mask.new_ones((len(active), 1))], dim=1
            )  # [A, P + steps]
            last_position = last_position + 1  # [A, 1]
            out = self.model(
                input_ids=tokens.unsqueeze(-1),
                attention_mask=attention_mask,
                position_ids=last_position,
                past_key_values=cache,
                use_cache=True,
            )
        for row in rows:
            if row.text is None:
                row.text = self.tokenizer.decode(row.token_ids, skip_special_tokens=True)
        return _finish_groups(rows, params.n, self.weight_version)

    def _hit_stop_string(self, row: _Row, stops: tuple[str, ...]) -> bool:
        """Whether the completion's text now contains a stop string; if so, cut the text
        before the earliest one (the tokens keep the one that completed it)."""
        text = self.tokenizer.decode(row.token_ids, skip_special_tokens=True)
        found = [(text.find(s), s) for s in stops if s in text]
        if not found:
            return False
        cut, matched = min(found)
        row.text, row.matched = text[:cut], matched
        return True


def sample_tokens(
    logits: torch.Tensor,  # [A, V] float32
    params: SamplingParams,
    generators: list[torch.Generator] | None,
) -> tuple[torch.Tensor, torch.Tensor]:  # tokens [A] long, logprobs [A] float32
    """Draw one token per row and return it with its logprob (see `base.py`: at
    `params.logprob_temperature`, full vocabulary, before top-k/top-p truncation)."""
    if params.greedy:
        tokens = logits.argmax(-1)  # [A]
    else:
        assert generators is not None and len(generators) == logits.shape[0]
        probs = torch.softmax(logits / params.temperature, dim=-1)  # [A, V]
        probs = truncate_top_k_top_p(probs, params.top_k, params.top_p)  # [A, V]
        tokens = torch.cat(
            [torch.multinomial(probs[b], 1, generator=g) for b, g in enumerate(generators)]
        )  # [A]
    return tokens, gather_logprobs(logits, tokens, params.logprob_temperature)


def truncate_top_k_top_p(
    probs: torch.Tensor,  # [A, V], rows sum to 1
    top_k: int,
    top_p: float,
) -> torch.Tensor:  # [A, V], zeros outside the kept set (not renormalised)
    """Zero all but the `top_k` most likely tokens (-1: all), then all but the smallest
    prefix of the rest (by descending probability) whose mass reaches `top_p`. The most
    likely token is always kept."""
    if top_k == -1 and top_p >= 1.0:
        return probs
    sorted_probs, order = probs.sort(dim=-1, descending=True)  # [A, V]
    drop = torch.zeros_like(sorted_probs, dtype=torch.bool)
    if top_k != -1:
        drop[:, top_k:] = True
    if top_p < 1.0:
        kept = sorted_probs.masked_fill(drop, 0.0)
        mass_before = kept.cumsum(-1) - kept  # mass of strictly more likely kept tokens
        drop |= mass_before >= top_p * kept.sum(-1, keepdim=True)
    drop[:, 0] = False
    return torch.zeros_like(probs).scatter(-1, order, sorted_probs.masked_fill(drop, 0.0))


class _Row:
    """Decoding state of one (prompt, sample) row."""

    __slots__ = (
        "prompt_index",
        "j",
        "prompt_ids",
        "token_ids",
        "logprobs",
        "finish",
        "matched",
        "text",
    )

    def __init__(self, prompt_index: int, j: int, prompt_ids: list[int]) -> None:
        self.prompt_index, self.j, self.prompt_ids = prompt_index, j, prompt_ids
        self.token_ids: list[int] = []
        self.logprobs: list[float] = []
        self.finish: FinishReason = "abort"
        self.matched: str | int | None = None
        self.text: str | None = None


def _finish_groups(rows: list[_Row], n: int, weight_version: int) -> list[list[Completion]]:
    completions = [
        Completion(
            prompt_index=r.prompt_index,
            sample_index=r.j,
            prompt_ids=r.prompt_ids,
            token_ids=r.token_ids,
            text=r.text or "",
            logprobs=r.logprobs,
            finish_reason=r.finish,
            weight_version=weight_version,
            matched_stop=r.matched,
        )
        for r in rows
    ]
    return [completions[k : k + n] for k in range(0, len(completions), n)]


def _eos_ids(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> set[int]:
    ids: set[int] = set()
    for source in (
        tokenizer.eos_token_id,
        getattr(getattr(model, "generation_config", None), "eos_token_id", None),
    ):
        if isinstance(source, int):
            ids.add(source)
        elif source is not None:
            ids.update(int(t) for t in source)
    return ids


def _mix(*values: int) -> int:
    """A 63-bit seed from integers (splitmix64 steps): one stream per (seed, prompt, sample)."""
    h = 0x9E3779B97F4A7C15
    for v in values:
        h = (h ^ (v & _MASK64)) & _MASK64
        h = ((h ^ (h >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
        h = ((h ^ (h >> 27)) * 0x94D049BB133111EB) & _MASK64
        h ^= h >> 31
    return h & ((1 << 63) - 1)
