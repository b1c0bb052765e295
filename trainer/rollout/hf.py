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
A row's tokens depend only on its prompt and its sampling stream, never on the other
rows (up to float noise in the logits from padding and batch shape), so callers may
merge unrelated prompts into one call: the rollout server does, giving each prompt its
own seed (`seeds`) and its own cancel event (`cancels`).
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
        seeds: Sequence[int] | None = None,
        cancels: Sequence[threading.Event | None] | None = None,
    ) -> list[list[Completion]]:
        """See `RolloutEngine.generate`. Setting `cancel` ends this call early like
        `close` does (unfinished completions get finish_reason "abort"), but leaves the
        engine usable.

        For callers that merge unrelated requests into one call (the rollout server):
        `seeds`, one per prompt, replaces `params.seed` for that prompt, whose rows then
        sample exactly as `generate([prompt], replace(params, seed=seed))` would.
        `cancels`, one per prompt (or None), ends only that prompt's rows when set."""
        if self._closed:
            raise RuntimeError("HFEngine is closed")
        for i, prompt in enumerate(prompts):
            if len(prompt) == 0:
                raise ValueError(f"prompt {i} is empty; every prompt needs at least one token")
        for name, given in (("seeds", seeds), ("cancels", cancels)):
            if given is not None and len(given) != len(prompts):
                raise ValueError(f"{name} has {len(given)} entries for {len(prompts)} prompts")
        if not self._busy.acquire(blocking=False):
            raise RuntimeError("HFEngine.generate is already running; it runs one call at a time")
        self._cancel = cancel
        try:
            return self._generate(prompts, params, on_group, seeds, cancels)
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
        seeds: Sequence[int] | None,
        cancels: Sequence[threading.Event | None] | None,
    ) -> list[list[Completion]]:
        # Prompt i's rows draw from streams _mix(seed, index, j): (call seed, i), or
        # (seeds[i], 0) as if the prompt were alone in a call with that seed.
        if seeds is not None:
            streams = [(int(s), 0) for s in seeds]
        else:
            if params.seed is not None:
                base_seed = params.seed
            else:  # follows torch.manual_seed
                base_seed = int(torch.randint(0, 2**62, (1,)).item())
            streams = [(base_seed, i) for i in range(len(prompts))]
        row_cancels = list(cancels) if cancels is not None else [None] * len(prompts)
        stop_ids = self.eos_token_ids | set(params.stop_token_ids)
        results: list[list[Completion]] = [[] for _ in prompts]
        was_training = self.model.training
        self.model.eval()
        try:
            for start in range(0, len(prompts), self.micro_batch_prompts):
                indices = range(start, min(start + self.micro_batch_prompts, len(prompts)))
                rows = [
                    _Row(i, j, list(prompts[i]), _mix(*streams[i], j), row_cancels[i])
                    for i in indices
                    for j in range(params.n)
                ]
                groups = self._generate_micro_batch(rows, params, stop_ids)
                for i, group in zip(indices, groups, strict=True):
                    results[i] = group
                    if on_group is not None:
                        on_group(i, group)
        finally:
            self.model.train(was_training)
        return results

    @torch.no_grad()
    def _generate_micro_batch(
        self, rows: list[_Row], params: SamplingParams, stop_ids: set[int]
    ) -> list[list[Completion]]:
        device = next(self.model.parameters()).device
        active = [k for k, r in enumerate(rows) if not r.cancelled()]  # rows in the batch
        if self._stopping() or not active:
            return _finish_groups(rows, params.n, self.weight_version)
        generators = None
        if not params.greedy:
            generators = [torch.Generator(device=device).manual_seed(r.seed) for r in rows]

        # Prefill: left-padded prompts, positions over real tokens.
        width = max(len(rows[k].prompt_ids) for k in active)
        input_ids = torch.full((len(active), width), self.pad_token_id, dtype=torch.long)  # [A, P]
        attention_mask = torch.zeros((len(active), width), dtype=torch.long)  # [A, P]
        for b, k in enumerate(active):
            ids = rows[k].prompt_ids
            input_ids[b, width - len(ids) :] = torch.tensor(ids)
            attention_mask[b, width - len(ids) :] = 1
        input_ids, attention_mask = input_ids.to(device), attention_mask.to(device)
        positions = position_ids_from_mask(attention_mask)  # [A, P]
        batch = _Batch(DynamicCache(config=self.model.config), attention_mask, positions[:, -1:])
        out = self.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=positions,
            past_key_values=batch.cache,
            use_cache=True,
            logits_to_keep=1,
        )
        logits = out.logits[:, -1, :].float()  # [A, V]
        max_stop_len = max((len(s) for s in params.stop), default=0)

        for _ in range(params.max_new_tokens):
            if self._stopping():
                break
            live = [b for b, k in enumerate(active) if not rows[k].cancelled()]
            if len(live) < len(active):  # some prompts were cancelled: drop their rows
                if not live:
                    break
                logits = logits[torch.tensor(live, device=device)]
                active = batch.select(active, live)
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
                tokens = tokens[torch.tensor(keep, device=device)]
                active = batch.select(active, keep)
            batch.extend()
            out = self.model(
                input_ids=tokens.unsqueeze(-1),
                attention_mask=batch.attention_mask,
                position_ids=batch.last_position,
                past_key_values=batch.cache,
                use_cache=True,
            )
            logits = out.logits[:, -1, :].float()  # [A, V]
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
        "seed",
        "cancel",
        "token_ids",
        "logprobs",
        "finish",
        "matched",
        "text",
    )

    def __init__(
        self,
        prompt_index: int,
        j: int,
        prompt_ids: list[int],
        seed: int,
        cancel: threading.Event | None = None,
    ) -> None:
        self.prompt_index, self.j, self.prompt_ids = prompt_index, j, prompt_ids
        self.seed = seed  # of this row's sampling stream
        self.cancel = cancel  # ends this row alone when set
        self.token_ids: list[int] = []
        self.logprobs: list[float] = []
        self.finish: FinishReason = "abort"  # until it stops or reaches the length cap
        self.matched: str | int | None = None
        self.text: str | None = None

    def cancelled(self) -> bool:
        return self.cancel is not None and self.cancel.is_set()


class _Batch:
    """The decoding state of the rows still in the batch, in batch order."""

    def __init__(
        self,
        cache: DynamicCache,
        attention_mask: torch.Tensor,  # [A, P + steps]
        last_position: torch.Tensor,  # [A, 1]
    ) -> None:
        self.cache, self.attention_mask, self.last_position = cache, attention_mask, last_position

    def select(self, active: list[int], keep: list[int]) -> list[int]:
        """Keep batch positions `keep` (ascending); returns the row ids still active."""
        index = torch.tensor(keep, device=self.attention_mask.device)
        self.cache.batch_select_indices(index)
        self.attention_mask = self.attention_mask[index]
        self.last_position = self.last_position[index]
        return [active[b] for b in keep]

    def extend(self) -> None:
        """One more position for the token about to be fed."""
        mask = self.attention_mask
        self.attention_mask = torch.cat([mask, mask.new_ones((mask.shape[0], 1))], dim=1)
        self.last_position = self.last_position + 1


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
