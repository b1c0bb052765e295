"""Tiny reward-model directories built in code, for tests, the benchmark and trying
`referee serve reward-model` without downloading anything.

- ``llama``: `LlamaForSequenceClassification` (2 layers, hidden 64) over the
  character-level tokenizer of `referee.trainer.tiny`, with a chat template whose text
  ends in the end-of-turn token and with pad == that token: the setting in which
  transformers' own pooling (search input_ids for the pad id) reads the wrong position.
- ``bert``: `BertForSequenceClassification` (first-token pooling) over a word-level or
  character-level tokenizer with BERT's ``[CLS] a [SEP] b [SEP]`` pair template and no
  chat template; `bench/reward_model.py` uses it (hidden 64, 6 layers by default).

Weights are random (seeded); the head is scaled up so scores spread over about +-1 and
a 1e-5 comparison means something. The directory loads with `from_pretrained` like any
downloaded model.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any, Literal

import torch
from tokenizers import Regex, Tokenizer, models, pre_tokenizers, processors
from transformers import (
    BertConfig,
    BertForSequenceClassification,
    LlamaConfig,
    LlamaForSequenceClassification,
    PreTrainedTokenizerFast,
)

from referee.trainer.tiny import DEFAULT_ALPHABET, IM_END, build_tokenizer

#: `<|im_start|>{role}\n{content}<|im_end|>` per turn, joined by newlines, with nothing
#: after the last turn's end token (as in Llama-3-style templates).
EOT_CHAT_TEMPLATE = (
    "{%- for message in messages %}"
    "{%- if not loop.first %}{{- '\\n' }}{%- endif %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' }}"
    "{%- endfor %}"
)
BERT_SPECIALS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]")


def bert_tokenizer(words: Iterable[str] | None = None, model_max_length: int = 512) -> PreTrainedTokenizerFast:
    """Word-level over `words` (split on whitespace and punctuation), or one token per
    character of the default alphabet when `words` is None; BERT's special tokens."""
    vocab = {t: i for i, t in enumerate(BERT_SPECIALS)}
    if words is None:
        for ch in DEFAULT_ALPHABET:
            vocab.setdefault(ch, len(vocab))
        pre = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    else:
        for w in words:
            vocab.setdefault(w, len(vocab))
        for ch in DEFAULT_ALPHABET.strip():
            vocab.setdefault(ch, len(vocab))
        pre = pre_tokenizers.Whitespace()
    backend = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    backend.pre_tokenizer = pre
    cls, sep = vocab["[CLS]"], vocab["[SEP]"]
    backend.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", cls), ("[SEP]", sep)])
    backend.add_special_tokens(list(BERT_SPECIALS))
    return PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="[PAD]", unk_token="[UNK]",
                                   cls_token="[CLS]", sep_token="[SEP]", model_max_length=model_max_length)


def build_tiny_reward_model(
    path: str | Path,
    arch: Literal["llama", "bert"] = "llama",
    *,
    seed: int = 0,
    words: Iterable[str] | None = None,
    head_scale: float = 10.0,
    **overrides: Any,
) -> Path:
    """Writes a random single-logit sequence-classification model and its tokenizer to
    `path`; `overrides` change config fields (e.g. ``num_hidden_layers=4``)."""
    path = Path(path)
    if arch == "llama":
        tokenizer: PreTrainedTokenizerFast = build_tokenizer(chat_template=EOT_CHAT_TEMPLATE)
        tokenizer.pad_token = IM_END  # pad == end of turn: the RewardBench #137 setting
        tokenizer.model_max_length = 1024
        fields: dict[str, Any] = dict(
            vocab_size=len(tokenizer), hidden_size=64, intermediate_size=192, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
            rms_norm_eps=1e-6, num_labels=1, pad_token_id=tokenizer.pad_token_id,
            eos_token_id=tokenizer.eos_token_id, bos_token_id=None)
        fields.update(overrides)
        config: Any = LlamaConfig(**fields)
        model_cls: Any = LlamaForSequenceClassification
    elif arch == "bert":
        tokenizer = bert_tokenizer(words)
        fields = dict(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128,
                      num_hidden_layers=2, num_attention_heads=4, max_position_embeddings=512,
                      num_labels=1, pad_token_id=tokenizer.pad_token_id)
        fields.update(overrides)
        config = BertConfig(**fields)
        model_cls = BertForSequenceClassification
    else:
        raise ValueError(f"unknown arch {arch!r}; choose llama or bert")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = model_cls(config)
        head = model.score if arch == "llama" else model.classifier
        with torch.no_grad():
            head.weight.mul_(head_scale)
    path.mkdir(parents=True, exist_ok=True)
    model.float().eval().save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path
