"""A sequence-classification reward model: loading it, turning a (prompt, completion)
into token ids, and scoring a padded batch of them.

The pieces are plain functions so that the service, the benchmark and a training recipe
(which must encode pairs exactly as the server will) share one definition:

- `encode_pair`: the chat template when the tokenizer has one (the prompt as the user
  turn, or the prompt's own messages, then the completion as the assistant turn), else
  the tokenizer's text-pair encoding of (prompt, completion) with its special tokens
  (``[CLS] p [SEP] c [SEP]`` for a BERT-style tokenizer); then the truncation policy.
- `score_batch`: one forward over right-padded ids with an attention mask.

**Batch invariance** (RewardBench #137 is the bug this avoids). transformers' decoder
sequence-classification heads (`LlamaForSequenceClassification` and kin) find the token
to read by searching `input_ids` for `pad_token_id`. When pad == eos and the text ends
with eos (most chat templates), or with the wrong padding side, the score is read at
the wrong position, and it changes with what else is in the batch. Here, for a model
whose head is a per-token `score` layer (the decoder kind), the head's per-token output
is captured and the score is read at the last position the attention mask marks real;
position ids also come from the mask, so left and right padding give the same score.
For any other head (BERT-like encoders pool the first token), the model's own logits are
used with right padding, where the first token is always real.

What is not protected: float results still differ in the last bits between batch shapes
(different matmul blocking), about 1e-6 in fp32 and 1e-2 in bf16; and a model whose
head is not `score` but still pools the last token by pad id is treated as an encoder.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch

Truncation = Literal["left", "right", "error"]
Pooling = Literal["last_token", "model"]
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


class TooLong(ValueError):
    """The sample does not fit in `max_length` tokens under the `error` policy."""


@dataclass(frozen=True)
class Encoded:
    """One sample's model input after the truncation policy."""

    ids: list[int]
    """Token ids fed to the model (special tokens included)."""

    type_ids: list[int] | None
    """Segment ids for text-pair encodings (BERT's token_type_ids); None with a chat template."""

    full_tokens: int
    """Tokens before truncation."""

    @property
    def truncated(self) -> bool:
        return self.full_tokens > len(self.ids)


@dataclass
class RewardModel:
    """A loaded model with what scoring needs to know about it."""

    model: Any
    """The torch module; None in a server process whose forwards run in a child process
    (`rm_process.ModelProcess`, which holds the module there)."""

    tokenizer: Any
    device: torch.device
    pooling: Pooling
    max_positions: int | None
    """The model's position limit (None when it has none); `max_length` may not exceed it."""

    pass_type_ids: bool
    """Whether the forward takes `token_type_ids`."""

    pad_id: int = 0
    """`pad_id_of(tokenizer)`, looked up once (the tokenizer's attribute lookup is slow)."""

    architecture: str = ""
    """The model's class name, e.g. ``LlamaForSequenceClassification`` (for descriptions)."""

    @property
    def chat(self) -> bool:
        return bool(getattr(self.tokenizer, "chat_template", None))


def load_reward_model(path: str | Path, device: str = "cpu", dtype: str = "fp32") -> RewardModel:
    """Loads a Hugging Face sequence-classification directory with a single-logit head.

    Raises ValueError for anything the caller can fix (no such directory, more than one
    label, a tokenizer without a fast backend, CUDA asked for but absent).
    """
    from transformers import AutoModelForSequenceClassification

    path = Path(path)
    if not (path / "config.json").is_file():
        raise ValueError(f"{path} is not a model directory (no config.json)")
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} asked for, but CUDA is not available")
    model = AutoModelForSequenceClassification.from_pretrained(path, dtype=DTYPES[dtype])
    if model.config.num_labels != 1:
        raise ValueError(f"{path}: a reward model has one output (num_labels 1), this one has "
                         f"{model.config.num_labels}; the score would be ambiguous")
    tokenizer = load_tokenizer(path)
    score = getattr(model, "score", None)
    pooling: Pooling = "last_token" if isinstance(score, torch.nn.Linear) else "model"
    text_cfg = model.config.get_text_config()
    if pooling == "last_token" and getattr(text_cfg, "pad_token_id", None) is None:
        # Only so the model's own pooling (ignored, see module doc) accepts batches > 1.
        text_cfg.pad_token_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    max_positions = getattr(text_cfg, "max_position_embeddings", None)
    params = inspect.signature(model.forward).parameters
    model.to(dev).eval()
    return RewardModel(model, tokenizer, dev, pooling, max_positions, "token_type_ids" in params,
                       pad_id_of(tokenizer), type(model).__name__)


def load_tokenizer(path: str | Path) -> Any:
    """The directory's tokenizer, set up for `encode_pair` (which truncates and pads by
    itself). Raises ValueError when it has no fast (tokenizers) backend."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path)
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        raise ValueError(f"{path}: the tokenizer has no fast (tokenizers) backend; save a fast one")
    backend.no_truncation()
    backend.no_padding()
    return tokenizer


def pad_id_of(tokenizer: Any) -> int:
    """The id padding positions hold: the tokenizer's pad token, else 0 (masked out anyway)."""
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0


def default_max_length(rm: RewardModel) -> int:
    """The tokenizer's `model_max_length` capped by the model's position limit (or 4096)."""
    limit = rm.max_positions or 4096
    tok_limit = getattr(rm.tokenizer, "model_max_length", None)
    if isinstance(tok_limit, int) and 0 < tok_limit < limit:
        return tok_limit
    return limit


