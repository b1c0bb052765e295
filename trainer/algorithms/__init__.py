"""RL algorithms as pure functions over tensors: advantages, policy losses, KL, filters,
and the preference losses (Bradley-Terry, DPO, IPO).

One function per estimator or loss; the registries map the names a config uses to them.
A recipe composes them, e.g. GRPO with DAPO's filters:

    informative = expand_group_mask(informative_groups(rewards, valid, G), G)  # [N]
    keep = valid & informative & overlong_mask(finish_reasons)  # [N]
    adv = grpo_advantages(rewards, valid, G)  # [N]
    out = ppo_clip_loss(logp, old_logp, adv, loss_mask(response_mask, keep),
                        clip_low=0.2, clip_high=0.28)
    out.loss.backward()

Group statistics read `valid` only (a truncated answer still has a reward that says
something about the prompt); the filters decide which samples reach the loss.

Shapes: N = B*G samples (B prompts, G samples each, grouped contiguously), T response
tokens (right-padded), V vocabulary.
"""

from referee.trainer.algorithms.advantages import (
    ADVANTAGE_ESTIMATORS,
    AdvantageEstimator,
    GroupStats,
    dr_grpo_advantages,
    group_stats,
    grpo_advantages,
    reinforce_pp_advantages,
    reinforce_pp_baseline_advantages,
    reinforce_pp_token_advantages,
    rloo_advantages,
    token_advantages,
)
from referee.trainer.algorithms.filters import (
    informative_groups,
    overlong_mask,
    overlong_penalty,
)
from referee.trainer.algorithms.kl import (
    KL_ESTIMATORS,
    KLEstimator,
    entropy_from_logits,
    kl_k1,
    kl_k2,
    kl_k3,
    kl_penalized_rewards,
    kl_penalized_token_rewards,
)
from referee.trainer.algorithms.masking import (
    expand_group_mask,
    loss_mask,
    masked_mean,
    masked_sum,
)
from referee.trainer.algorithms.mismatch import LogprobGap, logprob_gap, tis_weights
from referee.trainer.algorithms.policy_loss import (
    AGGREGATIONS,
    POLICY_LOSSES,
    Aggregation,
    PolicyLoss,
    gspo_loss,
    ppo_clip_loss,
    seq_mean_token_sum_norm,
    sequence_mean,
    token_mean,
)
from referee.trainer.algorithms.preference import (
    PREFERENCE_LOSSES,
    PreferenceLoss,
    bradley_terry_loss,
    dpo_loss,
    ipo_loss,
    pairwise_accuracy,
)

__all__ = [
    "ADVANTAGE_ESTIMATORS",
    "AGGREGATIONS",
    "KL_ESTIMATORS",
    "POLICY_LOSSES",
    "PREFERENCE_LOSSES",
    "AdvantageEstimator",
    "Aggregation",
    "GroupStats",
    "KLEstimator",
    "LogprobGap",
    "PolicyLoss",
    "PreferenceLoss",
    "bradley_terry_loss",
    "dpo_loss",
    "dr_grpo_advantages",
    "entropy_from_logits",
    "expand_group_mask",
    "group_stats",
    "grpo_advantages",
    "gspo_loss",
    "informative_groups",
    "ipo_loss",
    "kl_k1",
    "kl_k2",
    "kl_k3",
    "kl_penalized_rewards",
    "kl_penalized_token_rewards",
    "logprob_gap",
    "loss_mask",
    "masked_mean",
    "masked_sum",
    "overlong_mask",
    "overlong_penalty",
    "pairwise_accuracy",
    "ppo_clip_loss",
    "reinforce_pp_advantages",
    "reinforce_pp_baseline_advantages",
    "reinforce_pp_token_advantages",
    "rloo_advantages",
    "seq_mean_token_sum_norm",
    "sequence_mean",
    "tis_weights",
    "token_advantages",
    "token_mean",
]
