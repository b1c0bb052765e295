"""KL to a frozen reference policy, KL-penalised rewards, and entropy from logits.

KL direction: everything here estimates the reverse KL the RLHF objective penalises,

    KL(pi_theta || pi_ref) = E_{y ~ pi_theta} [log pi_theta(y) - log pi_ref(y)],

from tokens sampled by the policy (in practice by pi_old, close to pi_theta). With
r = pi_ref(y) / pi_theta(y) per token, Schulman's estimators ("Approximating KL
Divergence", 2020, http://joschu.net/blog/kl-approx.html) are

    k1 = -log r                 unbiased, high variance, negative on some tokens;
    k2 = (log r)^2 / 2          biased, low variance, >= 0;
    k3 = (r - 1) - log r        unbiased, low variance, >= 0 (GRPO's, DeepSeekMath Eq. 4).

Two ways to use them, both off by default in the trainer:

- *in the reward* (InstructGPT, REINFORCE++): subtract beta * KL from the reward with
  `kl_penalized_rewards` / `kl_penalized_token_rewards`; the KL is a detached number
  there, so k1 (unbiased) is the usual choice.
- *in the loss* (GRPO): add beta * masked_mean(kl_kX(logp, ref_logp, mask), mask) to the
  policy loss. Then the estimator's gradient matters, not only its value: on-policy,
  the expected gradient of k2 is exactly grad KL(pi_theta || pi_ref); that of k3 is
  grad KL(pi_ref || pi_theta) (the forward KL, a different penalty); that of k1 is 0.
  (The tests check the k2 and k3 identities on an exact expectation.)

Each estimator is per token, in fp32, 0 on masked tokens, and takes gradient through
`logp` only (`ref_logp` is detached).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from referee.trainer.algorithms.masking import as_bool, masked_mean, masked_sum

__all__ = [
    "KL_ESTIMATORS",
    "KLEstimator",
    "entropy_from_logits",
    "kl_k1",
    "kl_k2",
    "kl_k3",
    "kl_penalized_rewards",
    "kl_penalized_token_rewards",
    "masked_mean",
]

KLEstimator = Callable[..., Tensor]
"""`(logp [N, T], ref_logp [N, T], mask [N, T] | None) -> per-token KL [N, T]`."""

_MAX_LOG_RATIO = 20.0
"""k3 exponentiates log r; beyond |20| (r ~ 5e8) the value is meaningless anyway."""


def kl_k1(logp: Tensor, ref_logp: Tensor, mask: Tensor | None = None) -> Tensor:
    """k1 = log pi_theta - log pi_ref per token: the plain log ratio.

    Unbiased for KL(pi_theta || pi_ref) under samples of pi_theta, but individual tokens
    go negative and the variance is high. Its sum over a response is the sequence-level
    log ratio log pi_theta(y) / pi_ref(y). `[N, T]` -> `[N, T]` fp32, 0 where masked.
    """
    return _neg_log_r(logp, ref_logp, mask)  # [N, T]


def kl_k2(logp: Tensor, ref_logp: Tensor, mask: Tensor | None = None) -> Tensor:
    """k2 = (log pi_theta - log pi_ref)^2 / 2 per token.

    Biased (its expectation is the f-divergence with f(r) = (log r)^2 / 2, which agrees
    with the KL only to second order), low variance, never negative; as a loss its on-policy gradient is the true gradient of
    KL(pi_theta || pi_ref). `[N, T]` -> `[N, T]` fp32, 0 where masked.
    """
    return 0.5 * _neg_log_r(logp, ref_logp, mask) ** 2  # [N, T]


def kl_k3(logp: Tensor, ref_logp: Tensor, mask: Tensor | None = None) -> Tensor:
    """k3 = (r - 1) - log r per token, r = pi_ref / pi_theta.

    Unbiased (E[r - 1] = 0 under pi_theta) and >= 0 (log r <= r - 1): the estimator in
    GRPO's loss (DeepSeekMath, arXiv:2402.03300, Eq. 4). log r is clamped to [-20, 20]
    before the exp so one wild token cannot overflow. `[N, T]` -> `[N, T]` fp32, 0 where
    masked.
    """
    log_r = (-_neg_log_r(logp, ref_logp, mask)).clamp(-_MAX_LOG_RATIO, _MAX_LOG_RATIO)
    return log_r.exp() - 1.0 - log_r  # [N, T]


KL_ESTIMATORS: dict[str, KLEstimator] = {"k1": kl_k1, "k2": kl_k2, "k3": kl_k3}
"""Name (as written in a config) -> estimator."""


def kl_penalized_rewards(rewards: Tensor, kl: Tensor, mask: Tensor, beta: float) -> Tensor:
    """Sequence-level "KL in the reward": r_i - beta * sum_t KL_{i,t}.

    The sum (not the mean) over the response's tokens, because with k1 it is exactly the
    sequence's log ratio log pi_theta(y) / pi_ref(y), the single-sample estimate of the
    sequence KL that the RLHF objective r - beta * KL penalises (Ziegler et al. 2019,
    arXiv:1909.08593; Ouyang et al. 2022, Eq. 2). Feed the result to any advantage
    estimator. The KL is detached: a reward is a number, not a path for gradients.
    A failed sample's placeholder reward passes through untouched (the estimators ignore
    it through `valid`).

    rewards: `[N]`; kl: `[N, T]` from `kl_k1/2/3`; mask: `[N, T]`. Returns `[N]` fp32.
    """
    return rewards.float() - beta * masked_sum(kl.detach(), mask, dim=-1)  # [N]


def kl_penalized_token_rewards(rewards: Tensor, kl: Tensor, mask: Tensor, beta: float) -> Tensor:
    """Token-level "KL in the reward": -beta * KL_t on every token, plus r on the last.

    The per-token reward of PPO-style RLHF (Ouyang et al. 2022) and REINFORCE++ (Hu 2025,
    arXiv:2501.03262): the outcome reward arrives with the final response token, and each
    token pays for its own divergence from the reference. Use with
    `advantages.reinforce_pp_token_advantages`, whose reward-to-go turns this into
    r - beta * sum_{s >= t} KL_s. A row with no valid token (a masked-out sample) gets 0
    everywhere, its reward included. The KL is detached.

    rewards: `[N]`; kl, mask: `[N, T]`. Returns `[N, T]` fp32.
    """
    m = as_bool(mask)  # [N, T]
    positions = torch.arange(m.shape[-1], device=m.device).expand(m.shape)  # [N, T]
    last = torch.where(m, positions, -1).amax(-1, keepdim=True)  # [N, 1], -1 if none
    is_last = m & (positions == last)  # [N, T]
    outcome = torch.where(is_last, rewards.float()[:, None], 0.0)  # [N, T]
    return outcome - beta * torch.where(m, kl.detach().float(), 0.0)  # [N, T]


def entropy_from_logits(logits: Tensor, chunk_size: int = 1024) -> Tensor:
    """Entropy of the next-token distribution at each position, in fp32.

    H = logsumexp(z) - sum_v softmax(z)_v z_v, computed `chunk_size` positions at a time
    so the fp32 copy of the logits (and its softmax) exists for one chunk only: a full
    fp32 upcast of [N, T, V] with V = 150k is several GB. Under `torch.no_grad()` (for
    logging) memory stays at one chunk; with grad (an entropy bonus) autograd keeps each
    chunk's softmax, the cost of the bonus itself.

    -inf logits (tokens filtered out of the sampling distribution) are allowed.

    logits: `[N, T, V]` any float dtype. Returns `[N, T]` fp32 (mask it yourself, e.g.
    `masked_mean(entropy, mask)`).
    """
    flat = logits.reshape(-1, logits.shape[-1])  # [N*T, V]
    parts = []
    for chunk in flat.split(chunk_size):
        z = chunk.float()  # [c, V]
        log_z = torch.logsumexp(z, dim=-1)  # [c]
        # A -inf logit (a token masked out by top-k/top-p) has p = 0: its p * z term is 0,
        # not 0 * -inf = NaN, so read it as 0.
        z_finite = torch.where(torch.isneginf(z), 0.0, z)  # [c, V]
        parts.append(log_z - (torch.softmax(z, dim=-1) * z_finite).sum(-1))  # [c]
    return torch.cat(parts).view(logits.shape[:-1])  # [N, T]


def _neg_log_r(logp: Tensor, ref_logp: Tensor, mask: Tensor | None) -> Tensor:
    """log pi_theta - log pi_ref in fp32 (= -log r), 0 where masked; ref detached."""
    if logp.shape != ref_logp.shape:
        raise ValueError(
            f"logp {tuple(logp.shape)} and ref_logp {tuple(ref_logp.shape)} must match"
        )
    diff = logp.float() - ref_logp.detach().float()
    return diff if mask is None else torch.where(as_bool(mask), diff, 0.0)