def encode_pair(
    rm: RewardModel,
    prompt: str | Sequence[dict[str, str]],
    completion: str,
    max_length: int,
    truncation: Truncation = "left",
) -> Encoded:
    """Token ids for one (prompt, completion) under the truncation policy.

    `left` drops tokens from the start (the prompt goes first; the completion's end,
    where a decoder reads its score, is kept), `right` drops them from the end, `error`
    raises `TooLong`. Special tokens of a text-pair encoding are always kept.
    """
    backend = rm.tokenizer.backend_tokenizer
    if rm.chat:
        messages = ([{"role": "user", "content": prompt}] if isinstance(prompt, str) and prompt
                    else [dict(m) for m in prompt] if not isinstance(prompt, str) else [])
        messages.append({"role": "assistant", "content": completion})
        text = rm.tokenizer.apply_chat_template(messages, tokenize=False)
        ids = backend.encode(text, add_special_tokens=False).ids
        full = len(ids)
        if full > max_length:
            _refuse_if_error(truncation, full, max_length)
            ids = ids[full - max_length:] if truncation == "left" else ids[:max_length]
        return Encoded(list(ids), None, full)

    prompt_text = prompt if isinstance(prompt, str) else "\n".join(m.get("content", "") for m in prompt)
    p = backend.encode(prompt_text, add_special_tokens=False)
    c = backend.encode(completion, add_special_tokens=False)
    special = backend.num_special_tokens_to_add(True)
    full = len(p.ids) + len(c.ids) + special
    if full > max_length:
        _refuse_if_error(truncation, full, max_length)
        room = max_length - special
        if room < 1:
            raise TooLong(f"max_length {max_length} leaves no room beside {special} special tokens")
        if truncation == "left":  # drop the prompt's start, then the completion's
            keep_c = min(len(c.ids), room)
            p.truncate(room - keep_c, direction="left")
            c.truncate(keep_c, direction="left")
        else:  # drop the completion's end, then the prompt's
            keep_p = min(len(p.ids), room)
            p.truncate(keep_p, direction="right")
            c.truncate(room - keep_p, direction="right")
    enc = backend.post_process(p, c, add_special_tokens=True)
    return Encoded(list(enc.ids), list(enc.type_ids), full)


def _refuse_if_error(truncation: Truncation, full: int, max_length: int) -> None:
    if truncation == "error":
        raise TooLong(f"{full} tokens > max_length {max_length} (truncation policy: error)")


@torch.inference_mode()
def score_batch(rm: RewardModel, items: Sequence[Encoded], padding_side: str = "right") -> list[float]:
    """One forward over `items`, padded with an attention mask; one raw score each.

    Scores do not depend on which other items share the batch, nor on `padding_side`
    for last-token models (an encoder's first-token pooling needs "right").
    """
    if not items:
        return []
    if padding_side not in ("left", "right") or (padding_side == "left" and rm.pooling != "last_token"):
        raise ValueError(f"padding_side {padding_side!r} is not supported for {rm.pooling} pooling")
    lengths = [len(e.ids) for e in items]
    width = max(lengths)
    # One tensor per input, from padded lists: filling row by row took a few small tensor
    # ops per sample (a quarter of the forward thread's Python time at batch 32).
    ids = _padded([e.ids for e in items], width, rm.pad_id, padding_side)  # [B, T]
    n = torch.tensor(lengths)[:, None]  # [B, 1]
    cols = torch.arange(width)  # [T]
    mask = (cols < n) if padding_side == "right" else (cols >= width - n)  # [B, T]
    kwargs: dict[str, Any] = {"input_ids": ids.to(rm.device), "attention_mask": mask.long().to(rm.device)}
    if rm.pass_type_ids and any(e.type_ids is not None for e in items):
        types = [e.type_ids if e.type_ids is not None else [0] * len(e.ids) for e in items]
        kwargs["token_type_ids"] = _padded(types, width, 0, padding_side).to(rm.device)  # [B, T]
    if rm.pooling == "model":
        logits = rm.model(**kwargs).logits  # [B, 1]
        return logits[:, 0].float().cpu().tolist()

    captured: list[torch.Tensor] = []
    hook = rm.model.score.register_forward_hook(lambda _m, _i, out: captured.append(out))
    try:
        kwargs["position_ids"] = (kwargs["attention_mask"].cumsum(-1) - 1).clamp(min=0)  # [B, T]
        rm.model(**kwargs)
    finally:
        hook.remove()
    per_token = captured[-1][..., 0]  # [B, T]
    positions = torch.arange(width, device=per_token.device)  # [T]
    last = (positions * kwargs["attention_mask"]).argmax(-1)  # [B]: the last real token
    return per_token[torch.arange(len(items), device=per_token.device), last].float().cpu().tolist()


def _padded(rows: list[list[int]], width: int, fill: int, side: str) -> torch.Tensor:
    """`rows` padded with `fill` to `width` on `side`, as one [len(rows), width] tensor."""
    if side == "right":
        return torch.tensor([r + [fill] * (width - len(r)) for r in rows], dtype=torch.long)
    return torch.tensor([[fill] * (width - len(r)) + r for r in rows], dtype=torch.long)
