"""Advantage estimators for outcome rewards: one function per estimator.

Every estimator takes

- `rewards` `[B*G]`: one scalar reward per sample, grouped contiguously by prompt
  (samples `g*G .. g*G+G-1` answer prompt g), G = `group_size`;
- `valid` `[B*G]` bool: the reward service returned status OK for that sample,

and returns fp32 advantages `[B*G]` (broadcast to tokens with `token_advantages`).

A failed sample is not a reward of 0. Its placeholder value is never read: it is left
out of every mean and std, its advantage is 0, and the trainer must also drop it from the
loss mask (`masking.loss_mask(response_mask, valid)`), because an advantage of 0 still
counts the sample's tokens in a token-mean denominator. A group left with fewer than 2
valid samples has no baseline to compare against, so all its advantages are 0 (for the
group estimators; REINFORCE++ applies the same rule to the whole batch).

Computation is in fp32 whatever the reward dtype.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from referee.trainer.algorithms.masking import as_bool, masked_mean

AdvantageEstimator = Callable[[Tensor, Tensor, int], Tensor]
"""`(rewards [B*G], valid [B*G], group_size) -> advantages [B*G]`."""


@dataclass(frozen=True)
class GroupStats:
    """Statistics of each prompt's group over its valid samples only."""

    rewards: Tensor
    """`[B, G]` fp32 rewards with invalid entries replaced by 0 (never read as rewards)."""
    valid: Tensor
    """`[B, G]` bool."""
    count: Tensor
    """`[B, 1]` number of valid samples in the group."""
    mean: Tensor
    """`[B, 1]` mean of the valid rewards (0 for a group with none)."""
    std: Tensor
    """`[B, 1]` unbiased std (divides by count - 1) of the valid rewards; 0 when count < 2."""

    @property
    def usable(self) -> Tensor:
        """`[B, 1]` bool: the group has a baseline (>= 2 valid samples)."""
        return self.count >= 2


def group_stats(rewards: Tensor, valid: Tensor, group_size: int) -> GroupStats:
    """Per-group count, mean and unbiased std of the valid rewards.

    Invalid entries are replaced before any arithmetic, so a NaN or inf placeholder in a
    failed sample cannot reach the statistics.
    """
    _check_grouped(rewards, valid, group_size)
    v = as_bool(valid).view(-1, group_size)  # [B, G]
    r = torch.where(v, rewards.float().view(-1, group_size), 0.0)  # [B, G]
    count = v.sum(-1, keepdim=True)  # [B, 1]
    mean = r.sum(-1, keepdim=True) / count.clamp(min=1)  # [B, 1]
    sq_dev = torch.where(v, (r - mean) ** 2, 0.0)  # [B, G]
    var = sq_dev.sum(-1, keepdim=True) / (count - 1).clamp(min=1)  # [B, 1]
    std = torch.where(count >= 2, var.sqrt(), 0.0)  # [B, 1]
    return GroupStats(rewards=r, valid=v, count=count, mean=mean, std=std)


def grpo_advantages(rewards: Tensor, valid: Tensor, group_size: int, eps: float = 1e-6) -> Tensor:
    """GRPO: each reward standardised within its prompt's group.

    A_i = (r_i - mean(r)) / (std(r) + eps), mean and std over the group's valid samples
    (DeepSeekMath, Shao et al. 2024, arXiv:2402.03300, §4.1.2 "outcome supervision").

    Std convention: unbiased (Bessel's correction, divide by n - 1). The paper writes
    std(r) without saying which; TRL's `GRPOTrainer`, verl and OpenRLHF's `group_norm`
    all call `Tensor.std`, whose default is the unbiased one, so we match them. With
    G = 4 and rewards [1, 0, 0, 1] that gives ±0.866 (the biased std would give ±1).
    A group whose valid rewards are all equal gets 0 (its numerator is 0); `eps` only
    keeps that division finite. Groups with < 2 valid samples get 0.

    rewards, valid: `[B*G]`. Returns `[B*G]` fp32.
    """
    s = group_stats(rewards, valid, group_size)
    adv = (s.rewards - s.mean) / (s.std + eps)  # [B, G]
    return _only_usable(adv, s)


