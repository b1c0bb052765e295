"""Preference losses over chosen/rejected pairs (one function per loss), pure tensors.

Inputs are per-pair numbers, B pairs:

- a reward model's scalar scores `chosen_scores` / `rejected_scores` `[B]` (Bradley-Terry);
- or, for the DPO family, sequence log-probabilities `[B]` (sums over the completion's
  tokens) of the chosen and rejected completions under the policy (carrying grad) and
  under the frozen reference (constants; detached here).

Each returns a `PreferenceLoss`: the scalar to minimise (mean over pairs) and detached
per-pair diagnostics, the implicit (or explicit) rewards of both sides, their margin, and
the pairwise accuracy (margin > 0; a tie counts as wrong, so an untrained DPO policy,
which equals its reference and gives every margin exactly 0, scores 0, not 0.5).

Everything is computed in fp32.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "PREFERENCE_LOSSES",
    "PreferenceLoss",
    "PreferenceLossFn",
    "bradley_terry_loss",
    "dpo_loss",
    "ipo_loss",
    "pairwise_accuracy",
]


@dataclass
class PreferenceLoss:
    """A preference loss and what it says about each pair (all but `loss` detached)."""

    loss: Tensor  # [] mean over pairs, carries grad
    chosen_rewards: Tensor  # [B] score (BT) or beta * (logp - ref_logp) (DPO) of the chosen side
    rejected_rewards: Tensor  # [B] the same for the rejected side
    margins: Tensor  # [B] chosen_rewards - rejected_rewards
    accuracy: Tensor  # [] fraction of pairs with margin > 0


def pairwise_accuracy(margins: Tensor) -> Tensor:  # [B] -> []
    """Fraction of pairs ranked the right way (margin strictly above 0); 0 for no pairs."""
    if margins.numel() == 0:
        return margins.new_zeros(())
    return (margins > 0).float().mean()


def _result(loss: Tensor, chosen: Tensor, rejected: Tensor) -> PreferenceLoss:
    chosen, rejected = chosen.detach(), rejected.detach()  # [B]
    margins = chosen - rejected  # [B]
    return PreferenceLoss(loss, chosen, rejected, margins, pairwise_accuracy(margins))


def bradley_terry_loss(
    chosen_scores: Tensor,  # [B] reward-model score of the chosen completion (grad)
    rejected_scores: Tensor,  # [B] score of the rejected completion (grad)
    margin: Tensor | float = 0.0,  # [B] or scalar: how far apart the pair should be
) -> PreferenceLoss:
    """-log sigmoid(r_chosen - r_rejected - margin), averaged over pairs.

    The Bradley-Terry model (Bradley & Terry 1952) of P(chosen > rejected) =
    sigmoid(r_c - r_r), fitted by maximum likelihood, as in InstructGPT's reward model
    (Ouyang et al. 2022, arXiv:2203.02155, Eq. 1). `margin` is Llama 2's
    (arXiv:2307.09288, §3.2.2): a pair rated far apart must be separated by at least
    that much before the loss lets go. Only the difference of scores is trained, so the
    reward's offset is arbitrary. Margins in the result are r_c - r_r (without `margin`).
    """
    c, r = chosen_scores.float(), rejected_scores.float()  # [B]
    loss = -F.logsigmoid(c - r - margin).mean()
    return _result(loss, c, r)


def _dpo_logits(
    policy_chosen: Tensor,  # [B]
    policy_rejected: Tensor,  # [B]
    ref_chosen: Tensor,  # [B]
    ref_rejected: Tensor,  # [B]
) -> tuple[Tensor, Tensor, Tensor]:
    """(h, chosen log-ratio, rejected log-ratio), `[B]` each, with
    h = (log pi(y_c) - log ref(y_c)) - (log pi(y_r) - log ref(y_r))."""
    chosen = policy_chosen.float() - ref_chosen.detach().float()  # [B]
    rejected = policy_rejected.float() - ref_rejected.detach().float()  # [B]
    return chosen - rejected, chosen, rejected


def dpo_loss(
    policy_chosen: Tensor,  # [B] sum log pi_theta(y_c | x) (grad)
    policy_rejected: Tensor,  # [B] sum log pi_theta(y_r | x) (grad)
    ref_chosen: Tensor,  # [B] sum log pi_ref(y_c | x)
    ref_rejected: Tensor,  # [B] sum log pi_ref(y_r | x)
    *,
    beta: float = 0.1,
    label_smoothing: float = 0.0,
) -> PreferenceLoss:
    """DPO: -log sigmoid(beta * h), h the difference of the two log-ratios to the reference.

    Rafailov et al. 2023 (arXiv:2305.18290, Eq. 7). The implicit reward of a completion is
    beta * (log pi(y|x) - log ref(y|x)); the margin is beta * h.

    `label_smoothing` eps is conservative DPO (Mitchell 2023, "A note on DPO with noisy
    preferences"): each label is taken to be flipped with probability eps, so the loss is
    -(1 - eps) log sigmoid(beta h) - eps log sigmoid(-beta h), which stops pushing once
    sigmoid(beta h) reaches 1 - eps instead of driving the margin to infinity.
    eps in [0, 0.5).
    """
    if not 0.0 <= label_smoothing < 0.5:
        raise ValueError(f"label_smoothing must be in [0, 0.5), got {label_smoothing}")
    h, chosen, rejected = _dpo_logits(policy_chosen, policy_rejected, ref_chosen, ref_rejected)
    z = beta * h  # [B]
    per_pair = -(1 - label_smoothing) * F.logsigmoid(z) - label_smoothing * F.logsigmoid(-z)
    return _result(per_pair.mean(), beta * chosen, beta * rejected)


def ipo_loss(
    policy_chosen: Tensor,  # [B] sum log pi_theta(y_c | x) (grad)
    policy_rejected: Tensor,  # [B] sum log pi_theta(y_r | x) (grad)
    ref_chosen: Tensor,  # [B] sum log pi_ref(y_c | x)
    ref_rejected: Tensor,  # [B] sum log pi_ref(y_r | x)
    *,
    beta: float = 0.1,
    label_smoothing: float = 0.0,
) -> PreferenceLoss:
    """IPO: (h - 1 / (2 beta))^2, a squared loss that regresses the log-ratio difference
    to a finite target instead of pushing it to infinity.

    Azar et al. 2023 (arXiv:2310.12036, Eq. 17, with their tau as `beta`). Here `h` is
    built from whatever log-probabilities are passed: the recipe passes sums over the
    completion's tokens, as in the paper (TRL passes per-token means for IPO; with sums
    on long completions, use a smaller target, i.e. a larger beta). Implicit rewards are
    reported as beta * log-ratio, like DPO's, so the two are comparable. IPO has no
    label smoothing: `label_smoothing` must be 0 (it is accepted so the two losses are
    called the same way).
    """
    if label_smoothing != 0.0:
        raise ValueError("IPO has no label smoothing; set it to 0 (or use the sigmoid loss)")
    h, chosen, rejected = _dpo_logits(policy_chosen, policy_rejected, ref_chosen, ref_rejected)
    per_pair = (h - 1.0 / (2.0 * beta)) ** 2  # [B]
    return _result(per_pair.mean(), beta * chosen, beta * rejected)


PreferenceLossFn = Callable[..., PreferenceLoss]
"""`(policy_chosen, policy_rejected, ref_chosen, ref_rejected, *, beta, label_smoothing)`."""

PREFERENCE_LOSSES: dict[str, PreferenceLossFn] = {"sigmoid": dpo_loss, "ipo": ipo_loss}
"""The DPO-family losses by the name `preference.loss_type` uses."""
