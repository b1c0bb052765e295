"""Helpers for the reward-model tests: samples of varied lengths and prompt forms, an
in-process `RewardModelService` on port 0, and the reference score of one sample: a
plain forward of that sample alone, with no padding, read at its last token."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import torch

from referee.rewardsvc.config import ServerConfig
from referee.rewardsvc.reward_model import RewardModelConfig, RewardModelService
from referee.rewardsvc.rm_model import RewardModel, encode_pair
from referee.rewardsvc.server import ServerHandle, create_server

WORDS = ("the answer is four because two and two make four so we are done here "
         "first add the numbers then check the result carefully and write it down").split()


def varied_samples(n: int = 64, seed: int = 0) -> list[dict[str, Any]]:
    """`n` JSONL-style samples, 5 to ~60 words each side; plain, chat and empty prompts."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        prompt_text = " ".join(rng.choices(WORDS, k=rng.randint(1, 30))) + "?"
        completion = " ".join(rng.choices(WORDS, k=rng.choice([1, 3, 8, 20, 45, 60])))
        kind = i % 4
        if kind == 0:
            prompt: Any = prompt_text
        elif kind == 1:
            prompt = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": prompt_text}]
        elif kind == 2:
            prompt = ""
        else:
            prompt = [{"role": "user", "content": prompt_text}, {"role": "assistant", "content": "Sure."},
                      {"role": "user", "content": "And why?"}]
        rows.append({"id": f"s{i}", "prompt": prompt, "completion": completion})
    return rows


async def start_rm(model: Path, **fields: Any) -> ServerHandle:
    """Builds and starts a reward-model server on port 0 (`fields` go to the config)."""
    service = RewardModelService(RewardModelConfig(model=model, **fields))
    try:
        handle = create_server(ServerConfig(port=0), [service])
    except BaseException:
        await service.close()
        raise
    await handle.start()
    return handle


@torch.inference_mode()
def reference_score(rm: RewardModel, row: dict[str, Any], max_length: int = 1024,
                    truncation: str = "left") -> float:
    """One sample, batch of one, no padding, no attention mask: the last token's head
    output for a decoder (computed here from the base model, not by the service's hook),
    the model's own logit for an encoder."""
    enc = encode_pair(rm, row["prompt"], row["completion"], max_length, truncation)  # type: ignore[arg-type]
    ids = torch.tensor([enc.ids])
    if rm.pooling == "last_token":
        hidden = rm.model.model(input_ids=ids).last_hidden_state  # [1, T, H]
        return float(rm.model.score(hidden[:, -1])[0, 0])
    types = torch.tensor([enc.type_ids]) if enc.type_ids is not None else None
    return float(rm.model(input_ids=ids, token_type_ids=types).logits[0, 0])
