"""Sample filters from DAPO (Yu et al. 2025, arXiv:2503.14476): which samples train.

Each returns a keep mask (True = the sample trains). Combine them with the reward
status mask and turn the result into the loss mask with `masking.loss_mask`:

    keep = valid & expand_group_mask(informative_groups(r, valid, G), G) & overlong_mask(t)
    mask = loss_mask(response_mask, keep)                                    # [N, T]
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from referee.trainer.algorithms.masking import as_bool, expand_group_mask

__all__ = [
    "expand_group_mask",
    "informative_groups",
    "overlong_mask",
    "overlong_penalty",
]


def informative_groups(
    rewards: Tensor, valid: Tensor, group_size: int, atol: float = 0.0
) -> Tensor:
    """DAPO dynamic sampling: the groups whose valid rewards are not all equal.

    With group-relative advantages, a group where every sample scored the same (all
    right, all wrong) has advantage 0 everywhere: it adds no gradient, only a smaller
    effective batch. DAPO (§3.2) drops such groups and samples more prompts until the
    batch is full again (the refill is the trainer loop's job). Only valid samples are
    compared, so a failed sample is never read as a 0 that makes a uniform group look
    informative; a group with < 2 valid samples is not informative. Rewards differing
    by at most `atol` count as equal.

    rewards, valid: `[B*G]`, grouped contiguously by prompt. Returns `[B]` bool.
    """
    if rewards.dim() != 1 or rewards.shape != valid.shape or rewards.numel() % group_size:
        raise ValueError(
            f"rewards {tuple(rewards.shape)} and valid {tuple(valid.shape)} must be the "
            f"same [B*G] shape, whole groups of {group_size}"
        )
    if atol < 0:
        raise ValueError(f"atol must be >= 0, got {atol}")
    v = as_bool(valid).view(-1, group_size)  # [B, G]
    r = rewards.float().view(-1, group_size)  # [B, G]
    high = torch.where(v, r, -torch.inf).amax(-1)  # [B]
    low = torch.where(v, r, torch.inf).amin(-1)  # [B]
    # One valid sample gives high == low, none gives -inf - inf: neither passes.
    return high - low > atol  # [B]


def overlong_mask(truncated: Tensor | Sequence[str], length_reason: str = "length") -> Tensor:
    """DAPO overlong filtering: keep the samples that ended on their own.

    A response cut off at the generation budget gets a reward for an unfinished answer
    (usually "wrong"), though its reasoning may have been sound: training on it teaches
    the model to be short rather than right, and adds reward noise. DAPO (§3.4) masks
    truncated samples out of the loss.

    truncated: `[N]` bool (True = hit max length), or the rollout's finish reasons, one
    string per sample, where `length_reason` ("length", as vLLM/SGLang/OpenAI report it)
    means truncated. Returns `[N]` bool keep mask.
    """
    if isinstance(truncated, Tensor):
        return ~as_bool(truncated)  # [N]
    return torch.tensor([reason != length_reason for reason in truncated], dtype=torch.bool)


def overlong_penalty(
    lengths: Tensor, max_len: int, buffer_len: int, penalty: float = 1.0
) -> Tensor:
    """DAPO soft overlong punishment: a reward term that ramps down near the budget.

    R_length = 0 for L <= max_len - buffer_len, ((max_len - buffer_len) - L) / buffer_len
    inside the last `buffer_len` tokens, -1 beyond max_len (DAPO §3.4), times `penalty`.
    Add it to the task reward (for valid samples) to discourage length without the
    cliff of a hard cut-off. Alternative to `overlong_mask`, not a complement: a sample
    masked out never sees its penalty.

    lengths: `[N]` response lengths in tokens. Returns `[N]` fp32, <= 0.
    """
    if not 0 < buffer_len <= max_len:
        raise ValueError(f"buffer_len must be in (0, max_len={max_len}], got {buffer_len}")
    free = max_len - buffer_len
    ramp = (free - lengths.float()) / buffer_len  # [N], in [-1, 0) inside the buffer
    return penalty * ramp.clamp(-1.0, 0.0)  # [N]
