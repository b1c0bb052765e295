"""Policy-gradient losses (one function per loss) and how they average over tokens.

Inputs shared by every loss:

- `logp`     `[N, T]` log pi_theta(token) under the model being trained (carries grad);
- `old_logp` `[N, T]` log pi_old(token) of the policy that sampled the batch (detached
  here: the ratio's denominator is a constant);
- `advantages` `[N]` (one per sequence, broadcast) or `[N, T]`;
- `mask` `[N, T]`: 1 on response tokens of samples that train, 0 on prompt, padding and
  every token of a masked-out sample (failed reward, dropped group, truncated).

Each returns a `PolicyLoss` (loss to minimise, plus detached diagnostics). Masked
positions are replaced before any exp, so garbage under the mask (a pad token's logprob
of -inf) cannot reach the loss or its gradient. Everything is computed in fp32: the
ratio exp(logp - old_logp) of two bf16 logprobs would carry ~1% error, as large as the
clip range itself (and 30x GSPO's).

Aggregation (how per-token terms become one number) is a separate small function,
because it is where the papers disagree: `token_mean` (DAPO), `sequence_mean`
(GRPO as published), `seq_mean_token_sum_norm` (Dr. GRPO).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from referee.trainer.algorithms.masking import as_bool, masked_mean, masked_sum

Aggregation = Callable[[Tensor, Tensor], Tensor]
"""`(values [N, T], mask [N, T]) -> scalar`. Bind extra arguments with functools.partial."""


# --- aggregation ---------------------------------------------------------------------


def token_mean(values: Tensor, mask: Tensor, num_tokens: Tensor | float | None = None) -> Tensor:
    """Sum over every valid token of the batch / number of valid tokens.

    DAPO's token-level loss (Yu et al. 2025, arXiv:2503.14476, §3.3): each token weighs
    the same, so a long response's tokens are not diluted by 1/|y| as in `sequence_mean`,
    and long degenerate outputs (repetition, gibberish) are penalised in proportion.
    `num_tokens` overrides the denominator, e.g. with the token count of the whole global
    batch when the loss is summed over micro-batches or ranks.

    values, mask: `[N, T]`. Returns a scalar (0 when nothing is valid).
    """
    denom = as_bool(mask).sum().clamp(min=1) if num_tokens is None else num_tokens
    return masked_sum(values, mask) / denom


def sequence_mean(
    values: Tensor, mask: Tensor, num_sequences: Tensor | float | None = None
) -> Tensor:
    """Mean over each sequence's valid tokens, then mean over sequences.

    The GRPO objective as written (DeepSeekMath, Shao et al. 2024, arXiv:2402.03300,
    Eq. 3: 1/G sum_i 1/|o_i| sum_t): every response weighs the same whatever its length,
    which Dr. GRPO shows favours long wrong answers (their per-token penalty is diluted).
    Sequences with no valid token (masked-out samples) are not counted, unless
    `num_sequences` gives the denominator explicitly (e.g. for a global batch).

    values, mask: `[N, T]`. Returns a scalar.
    """
    m = as_bool(mask)  # [N, T]
    per_seq = masked_mean(values, m, dim=-1)  # [N]
    present = m.any(-1)  # [N]
    denom = present.sum().clamp(min=1) if num_sequences is None else num_sequences
    return masked_sum(per_seq, present) / denom


def seq_mean_token_sum_norm(
    values: Tensor,
    mask: Tensor,
    max_len: int | None = None,
    num_sequences: Tensor | float | None = None,
) -> Tensor:
    """Sum over each sequence's tokens / a constant length, then mean over sequences.

    Dr. GRPO (Liu et al. 2025, arXiv:2503.20783): dividing by each response's own length
    |o_i| biases the gradient towards long incorrect responses, so divide by a constant
    instead (their code uses the generation budget). Pass the generation's max new tokens
    as `max_len`; the default, the padded width T, changes from batch to batch and so is
    only constant within one. Sequences counted as in `sequence_mean`.

    values, mask: `[N, T]`. Returns a scalar.
    """
    m = as_bool(mask)  # [N, T]
    length = values.shape[-1] if max_len is None else max_len
    per_seq = masked_sum(values, m, dim=-1) / length  # [N]
    present = m.any(-1)  # [N]
    denom = present.sum().clamp(min=1) if num_sequences is None else num_sequences
    return masked_sum(per_seq, present) / denom


AGGREGATIONS: dict[str, Aggregation] = {
    "token_mean": token_mean,
    "sequence_mean": sequence_mean,
    "seq_mean_token_sum_norm": seq_mean_token_sum_norm,
}
"""Name (as written in a config) -> aggregation with its defaults."""


# --- losses --------------------------------------------------------------------------


@dataclass(frozen=True)
class PolicyLoss:
    """A policy loss and what to log about it. Stats are detached fp32 scalars,
    token-weighted means over the valid tokens (left as tensors: no host sync)."""

    loss: Tensor
    """Scalar to minimise (the negated clipped surrogate objective); carries grad."""
    clip_fraction: Tensor
    """Fraction of valid tokens where a clip bound is active, i.e. whose gradient is cut."""
    approx_kl: Tensor
    """KL(pi_old || pi_theta) estimated with k3 = (r - 1) - log r, r = pi_theta / pi_old,
    on the token ratios (Schulman's estimator; >= 0). How far this update has moved."""
    ratio_mean: Tensor
    """Mean importance ratio (the sequence ratio s_i for GSPO). 1 on the first step."""


def ppo_clip_loss(
    logp: Tensor,
    old_logp: Tensor,
    advantages: Tensor,
    mask: Tensor,
    clip_low: float = 0.2,
    clip_high: float = 0.2,
    clip_ratio_c: float | None = None,
    aggregation: Aggregation = token_mean,
    token_weights: Tensor | None = None,
) -> PolicyLoss:
    """PPO's clipped surrogate with asymmetric bounds (DAPO clip-higher), per token.

    loss_t = max(-A_t * r_t, -A_t * clip(r_t, 1 - clip_low, 1 + clip_high)),
    r_t = pi_theta(o_t) / pi_old(o_t): PPO's L^CLIP (Schulman et al. 2017,
    arXiv:1707.06347, Eq. 7) as used token by token in GRPO (arXiv:2402.03300, Eq. 3).
    A token is clipped only on the side that would push the ratio further out: r above
    1 + clip_high with A > 0, or below 1 - clip_low with A < 0; its gradient is then 0.

    `clip_high > clip_low` is DAPO's clip-higher (Yu et al. 2025, arXiv:2503.14476, §3.1;
    they use 0.2 / 0.28): low-probability tokens with positive advantage may grow further,
    which keeps the policy's entropy from collapsing. The defaults are symmetric PPO.

    `clip_ratio_c` (> 1, e.g. 3) enables dual-clip (Ye et al. 2020, "Mastering Complex
    Control in MOBA Games with Deep Reinforcement Learning", arXiv:1912.09729): for A < 0
    the loss is also capped at -A * c, so a token whose ratio exploded (stale old_logp,
    off-policy data) cannot produce an unbounded update. Off (None) by default.

    `aggregation` defaults to `token_mean` (DAPO); pass `sequence_mean` for GRPO as
    published or `functools.partial(seq_mean_token_sum_norm, max_len=...)` for Dr. GRPO.

    `token_weights` `[N, T]` multiply each token's loss (detached), e.g. the truncated
    importance weights of `mismatch.tis_weights`; None weighs every token 1.

    logp, old_logp, mask: `[N, T]`; advantages: `[N]` or `[N, T]`.
    """
    _check_clip(clip_low, clip_high)
    if clip_ratio_c is not None and clip_ratio_c <= 1.0:
        raise ValueError(f"clip_ratio_c must be > 1 (typically 3), got {clip_ratio_c}")
    m = as_bool(mask)  # [N, T]
    adv = _token_advantages(advantages, m)  # [N, T]
    log_ratio = _log_ratio(logp, old_logp, m)  # [N, T]
    ratio = log_ratio.exp()  # [N, T]

    unclipped = -adv * ratio  # [N, T]
    clipped = -adv * ratio.clamp(1.0 - clip_low, 1.0 + clip_high)  # [N, T]
    per_token = torch.maximum(unclipped, clipped)  # [N, T]
    cut = _clip_active(ratio, adv, clip_low, clip_high)  # [N, T] bool
    if clip_ratio_c is not None:
        cap = -adv * clip_ratio_c  # [N, T], > 0 where adv < 0
        dual = (adv < 0) & (per_token > cap)  # [N, T]
        per_token = torch.where(dual, cap, per_token)
        cut = cut | dual
    per_token = _weighted(per_token, token_weights, m)  # [N, T]

    return PolicyLoss(
        loss=aggregation(per_token, m),
        **_stats(log_ratio, ratio, cut, m),
    )


def gspo_loss(
    logp: Tensor,
    old_logp: Tensor,
    advantages: Tensor,
    mask: Tensor,
    clip_low: float = 3e-4,
    clip_high: float = 4e-4,
    aggregation: Aggregation = sequence_mean,
    token_weights: Tensor | None = None,
) -> PolicyLoss:
    """GSPO: one importance ratio per sequence, clipped per sequence (GSPO-token form).

    Zheng et al. 2025, "Group Sequence Policy Optimization", arXiv:2507.18071. The
    sequence ratio is the length-normalised likelihood ratio

        s_i = (pi_theta(y_i) / pi_old(y_i)) ^ (1/|y_i|) = exp(mean_t (logp - old_logp)),

    because token ratios are single-sample importance weights whose noise accumulates
    over long responses; the reward is per sequence, so the correction should be too.
    The GSPO objective is the paper's Eq. 5, min(s_i A_i, clip(s_i) A_i) averaged over the
    group; the loss uses its GSPO-token variant:

        s_{i,t} = sg[s_i] * pi_theta(y_{i,t}) / sg[pi_theta(y_{i,t})],
        loss = -1/G sum_i 1/|y_i| sum_t min(s_{i,t} A_{i,t}, clip(s_{i,t}) A_{i,t}),

    whose value equals s_i on every token and whose gradient, with one advantage per
    sequence, equals GSPO's sequence-level one; it also accepts `[N, T]` advantages.
    Clipping therefore acts on whole sequences. The default clip range, 3e-4 below and
    4e-4 above, is what the paper's experiments set in Eq. 5: s_i is a geometric mean, so it
    sits much closer to 1 than a token ratio, and PPO's 0.2 would almost never bind.
    `aggregation` defaults to `sequence_mean`, the 1/G sum_i 1/|y_i| sum_t above.
    `token_weights` `[N, T]` multiply each token's loss (detached), as in `ppo_clip_loss`.

    logp, old_logp, mask: `[N, T]`; advantages: `[N]` or `[N, T]`.
    """
    _check_clip(clip_low, clip_high)
    m = as_bool(mask)  # [N, T]
    adv = _token_advantages(advantages, m)  # [N, T]
    log_ratio = _log_ratio(logp, old_logp, m)  # [N, T]
    log_seq_ratio = masked_mean(log_ratio, m, dim=-1)  # [N]  log s_i
    # Value log s_i on every token; gradient that of logp (log_ratio - sg(log_ratio) is
    # logp - sg(logp) on valid tokens and 0 on masked ones).
    log_token_ratio = log_seq_ratio.detach()[:, None] + (log_ratio - log_ratio.detach())
    ratio = log_token_ratio.exp()  # [N, T]  s_{i,t}

    unclipped = -adv * ratio  # [N, T]
    clipped = -adv * ratio.clamp(1.0 - clip_low, 1.0 + clip_high)  # [N, T]
    per_token = torch.maximum(unclipped, clipped)  # [N, T]
    cut = _clip_active(ratio, adv, clip_low, clip_high)  # [N, T] bool
    per_token = _weighted(per_token, token_weights, m)  # [N, T]

    return PolicyLoss(
        loss=aggregation(per_token, m),
        **_stats(log_ratio, ratio, cut, m),
    )


PolicyLossFn = Callable[..., PolicyLoss]
"""`(logp, old_logp, advantages, mask, **options) -> PolicyLoss`."""

POLICY_LOSSES: dict[str, PolicyLossFn] = {
    "ppo_clip": ppo_clip_loss,
    "gspo": gspo_loss,
}
"""Name (as written in a config) -> loss."""


# --- helpers -------------------------------------------------------------------------


def _log_ratio(logp: Tensor, old_logp: Tensor, mask: Tensor) -> Tensor:
    """log(pi_theta / pi_old) in fp32, 0 under the mask; grad flows through logp only."""
    if logp.shape != old_logp.shape or logp.shape != mask.shape or logp.dim() != 2:
        raise ValueError(
            f"logp {tuple(logp.shape)}, old_logp {tuple(old_logp.shape)} and mask "
            f"{tuple(mask.shape)} must all be [N, T]"
        )
    return torch.where(mask, logp.float() - old_logp.detach().float(), 0.0)  # [N, T]


def _token_advantages(advantages: Tensor, mask: Tensor) -> Tensor:
    """Advantages `[N]` or `[N, T]` as detached fp32 `[N, T]`, 0 under the mask."""
    adv = advantages.detach().float()
    if adv.shape == mask.shape[:1]:
        adv = adv[:, None].expand(mask.shape)
    if adv.shape != mask.shape:
        raise ValueError(
            f"advantages {tuple(advantages.shape)} must be [N] or [N, T] with "
            f"[N, T] = {tuple(mask.shape)}"
        )
    return torch.where(mask, adv, 0.0)  # [N, T]


def _weighted(per_token: Tensor, weights: Tensor | None, mask: Tensor) -> Tensor:
    """`per_token * weights` (detached fp32, 0 under the mask); unchanged when None."""
    if weights is None:
        return per_token
    if weights.shape != mask.shape:
        raise ValueError(
            f"token_weights {tuple(weights.shape)} must be [N, T] = {tuple(mask.shape)}"
        )
    return per_token * torch.where(mask, weights.detach().float(), 0.0)  # [N, T]


def _clip_active(ratio: Tensor, adv: Tensor, clip_low: float, clip_high: float) -> Tensor:
    """`[N, T]` bool: the clipped term is the one taken and it is flat (zero gradient)."""
    return ((adv > 0) & (ratio > 1.0 + clip_high)) | ((adv < 0) & (ratio < 1.0 - clip_low))


def _stats(log_ratio: Tensor, ratio: Tensor, cut: Tensor, mask: Tensor) -> dict[str, Tensor]:
    with torch.no_grad():
        token_ratio = log_ratio.exp()  # [N, T]
        k3 = (token_ratio - 1.0) - log_ratio  # [N, T], KL(old || new) per token
        return {
            "clip_fraction": masked_mean(cut.float(), mask),
            "approx_kl": masked_mean(k3, mask),
            "ratio_mean": masked_mean(ratio, mask),
        }


def _check_clip(clip_low: float, clip_high: float) -> None:
    if not 0.0 <= clip_low < 1.0:
        raise ValueError(
            f"clip_low must be in [0, 1) (the ratio floor is 1 - clip_low), got {clip_low}"
        )
    if clip_high < 0.0:
        raise ValueError(f"clip_high must be >= 0, got {clip_high}")