def dr_grpo_advantages(rewards: Tensor, valid: Tensor, group_size: int) -> Tensor:
    """Dr. GRPO: the group mean as baseline, no division by the std.

    A_i = r_i - mean(r) over the group's valid samples (Liu et al. 2025, "Understanding
    R1-Zero-Like Training: A Critical Perspective", arXiv:2503.20783). Dividing by
    the group std up-weights prompts that are nearly always right or nearly always wrong
    (a question-level difficulty bias); dropping it leaves a plain REINFORCE-with-baseline
    estimate. Its other half, no per-response length normalisation, is the loss
    aggregation `policy_loss.seq_mean_token_sum_norm`. Groups with < 2 valid samples get 0.

    rewards, valid: `[B*G]`. Returns `[B*G]` fp32.
    """
    s = group_stats(rewards, valid, group_size)
    return _only_usable(s.rewards - s.mean, s)  # [B*G]


def rloo_advantages(rewards: Tensor, valid: Tensor, group_size: int) -> Tensor:
    """RLOO: each sample's baseline is the mean reward of the other valid samples.

    A_i = r_i - 1/(n-1) * sum_{j != i} r_j, n = valid samples in the group (Ahmadian et
    al. 2024, "Back to Basics: Revisiting REINFORCE Style Optimization for Learning from
    Human Feedback in LLMs", arXiv:2402.14740; the estimator is Kool et al. 2019,
    "Buy 4 REINFORCE Samples, Get a Baseline for Free!"). The baseline does not depend on
    r_i, so the estimate stays unbiased; it equals n/(n-1) * (r_i - mean(r)). Groups with
    < 2 valid samples get 0 (there is no "other" sample).

    rewards, valid: `[B*G]`. Returns `[B*G]` fp32.
    """
    s = group_stats(rewards, valid, group_size)
    others = (s.rewards.sum(-1, keepdim=True) - s.rewards) / (s.count - 1).clamp(min=1)  # [B, G]
    return _only_usable(s.rewards - others, s)


def reinforce_pp_advantages(
    rewards: Tensor, valid: Tensor, group_size: int = 1, eps: float = 1e-6
) -> Tensor:
    """REINFORCE++: no per-prompt baseline; the returns are standardised over the batch.

    A_i = (r_i - mean_batch(r)) / (std_batch(r) + eps), over all valid samples of the
    batch (Hu 2025, "REINFORCE++", arXiv:2501.03262: the return r - beta * sum KL, then
    global batch normalisation). Put the KL penalty into the rewards first with
    `kl.kl_penalized_rewards` to get the paper's return; with per-token KL use
    `reinforce_pp_token_advantages` instead. This is the paper's one-sample-per-prompt
    estimator; `group_size` is only checked (samples of one prompt are not compared).

    Std convention: population (divide by n), as OpenRLHF, the paper's reference
    implementation, computes its batch variance. Each sample weighs the same here;
    OpenRLHF normalises per token, which `reinforce_pp_token_advantages` does. A batch
    with < 2 valid samples gets 0.

    rewards, valid: `[B*G]`. Returns `[B*G]` fp32.
    """
    _check_grouped(rewards, valid, group_size)
    v = as_bool(valid)  # [N]
    return _batch_standardize(torch.where(v, rewards.float(), 0.0), v, eps)


