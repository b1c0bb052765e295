"""Tiny Llama/Qwen-style causal LMs and a character-level tokenizer, built in code.

The quickstart and the tests never download anything: the tokenizer is a
`tokenizers` word-level model over single characters (plus the chat special tokens),
wrapped as a `transformers` fast tokenizer with a Qwen-style chat template, and the
model is a `LlamaForCausalLM` or `Qwen2ForCausalLM` built from a config with seeded
initialisation. Both save and load as an ordinary Hugging Face directory
(`save_pretrained` / `from_pretrained`), so every other part of the project (the
trainer, `referee serve rollout`, export) treats them like any downloaded model.

Character level is deliberate: for arithmetic and other small verifiable tasks every
digit is its own token, so the model never has to learn a multi-digit vocabulary, and
the vocabulary stays under a hundred entries. Characters outside the alphabet encode
as `<unk>`; widen the alphabet for tasks that need them.

Presets (parameter counts with the default alphabet's vocabulary of 101 tokens,
embeddings tied, so counted once; `qwen2` adds a few hundred for the q/k/v biases):

=========  ======  =====  ======  =====  ====  ============
preset     hidden  inter  layers  heads  kv    parameters
=========  ======  =====  ======  =====  ====  ============
``tiny``   64      192    2       4      2     105,088
``small``  128     384    4       4      2     800,512
=========  ======  =====  ======  =====  ====  ============

`tiny` is for tests (a forward pass on a few sequences takes a millisecond or two);
`small` is the quickstart's model: big enough to learn multi-digit addition from an
SFT warm start and improve under GRPO, small enough that 2 CPU cores train it in
minutes. `build_model(..., **overrides)` changes any config field for experiments.
"""

from __future__ import annotations

import os
import string
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Literal

import torch
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
from transformers import (
    AutoModelForCausalLM,
    AutoModelForSequenceClassification,
    LlamaConfig,
    LlamaForCausalLM,
    LlamaForSequenceClassification,
    PreTrainedModel,
    PreTrainedTokenizerFast,
    Qwen2Config,
    Qwen2ForCausalLM,
    Qwen2ForSequenceClassification,
)

PAD = "<pad>"
EOS = "<eos>"  # end of a plain (non-chat) document, like Qwen's <|endoftext|>
UNK = "<unk>"
IM_START = "<|im_start|>"
IM_END = "<|im_end|>"  # end of a chat turn: what generation stops on
SPECIAL_TOKENS: tuple[str, ...] = (PAD, EOS, UNK, IM_START, IM_END)

#: Digits, letters, ASCII punctuation, space and newline: 96 characters, 101 tokens
#: with the specials (ids 0-4, in SPECIAL_TOKENS order).
DEFAULT_ALPHABET = string.digits + string.ascii_letters + string.punctuation + " \n"

#: Qwen2.5's chat format without the tools and default-system-prompt branches:
#: `<|im_start|>{role}\n{content}<|im_end|>\n` per message, then
#: `<|im_start|>assistant\n` when a generation prompt is asked for.
CHAT_TEMPLATE = (
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)

Preset = Literal["tiny", "small"]
Arch = Literal["llama", "qwen2"]
Head = Literal["lm", "score"]

PRESETS: dict[str, dict[str, int]] = {
    "tiny": dict(
        hidden_size=64,
        intermediate_size=192,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
    ),
    "small": dict(
        hidden_size=128,
        intermediate_size=384,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
    ),
}


def build_tokenizer(
    alphabet: Iterable[str] = DEFAULT_ALPHABET,
    *,
    chat_template: str = CHAT_TEMPLATE,
) -> PreTrainedTokenizerFast:
    """A character-level fast tokenizer over `alphabet` plus the chat special tokens.

    Ids are stable: the specials take 0-4 (`<pad>`, `<eos>`, `<unk>`, `<|im_start|>`,
    `<|im_end|>`), then the alphabet's characters in the order given (duplicates
    dropped). `eos_token` is `<|im_end|>`, the end of an assistant turn in the chat
    template, so generation stops there; `<eos>` ends plain documents. No BOS token is
    added. Decoding joins characters without separators, so
    `decode(encode(s)) == s` for any `s` over the alphabet.

    >>> tok = build_tokenizer("0123456789+=")
    >>> tok("12+3=").input_ids
    [6, 7, 15, 8, 16]
    >>> tok.decode([6, 7, 15, 8, 16])
    '12+3='
    """
    vocab: dict[str, int] = {token: i for i, token in enumerate(SPECIAL_TOKENS)}
    for char in alphabet:
        if len(char) != 1:
            raise ValueError(f"alphabet entries must be single characters, got {char!r}")
        vocab.setdefault(char, len(vocab))
    backend = Tokenizer(models.WordLevel(vocab, unk_token=UNK))
    # One token per character, newlines included ([\s\S], not ".", which skips "\n").
    backend.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    backend.decoder = decoders.Fuse()
    backend.add_special_tokens(list(SPECIAL_TOKENS))
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        pad_token=PAD,
        eos_token=IM_END,
        unk_token=UNK,
    )
    tokenizer.chat_template = chat_template
    return tokenizer


