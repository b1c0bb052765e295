"""Masks and masked reductions shared by the advantage, loss and KL functions.

Two kinds of mask meet in the trainer:

- a *sample* mask `[N]` (`valid`: the reward came back OK; `keep`: the sample survived
  dynamic sampling and overlong filtering), and
- a *token* mask `[N, T]` (`mask`: 1 on response tokens, 0 on prompt and padding).

The loss sees one token mask, `loss_mask(response_mask, keep)`, which is 0 for every token
of a sample that must not train. Masks may be bool or 0/1 numbers; they are read as bool.

Reductions select with `torch.where` instead of multiplying by the mask, so a NaN or inf
sitting under a masked position (a pad token's logprob, a failed sample's placeholder
reward) can neither leak into the value nor, through `0 * inf`, into the gradient.
Everything is computed in fp32, whatever the input dtype: bf16 has 8 mantissa bits, and
a sum over tens of thousands of tokens in bf16 loses whole units.
"""

from __future__ import annotations

import torch
from torch import Tensor


def as_bool(mask: Tensor) -> Tensor:
    """A 0/1 or bool mask as bool (any non-zero counts as kept)."""
    return mask if mask.dtype == torch.bool else mask != 0


def masked_sum(values: Tensor, mask: Tensor, dim: int | None = None) -> Tensor:
    """Sum of `values` where `mask` is set, in fp32; masked entries may hold NaN or inf.

    values, mask: same shape (e.g. `[N, T]`). `dim=None` sums everything to a scalar.
    """
    picked = torch.where(as_bool(mask), values.float(), 0.0)
    return picked.sum() if dim is None else picked.sum(dim)


def masked_mean(values: Tensor, mask: Tensor, dim: int | None = None) -> Tensor:
    """Mean of `values` over the entries where `mask` is set, in fp32.

    An empty selection gives 0, not NaN: a batch whose samples all failed then trains on
    nothing instead of poisoning the weights. values, mask: same shape; `dim=None`
    reduces to a scalar, otherwise along `dim`.
    """
    mask = as_bool(mask)
    count = mask.sum() if dim is None else mask.sum(dim)
    return masked_sum(values, mask, dim) / count.clamp(min=1)


def loss_mask(response_mask: Tensor, keep: Tensor) -> Tensor:
    """The token mask the loss uses: response tokens of the samples that are kept.

    response_mask: `[N, T]`, 1 on response tokens. keep: `[N]` bool, False for samples
    that must not train (failed reward, dropped group, truncated). Returns `[N, T]` bool.
    """
    return as_bool(response_mask) & as_bool(keep)[:, None]  # [N, T]


def expand_group_mask(group_mask: Tensor, group_size: int) -> Tensor:
    """A per-group mask `[B]` repeated for each of its samples: `[B*G]`.

    Samples are grouped contiguously by prompt (sample i belongs to group i // G), the
    layout every group estimator here assumes.
    """
    return group_mask.repeat_interleave(group_size)  # [B*G]