def reinforce_pp_baseline_advantages(
    rewards: Tensor, valid: Tensor, group_size: int, eps: float = 1e-6
) -> Tensor:
    """REINFORCE++-baseline: subtract the group mean, then standardise over the batch.

    A_i = r_i - mean_group(r), then (A - mean_batch(A)) / (std_batch(A) + eps) (Hu 2025,
    arXiv:2501.03262, the "REINFORCE++-baseline" variant for several samples per prompt;
    OpenRLHF's `reinforce_baseline`). Unlike GRPO the scale comes from the whole batch,
    not from each group, so prompts the model always solves do not get their tiny
    differences blown up. Groups with < 2 valid samples get 0 and are left out of the
    batch statistics; groups whose rewards are all equal stay in them (as zeros).
    Batch std: population, as in `reinforce_pp_advantages`.

    rewards, valid: `[B*G]`. Returns `[B*G]` fp32.
    """
    s = group_stats(rewards, valid, group_size)
    centred = (s.rewards - s.mean).reshape(-1)  # [B*G]
    counted = (s.valid & s.usable).reshape(-1)  # [B*G]
    return _batch_standardize(centred, counted, eps)


def reinforce_pp_token_advantages(token_rewards: Tensor, mask: Tensor, eps: float = 1e-6) -> Tensor:
    """REINFORCE++ with per-token rewards: reward-to-go, standardised over all tokens.

    A_t = sum_{s >= t} r_s (gamma = 1), then (A - mean) / (std + eps) over every valid token
    of the batch (Hu 2025, arXiv:2501.03262: A_t = r - beta * sum_{i >= t} KL(i), then global
    batch normalisation). Build `token_rewards` with `kl.kl_penalized_token_rewards`
    (the outcome reward on the last token, -beta * KL on every token). Population std,
    per token, as OpenRLHF. A failed sample must have an all-zero row in `mask`.

    token_rewards, mask: `[N, T]`. Returns `[N, T]` fp32, 0 on masked tokens.
    """
    m = as_bool(mask)  # [N, T]
    r = torch.where(m, token_rewards.float(), 0.0)  # [N, T]
    to_go = r.flip(-1).cumsum(-1).flip(-1)  # [N, T]
    return _batch_standardize(to_go, m, eps)


def token_advantages(advantages: Tensor, mask: Tensor) -> Tensor:
    """Sequence advantages `[N]` broadcast to the response tokens: `[N, T]`, 0 off-mask.

    Outcome-reward estimators give every token of a response the same advantage.
    """
    return torch.where(as_bool(mask), advantages.float()[:, None], 0.0)  # [N, T]


ADVANTAGE_ESTIMATORS: dict[str, AdvantageEstimator] = {
    "grpo": grpo_advantages,
    "dr_grpo": dr_grpo_advantages,
    "rloo": rloo_advantages,
    "reinforce_pp": reinforce_pp_advantages,
    "reinforce_pp_baseline": reinforce_pp_baseline_advantages,
}
"""Name (as written in a config) -> estimator."""


def _only_usable(adv: Tensor, s: GroupStats) -> Tensor:
    """`[B, G]` -> `[B*G]`, with 0 for invalid samples and groups without a baseline."""
    return torch.where(s.valid & s.usable, adv, 0.0).reshape(-1)


def _batch_standardize(values: Tensor, select: Tensor, eps: float) -> Tensor:
    """(x - mean) / (population std + eps) over the selected entries; 0 elsewhere.

    Fewer than 2 selected entries: all 0 (one sample has no spread to scale by).
    """
    mean = masked_mean(values, select)  # []
    std = masked_mean((values - mean) ** 2, select).sqrt()  # []
    enough = select.sum() >= 2  # [] (a tensor test: no host sync on GPU)
    return torch.where(select & enough, (values - mean) / (std + eps), 0.0)


def _check_grouped(rewards: Tensor, valid: Tensor, group_size: int) -> None:
    if rewards.dim() != 1:
        raise ValueError(
            f"rewards must be 1-D [B*G] (one scalar per sample), got shape "
            f"{tuple(rewards.shape)}; flatten the groups, prompt by prompt"
        )
    if valid.shape != rewards.shape:
        raise ValueError(
            f"valid {tuple(valid.shape)} must have the shape of rewards {tuple(rewards.shape)}"
        )
    if group_size < 1 or rewards.numel() % group_size:
        raise ValueError(
            f"{rewards.numel()} rewards do not split into groups of {group_size}: "
            "pass the number of samples per prompt, with whole groups only"
        )