def build_model(
    preset: Preset = "tiny",
    vocab_size: int | None = None,
    *,
    tokenizer: PreTrainedTokenizerFast | None = None,
    arch: Arch = "llama",
    head: Head = "lm",
    seed: int = 0,
    max_position_embeddings: int = 1024,
    **overrides: object,
) -> PreTrainedModel:
    """A freshly initialised causal LM of the given preset, in fp32, in train mode.

    Give `vocab_size` or `tokenizer` (then `len(tokenizer)` and its pad/eos ids are
    used). Embeddings are tied to the output layer. The initialisation is a function
    of `seed` alone and leaves the global torch RNG untouched. `arch="qwen2"` builds
    a `Qwen2ForCausalLM` (biases on q/k/v), otherwise a `LlamaForCausalLM`; the
    sizes are the same. `overrides` are passed to the config (e.g.
    `num_hidden_layers=6`).

    `head="score"` builds the `...ForSequenceClassification` model with one label
    instead (a reward model: a linear score on the hidden state of the last token that
    is not `pad_token_id`, so give a tokenizer whose pad token never occurs in text).
    """
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose one of {sorted(PRESETS)}")
    if vocab_size is None:
        if tokenizer is None:
            raise ValueError("give vocab_size or tokenizer")
        vocab_size = len(tokenizer)
    # Without a tokenizer, no special ids (the config classes default to ids that mean
    # nothing in our vocabulary, e.g. Llama's eos 2 is <unk> here).
    special_ids: dict[str, object] = dict(pad_token_id=None, eos_token_id=None, bos_token_id=None)
    if tokenizer is not None:
        eos_ids = [tokenizer.eos_token_id]
        if EOS in tokenizer.get_vocab():
            eos_ids.append(tokenizer.convert_tokens_to_ids(EOS))
        special_ids = dict(
            pad_token_id=tokenizer.pad_token_id, eos_token_id=eos_ids, bos_token_id=None
        )
    fields: dict[str, object] = dict(
        PRESETS[preset],
        vocab_size=vocab_size,
        max_position_embeddings=max_position_embeddings,
        tie_word_embeddings=True,
        rms_norm_eps=1e-6,
        initializer_range=0.02,
        **special_ids,
    )
    fields.update(overrides)
    if arch not in ("llama", "qwen2"):
        raise ValueError(f"unknown arch {arch!r}; choose 'llama' or 'qwen2'")
    if head not in ("lm", "score"):
        raise ValueError(f"unknown head {head!r}; choose 'lm' or 'score'")
    classes = {
        ("qwen2", "lm"): (Qwen2Config, Qwen2ForCausalLM),
        ("qwen2", "score"): (Qwen2Config, Qwen2ForSequenceClassification),
        ("llama", "lm"): (LlamaConfig, LlamaForCausalLM),
        ("llama", "score"): (LlamaConfig, LlamaForSequenceClassification),
    }
    config_cls, model_cls = classes[(arch, head)]
    if head == "score":
        fields.setdefault("num_labels", 1)
    config = config_cls(**fields)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = model_cls(config)
    if head == "lm":
        model.generation_config.pad_token_id = config.pad_token_id
        model.generation_config.eos_token_id = config.eos_token_id
        model.generation_config.bos_token_id = config.bos_token_id
    return model.float().train()


def count_parameters(model: torch.nn.Module) -> int:
    """Distinct parameters (tied weights counted once)."""
    return sum(p.numel() for p in model.parameters())


def save(
    path: str | os.PathLike[str],
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerFast | None = None,
) -> Path:
    """Write `model` (safetensors) and `tokenizer` as a Hugging Face directory."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(path)
    if tokenizer is not None:
        tokenizer.save_pretrained(path)
    return path


def load_model(path: str | os.PathLike[str], **kwargs: object) -> PreTrainedModel:
    """Load a model directory written by `save` (or any local causal LM), fp32 by default."""
    kwargs.setdefault("dtype", torch.float32)
    return AutoModelForCausalLM.from_pretrained(Path(path), **kwargs)


def load_reward_model(path: str | os.PathLike[str], **kwargs: object) -> PreTrainedModel:
    """A sequence-classification model with one label (a reward model) from `path`, fp32
    by default. A causal LM directory gets a freshly initialised score head on its
    trunk (seeded by the caller's torch RNG); a reward-model directory loads whole."""
    kwargs.setdefault("dtype", torch.float32)
    kwargs.setdefault("num_labels", 1)
    return AutoModelForSequenceClassification.from_pretrained(Path(path), **kwargs)


def load_tokenizer(path: str | os.PathLike[str]) -> PreTrainedTokenizerFast:
    """Load a tokenizer written by `save`.

    Loaded as the generic fast tokenizer on purpose: the directory's `config.json`
    says `llama`/`qwen2`, and the class-specific tokenizers would add their own
    BOS/normalisation behaviour to a tokenizer that has none.
    """
    return PreTrainedTokenizerFast.from_pretrained(Path(path))


def encode_chat(
    tokenizer: PreTrainedTokenizerFast,
    messages: Sequence[dict[str, str]],
    *,
    add_generation_prompt: bool = True,
) -> list[int]:
    """Token ids of `messages` rendered by the chat template (a prompt for generation)."""
    text = tokenizer.apply_chat_template(
        list(messages), tokenize=False, add_generation_prompt=add_generation_prompt
    )
    return tokenizer(text, add_special_tokens=False).input_ids
