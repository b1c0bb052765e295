"""Chosen/rejected pairs for the rm and dpo recipes: loading, splitting, tensors.

A row is `{id?, prompt, chosen, rejected}` (the column names are `data.*_field`) in a
.jsonl or .parquet file; `prompt` is text or chat messages, as for the other recipes.
The held-out split and the batching are `data.py`'s (`split_eval` by a hash of the id,
`PromptBatches` for a resumable order).

Two renderings, one per recipe, because the two models read the text differently:

- The reward model scores a whole conversation, `render_conversation`: the chat
  template over [user prompt, assistant completion] (no generation prompt), or, with no
  template, the prompt text followed by the completion and the EOS token. This is what a
  server scoring (prompt, completion) with the same tokenizer naturally renders, so the
  scores `referee serve reward-model` gives are the ones the recipe trained and reported.
- The DPO policy is scored on the completion it would generate, `policy_pair_tensors`:
  the prompt rendered with the generation prompt (as the SFT and GRPO recipes do), then
  the completion and EOS, with the loss's mask on the completion and EOS only.

Sequences are right-padded. The reward model's score is read at the last real token;
`score_tensors` refuses a text in which the pad token occurs as a real token (the Hugging
Face sequence-classification head finds the last token by looking for the pad id, so
such a text would be scored at the wrong place, differently in every batch).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from referee.trainer.data import (
    DataError,
    Message,
    PromptRow,
    _read_jsonl,
    _read_parquet,
    _to_row,
    drop_long_prompts,
    split_eval,
)

__all__ = [
    "PairTensors",
    "drop_long_pairs",
    "PreferencePair",
    "load_pair_splits",
    "load_pairs",
    "policy_pair_tensors",
    "render_conversation",
    "score_tensors",
]


@dataclass(frozen=True)
class PreferencePair:
    """One prompt with a preferred and a dispreferred completion."""

    id: str
    """Unique within the file; the row number when the data has no ids."""

    prompt: str | list[Message]
    """Plain text, or chat messages ({role, content})."""

    chosen: str
    """The preferred completion."""

    rejected: str
    """The dispreferred completion."""

    @property
    def prompt_row(self) -> PromptRow:
        """The prompt as a `PromptRow` (what the prompt renderers take)."""
        return PromptRow(self.id, self.prompt)


def load_pairs(
    path: str | Path,
    *,
    id_field: str = "id",
    prompt_field: str = "prompt",
    chosen_field: str = "chosen",
    rejected_field: str = "rejected",
) -> list[PreferencePair]:
    """Reads pairs from a .jsonl or .parquet file, in file order. Ids must be unique;
    `chosen` and `rejected` must be text and differ. A bad row fails with its place."""
    p = Path(path)
    if not p.is_file():
        raise DataError(f"{p}: no such file")
    if p.suffix == ".jsonl":
        raws = _read_jsonl(p)
    elif p.suffix == ".parquet":
        raws = _read_parquet(p, prompt_field, chosen_field)
    else:
        raise DataError(f"{p}: expected a .jsonl or .parquet file")
    names: dict[str, str | None] = dict(
        id=id_field, prompt=prompt_field, reference=None, metadata=None, completion=None
    )
    pairs: list[PreferencePair] = []
    first_seen: dict[str, str] = {}
    for index, (where, raw) in enumerate(raws):
        row = _to_row(raw, index, where, names)  # checks the object, its id and prompt
        texts = []
        for field in (chosen_field, rejected_field):
            value = raw.get(field)
            if not isinstance(value, str):
                have = ", ".join(map(str, raw))
                raise DataError(
                    f"{where}: field {field!r} must be text (a completion), got {value!r}; "
                    f"the row has: {have} (set data.chosen_field / data.rejected_field)"
                )
            texts.append(value)
        if texts[0] == texts[1]:
            raise DataError(f"{where}: chosen and rejected are the same text; drop the row")
        if row.id in first_seen:
            raise DataError(
                f"{where}: id {row.id!r} repeats {first_seen[row.id]}; ids must be unique"
            )
        first_seen[row.id] = where
        pairs.append(PreferencePair(row.id, row.prompt, texts[0], texts[1]))
    if not pairs:
        raise DataError(f"{p}: no rows")
    return pairs


def load_pair_splits(
    train_path: str | Path,
    *,
    eval_path: str | Path | None = None,
    eval_fraction: float = 0.0,
    **fields: Any,
) -> tuple[list[PreferencePair], list[PreferencePair]]:
    """(train, held-out) pairs: held-out from its own file, or `eval_fraction` of the
    training file chosen by a hash of the ids (`data.split_eval`)."""
    pairs = load_pairs(train_path, **fields)
    if eval_path is not None:
        return pairs, load_pairs(eval_path, **fields)
    return split_eval(pairs, eval_fraction)


# --- rendering and tensors -------------------------------------------------------------


def render_conversation(
    tokenizer: Any,
    prompt: str | list[Message],
    completion: str,
    *,
    use_chat_template: bool = True,
    system_prompt: str | None = None,
) -> str:
    """The text a reward model scores for (prompt, completion): the chat template over
    the prompt's messages and the completion as the assistant's turn, or without a
    template `prompt + completion + eos`. Tokenize it with `add_special_tokens` only
    when no template was used (a template writes its own special tokens)."""
    row = PromptRow("", prompt)
    if use_chat_template and getattr(tokenizer, "chat_template", None):
        messages = (
            list(prompt) if isinstance(prompt, list) else [{"role": "user", "content": prompt}]
        )
        if system_prompt and not any(m["role"] == "system" for m in messages):
            messages.insert(0, {"role": "system", "content": system_prompt})
        messages.append({"role": "assistant", "content": completion})
        return tokenizer.apply_chat_template(messages, tokenize=False)
    text = row.prompt_text
    if system_prompt:
        text = f"{system_prompt}\n\n{text}"
    return text + completion + (tokenizer.eos_token or "")


@dataclass
class PairTensors:
    """B pairs as 2B right-padded sequences: rows [0, B) chosen, [B, 2B) rejected."""

    input_ids: torch.Tensor  # [2B, T] long, pad id after each row's end
    attention_mask: torch.Tensor  # [2B, T] long, 1 on real tokens
    completion_mask: torch.Tensor  # [2B, T] bool, True on completion (+ EOS) tokens

    @property
    def n_pairs(self) -> int:
        return self.input_ids.shape[0] // 2


def _pad(seqs: Sequence[list[int]], starts: Sequence[int], pad: int) -> PairTensors:
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad, dtype=torch.long)  # [2B, T]
    attn = torch.zeros((len(seqs), width), dtype=torch.long)  # [2B, T]
    target = torch.zeros((len(seqs), width), dtype=torch.bool)  # [2B, T]
    for i, (s, start) in enumerate(zip(seqs, starts, strict=True)):
        ids[i, : len(s)] = torch.tensor(s)
        attn[i, : len(s)] = 1
        target[i, start : len(s)] = True
    return PairTensors(ids, attn, target)


def score_tensors(
    tokenizer: Any,
    pairs: Sequence[PreferencePair],
    *,
    use_chat_template: bool = True,
    system_prompt: str | None = None,
) -> PairTensors:
    """The reward model's input for `pairs`: each side's `render_conversation`, tokenized
    and right-padded with the tokenizer's pad id (`completion_mask` is the attention
    mask). Raises ValueError when a text contains the pad token itself."""
    templated = use_chat_template and bool(getattr(tokenizer, "chat_template", None))
    pad = tokenizer.pad_token_id
    seqs: list[list[int]] = []
    for side in ("chosen", "rejected"):
        for pair in pairs:
            text = render_conversation(
                tokenizer,
                pair.prompt,
                getattr(pair, side),
                use_chat_template=use_chat_template,
                system_prompt=system_prompt,
            )
            ids = tokenizer(text, add_special_tokens=not templated)["input_ids"]
            if pad in ids:
                raise ValueError(
                    f"pair {pair.id!r}: the {side} text contains the pad token "
                    f"{tokenizer.pad_token!r}, which would end the sequence for the score head; "
                    "use a tokenizer whose pad token never occurs in text"
                )
            seqs.append(ids)
    return _pad(seqs, [0] * len(seqs), pad)


def policy_pair_tensors(
    tokenizer: Any, prompts: Sequence[list[int]], pairs: Sequence[PreferencePair]
) -> PairTensors:
    """The DPO policy's input: rendered prompt ids (`prompts[i]` for `pairs[i]`), then
    each side's completion and EOS; `completion_mask` marks completion and EOS."""
    eos = tokenizer.eos_token_id
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos
    seqs: list[list[int]] = []
    starts: list[int] = []
    for side in ("chosen", "rejected"):
        for prompt, pair in zip(prompts, pairs, strict=True):
            completion = tokenizer(getattr(pair, side), add_special_tokens=False)["input_ids"]
            seqs.append(list(prompt) + completion + [eos])
            starts.append(len(prompt))
    return _pad(seqs, starts, pad)


def drop_long_pairs(
    pairs: Sequence[PreferencePair],
    tokenizer: Any,
    max_tokens: int,
    use_chat_template: bool,
    system_prompt: str | None = None,
) -> tuple[list[PreferencePair], int]:
    """(kept pairs, number dropped): `data.drop_long_prompts` on the pairs' prompts."""
    kept, dropped = drop_long_prompts(
        [p.prompt_row for p in pairs], tokenizer, max_tokens, use_chat_template, system_prompt
    )
    ids = {r.id for r in kept}
    return [p for p in pairs if p.id in ids], dropped
