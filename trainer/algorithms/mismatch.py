"""Train/rollout mismatch: how far the rollout engine's logprobs are from the trainer's,
and truncated importance sampling (TIS) to correct for it.

The engine that samples (SGLang, or the KV-cached decoding of `hf`) and the trainer's
full-sequence forward pass compute the same distribution with different kernels, and
with bf16, different batch shapes or a stale weight sync, not to the same numbers. The
samples then come from pi_rollout while the PPO ratio's denominator is pi_old as the
trainer computes it (a fresh forward pass over the same weights). Two things follow:

- `logprob_gap` measures it per token, gap = log pi_old - log pi_rollout: 0 up to float
  error when the two sides agree (fp32, same weights), a few 1e-2 with bf16 kernels, and
  large when the engine holds other weights than the trainer thinks.
- `tis_weights` are the truncated importance weights min(pi_old / pi_rollout, cap)
  that turn the on-policy gradient estimate into one for samples drawn from pi_rollout
  (Yao et al. 2025, "Your Efficient RL Framework Secretly Brings You Off-Policy RL
  Training", a blog post that measured the gap in vLLM/SGLang-based trainers). The cap bounds
  the variance a rare token with a tiny pi_rollout would add; it is a constant of the
  loss (detached): the gradient flows through the policy loss only.

Not corrected: tokens the engine would never sample (a gap from top-k/top-p truncation
is not in these logprobs, see rollout/base.py), and the bias the cap introduces.

Shapes: N samples, T tokens (right-padded); `mask` is 1 on the response tokens to count.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from referee.trainer.algorithms.masking import as_bool, masked_mean


@dataclass(frozen=True)
class LogprobGap:
    """Detached fp32 scalars over the valid tokens (0 when there are none)."""

    mean_abs: Tensor
    """Mean of |log pi_old - log pi_rollout| per token."""
    max_abs: Tensor
    """Largest |log pi_old - log pi_rollout| of any token."""
    ratio_mean: Tensor
    """Mean importance ratio pi_old / pi_rollout = exp(gap) per token (1 when they agree)."""


def logprob_gap(old_logp: Tensor, rollout_logp: Tensor, mask: Tensor) -> LogprobGap:
    """The per-token gap between the trainer's logprobs and the rollout engine's.

    old_logp, rollout_logp, mask: `[N, T]`.

    >>> old = torch.tensor([[-1.0, -2.0, 0.0]])
    >>> rollout = torch.tensor([[-1.5, -2.0, -9.0]])
    >>> gap = logprob_gap(old, rollout, torch.tensor([[1, 1, 0]]))
    >>> round(float(gap.mean_abs), 4), round(float(gap.max_abs), 4)
    (0.25, 0.5)
    """
    m = _check(old_logp, rollout_logp, mask)  # [N, T]
    with torch.no_grad():
        gap = torch.where(m, old_logp.float() - rollout_logp.float(), 0.0)  # [N, T]
        return LogprobGap(
            mean_abs=masked_mean(gap.abs(), m),
            max_abs=gap.abs().max() if gap.numel() else gap.new_zeros(()),
            ratio_mean=masked_mean(gap.exp(), m),
        )


def tis_weights(old_logp: Tensor, rollout_logp: Tensor, mask: Tensor, cap: float) -> Tensor:
    """Truncated importance weights min(pi_old / pi_rollout, cap) per token, detached.

    Multiply the per-token policy loss by them (`ppo_clip_loss(..., token_weights=w)`).
    Masked positions get 1 (they are out of the loss anyway, and no exp of garbage).

    old_logp, rollout_logp, mask: `[N, T]`; cap >= 1. Returns fp32 `[N, T]`.

    >>> w = tis_weights(torch.tensor([[0.0, 0.0]]), torch.tensor([[-0.5, 1.0]]),
    ...                 torch.tensor([[1, 1]]), cap=1.5)
    >>> [round(x, 4) for x in w[0].tolist()]
    [1.5, 0.3679]
    """
    if not cap >= 1:
        raise ValueError(f"cap must be >= 1 (it truncates pi_old / pi_rollout), got {cap}")
    m = _check(old_logp, rollout_logp, mask)  # [N, T]
    log_ratio = torch.where(m, old_logp.detach().float() - rollout_logp.detach().float(), 0.0)
    return log_ratio.exp().clamp(max=cap)  # [N, T]


def _check(old_logp: Tensor, rollout_logp: Tensor, mask: Tensor) -> Tensor:
    if old_logp.shape != rollout_logp.shape or old_logp.shape != mask.shape or mask.dim() != 2:
        raise ValueError(
            f"old_logp {tuple(old_logp.shape)}, rollout_logp {tuple(rollout_logp.shape)} and "
            f"mask {tuple(mask.shape)} must all be [N, T]"
        )
    return as_bool(mask)
