"""What the rm and dpo recipes share: the pair splits from the config, and eval chunks."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from referee.trainer.config import TrainConfig
from referee.trainer.config_load import ConfigError
from referee.trainer.preference_data import PreferencePair, drop_long_pairs, load_pair_splits

__all__ = ["PairSplits", "chunks", "load_pair_data"]


@dataclass
class PairSplits:
    """Training and held-out pairs, pairs with long prompts dropped."""

    train: list[PreferencePair]
    eval: list[PreferencePair]
    dropped: int
    """Pairs dropped for exceeding data.max_prompt_tokens (both splits)."""


def load_pair_data(cfg: TrainConfig, tokenizer: Any) -> PairSplits:
    d = cfg.data
    train, held_out = load_pair_splits(
        d.train_path,
        eval_path=d.eval_path,
        eval_fraction=d.eval_fraction,
        id_field=d.id_field,
        prompt_field=d.prompt_field,
        chosen_field=d.chosen_field,
        rejected_field=d.rejected_field,
    )
    args = (tokenizer, d.max_prompt_tokens, d.chat_template, d.system_prompt)
    train, n1 = drop_long_pairs(train, *args)
    held_out, n2 = drop_long_pairs(held_out, *args)
    if not train:
        raise ConfigError(
            "data.max_prompt_tokens",
            f"{d.max_prompt_tokens} drops every training pair; raise it (0 keeps all)",
        )
    if cfg.eval.num_samples:
        held_out = held_out[: cfg.eval.num_samples]
    return PairSplits(train, held_out, n1 + n2)


def chunks(pairs: Sequence[PreferencePair], size: int) -> Iterator[list[PreferencePair]]:
    """`pairs` in consecutive slices of at most `size` (the eval's micro-batches)."""
    for start in range(0, len(pairs), max(size, 1)):
        yield list(pairs[start : start + size])
