"""Policy losses and aggregations against values worked out by hand.

Ratios are set through the logprobs: old_logp = 0 and logp = log(ratio), so
r = exp(logp - old_logp) is exactly the ratio written in the comment.
"""

from __future__ import annotations

import functools
import math

import pytest
import torch
from torch.testing import assert_close

from referee.trainer.algorithms import (
    gspo_loss,
    logprob_gap,
    ppo_clip_loss,
    seq_mean_token_sum_norm,
    sequence_mean,
    tis_weights,
    token_mean,
)

TOL = {"atol": 1e-6, "rtol": 1e-6}


def t(values) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float32)


def k3(r: float) -> float:
    return (r - 1) - math.log(r)


# The PPO fixture: 2 sequences, T = 3.
#   row 0, A = +1, ratios [1.5, 1.25, 0.5] (3 tokens)
#   row 1, A = -2, ratios [1.5, 0.5, pad]   (2 tokens; pad holds garbage logprobs)
# With clip_low = 0.2, clip_high = 0.28 (DAPO), bounds [0.8, 1.28]. Per-token loss
# -min(r A, clip(r) A):
#   (0,0) r 1.5,  A>0: min(1.5, 1.28)          = 1.28   clipped  -> -1.28
#   (0,1) r 1.25, A>0: min(1.25, 1.25)         = 1.25   free     -> -1.25
#         (symmetric 0.2 would clip it: 1.2)
#   (0,2) r 0.5,  A>0: min(0.5, 0.8)           = 0.5    free     -> -0.5
#         (below 1 - clip_low but A > 0: the floor does not bind)
#   (1,0) r 1.5,  A<0: min(-3, -2.56)          = -3     free     -> 3
#         (above 1 + clip_high but A < 0: the ceiling does not bind)
#   (1,1) r 0.5,  A<0: min(-1, -1.6)           = -1.6   clipped  -> 1.6
RATIOS = [[1.5, 1.25, 0.5], [1.5, 0.5, 1.0]]
MASK = [[1, 1, 1], [1, 1, 0]]
ADV = [1.0, -2.0]
TOKEN_LOSSES = [[-1.28, -1.25, -0.5], [3.0, 1.6]]


def ppo_inputs():
    logp = torch.log(t(RATIOS))
    logp[1, 2] = 80.0  # garbage under the pad: exp(80 - old) would overflow,
    logp.requires_grad_(True)
    old = torch.zeros(2, 3)
    old[1, 2] = math.nan  # and NaN * 0 is NaN: the mask must select, not multiply
    old.requires_grad_(True)  # must not receive a gradient
    return logp, old, t(ADV), torch.tensor(MASK, dtype=torch.bool)


def test_ppo_clip_higher_token_mean_by_hand():
    logp, old, adv, mask = ppo_inputs()
    out = ppo_clip_loss(logp, old, adv, mask, clip_low=0.2, clip_high=0.28)
    # token mean: (-1.28 - 1.25 - 0.5 + 3 + 1.6) / 5 = 1.57 / 5 = 0.314
    assert_close(out.loss, torch.tensor(0.314), **TOL)
    # clipped tokens (0,0) and (1,1): 2 / 5
    assert_close(out.clip_fraction, torch.tensor(0.4), **TOL)
    # ratio mean: (1.5 + 1.25 + 0.5 + 1.5 + 0.5) / 5 = 1.05
    assert_close(out.ratio_mean, torch.tensor(1.05), **TOL)
    # approx KL (k3 of the ratio): (2 k3(1.5) + k3(1.25) + 2 k3(0.5)) / 5
    #   = (2 * 0.094535 + 0.026856 + 2 * 0.193147) / 5 = 0.120444
    expected_kl = (2 * k3(1.5) + k3(1.25) + 2 * k3(0.5)) / 5
    assert_close(out.approx_kl, torch.tensor(expected_kl), **TOL)


def test_ppo_symmetric_clip_differs_from_clip_higher():
    # Symmetric 0.2, bounds [0.8, 1.2]: token (0,1), r = 1.25 > 1.2 with A > 0, is now
    # clipped too: -min(1.25, 1.2) = -1.2; token (0,0) becomes -min(1.5, 1.2) = -1.2.
    # Sum = -1.2 - 1.2 - 0.5 + 3 + 1.6 = 1.7; token mean 1.7 / 5 = 0.34.
    # Clipped: (0,0), (0,1), (1,1) -> 3 / 5.
    logp, old, adv, mask = ppo_inputs()
    out = ppo_clip_loss(logp, old, adv, mask, clip_low=0.2, clip_high=0.2)
    assert_close(out.loss, torch.tensor(0.34), **TOL)
    assert_close(out.clip_fraction, torch.tensor(0.6), **TOL)


def test_ppo_gradient_by_hand_and_only_through_new_logprobs():
    # d loss / d logp = -A r / 5 on free tokens (d r / d logp = r), 0 on clipped and pad:
    #   (0,0) clipped 0; (0,1) -1 * 1.25 / 5 = -0.25; (0,2) -1 * 0.5 / 5 = -0.1;
    #   (1,0) 2 * 1.5 / 5 = 0.6; (1,1) clipped 0; (1,2) pad 0.
    logp, old, adv, mask = ppo_inputs()
    adv.requires_grad_(True)
    out = ppo_clip_loss(logp, old, adv, mask, clip_low=0.2, clip_high=0.28)
    out.loss.backward()
    assert_close(logp.grad, t([[0, -0.25, -0.1], [0.6, 0, 0]]), **TOL)
    assert old.grad is None
    assert adv.grad is None
    for stat in (out.clip_fraction, out.approx_kl, out.ratio_mean):
        assert not stat.requires_grad


def test_ppo_sequence_mean_by_hand():
    # row 0: (-1.28 - 1.25 - 0.5) / 3 = -1.01; row 1: (3 + 1.6) / 2 = 2.3;
    # mean over sequences: (-1.01 + 2.3) / 2 = 0.645 (token mean gave 0.314).
    logp, old, adv, mask = ppo_inputs()
    out = ppo_clip_loss(logp, old, adv, mask, clip_high=0.28, aggregation=sequence_mean)
    assert_close(out.loss, torch.tensor(0.645), **TOL)


def test_ppo_dr_grpo_constant_normaliser_by_hand():
    # max_len 4: row 0 -3.03 / 4 = -0.7575; row 1 4.6 / 4 = 1.15; mean 0.19625.
    logp, old, adv, mask = ppo_inputs()
    agg = functools.partial(seq_mean_token_sum_norm, max_len=4)
    out = ppo_clip_loss(logp, old, adv, mask, clip_high=0.28, aggregation=agg)
    assert_close(out.loss, torch.tensor(0.19625), **TOL)
    # default max_len is the padded width T = 3: (-3.03/3 + 4.6/3) / 2 = 0.261667
    out = ppo_clip_loss(logp, old, adv, mask, clip_high=0.28, aggregation=seq_mean_token_sum_norm)
    assert_close(out.loss, torch.tensor((-3.03 + 4.6) / 3 / 2), **TOL)


def test_aggregations_on_unequal_lengths_by_hand():
    # values row 0 [1, 2, 3] (3 tokens), row 1 [10, pad] (1 token), row 2 all masked.
    values = t([[1, 2, 3], [10, 99, 99], [7, 7, 7]])
    mask = torch.tensor([[1, 1, 1], [1, 0, 0], [0, 0, 0]], dtype=torch.bool)
    # token mean: (1+2+3+10) / 4 = 4
    assert_close(token_mean(values, mask), torch.tensor(4.0), **TOL)
    # sequence mean: (2 + 10) / 2 = 6 (the empty row 2 is not a sequence)
    assert_close(sequence_mean(values, mask), torch.tensor(6.0), **TOL)
    # Dr. GRPO, max_len 4: (6/4 + 10/4) / 2 = 2
    assert_close(seq_mean_token_sum_norm(values, mask, max_len=4), torch.tensor(2.0), **TOL)
    # explicit global denominators (e.g. 8 tokens / 4 sequences across ranks)
    assert_close(token_mean(values, mask, num_tokens=8), torch.tensor(2.0), **TOL)
    assert_close(sequence_mean(values, mask, num_sequences=4), torch.tensor(3.0), **TOL)
    # nothing valid: 0, not NaN
    none = torch.zeros_like(mask)
    assert_close(token_mean(values, none), torch.tensor(0.0))
    assert_close(sequence_mean(values, none), torch.tensor(0.0))


def test_ppo_dual_clip_by_hand():
    # A = -1, ratios [5, 2], clip 0.2/0.28, c = 3:
    #   r 5: max(5, 1.28) = 5 -> capped at -A c = 3 (gradient 0);
    #   r 2: max(2, 1.28) = 2 < 3 -> 2.
    # token mean (3 + 2) / 2 = 2.5 (without dual-clip (5 + 2) / 2 = 3.5).
    logp = torch.log(t([[5.0, 2.0]])).requires_grad_(True)
    old, mask = torch.zeros(1, 2), torch.ones(1, 2, dtype=torch.bool)
    out = ppo_clip_loss(logp, old, t([-1.0]), mask, clip_high=0.28, clip_ratio_c=3.0)
    assert_close(out.loss, torch.tensor(2.5), **TOL)
    assert_close(out.clip_fraction, torch.tensor(0.5), **TOL)
    out.loss.backward()
    # token 2: d/dlogp (-A r / 2) = 2 / 2 = 1
    assert_close(logp.grad, t([[0.0, 1.0]]), **TOL)
    plain = ppo_clip_loss(logp, old, t([-1.0]), mask, clip_high=0.28)
    assert_close(plain.loss, torch.tensor(3.5), **TOL)
    # A > 0 is untouched by dual-clip: r = 5, default clip_high 0.2 -> -min(5, 1.2) = -1.2.
    pos = ppo_clip_loss(logp[:, :1], old[:, :1], t([1.0]), mask[:, :1], clip_ratio_c=3.0)
    assert_close(pos.loss, torch.tensor(-1.2), **TOL)


def test_ppo_token_level_advantages_and_bf16():
    # [N, T] advantages [2, 1] with ratio 1 everywhere: per-token loss -A = (-2, -1),
    # token mean -1.5; gradient -A r / 2 = (-1, -0.5). bf16 in, fp32 loss, bf16 grad.
    logp = torch.zeros(1, 2, dtype=torch.bfloat16, requires_grad=True)
    old = torch.zeros(1, 2, dtype=torch.bfloat16)
    out = ppo_clip_loss(logp, old, t([[2.0, 1.0]]), torch.ones(1, 2))
    assert out.loss.dtype == torch.float32
    assert_close(out.loss, torch.tensor(-1.5), **TOL)
    out.loss.backward()
    assert logp.grad.dtype == torch.bfloat16
    assert_close(logp.grad.float(), t([[-1.0, -0.5]]), **TOL)


def test_ppo_rejects_bad_arguments():
    logp, old, adv, mask = ppo_inputs()
    with pytest.raises(ValueError, match="clip_ratio_c"):
        ppo_clip_loss(logp, old, adv, mask, clip_ratio_c=0.5)
    with pytest.raises(ValueError, match="clip_low"):
        ppo_clip_loss(logp, old, adv, mask, clip_low=1.0)
    with pytest.raises(ValueError, match="advantages"):
        ppo_clip_loss(logp, old, t([1.0, 2.0, 3.0]), mask)
    with pytest.raises(ValueError, match=r"\[N, T\]"):
        ppo_clip_loss(logp, old[:, :2], adv, mask)


# --- GSPO ----------------------------------------------------------------------------
# 3 sequences, T = 3, clip [1 - 3e-4, 1 + 4e-4] = [0.9997, 1.0004]:
#   row 0, A = -1, log ratios [1e-4, 2e-4, 3e-4]  -> mean 2e-4, s = exp(2e-4) = 1.00020002
#          inside the range: free. Per-token loss -A s = 1.00020002.
#   row 1, A = +3, log ratios [1e-3, 0, pad]      -> mean 5e-4, s = 1.00050013 > 1.0004
#          with A > 0: clipped. Per-token loss -3 * 1.0004 = -3.0012.
#   row 2, A = -1, log ratios [-5e-4] * 3        -> s = exp(-5e-4) = 0.99950012 < 0.9997
#          with A < 0: clipped. Per-token loss -min(-0.9995, -0.9997) = 0.9997.
# sequence mean: (1.00020002 - 3.0012 + 0.9997) / 3 = -0.33376666.
GSPO_LOG_RATIOS = [[1e-4, 2e-4, 3e-4], [1e-3, 0.0, 5.0], [-5e-4, -5e-4, -5e-4]]
GSPO_MASK = [[1, 1, 1], [1, 1, 0], [1, 1, 1]]
GSPO_ADV = [-1.0, 3.0, -1.0]


def gspo_inputs():
    logp = t(GSPO_LOG_RATIOS).requires_grad_(True)
    old = torch.zeros(3, 3, requires_grad=True)
    return logp, old, t(GSPO_ADV), torch.tensor(GSPO_MASK, dtype=torch.bool)


def test_gspo_sequence_ratio_and_clipping_by_hand():
    logp, old, adv, mask = gspo_inputs()
    out = gspo_loss(logp, old, adv, mask)
    s0 = math.exp(2e-4)
    assert_close(out.loss, torch.tensor((s0 - 3.0012 + 0.9997) / 3), atol=1e-6, rtol=1e-5)
    # clipped tokens: row 1 (2) + row 2 (3) of 8
    assert_close(out.clip_fraction, torch.tensor(5 / 8), **TOL)
    # ratio mean, token-weighted: (3 s0 + 2 s1 + 3 s2) / 8
    s1, s2 = math.exp(5e-4), math.exp(-5e-4)
    assert_close(out.ratio_mean, torch.tensor((3 * s0 + 2 * s1 + 3 * s2) / 8), **TOL)


def test_gspo_gradient_by_hand():
    # Free row 0: d/dlogp_t of (1/3) * (1/3) * sum_t -A s_{0,t} = -A s0 / 9 = s0 / 9
    # = 0.11113335 on each token. Clipped rows 1 and 2 and the pad: 0.
    logp, old, adv, mask = gspo_inputs()
    gspo_loss(logp, old, adv, mask).loss.backward()
    g = math.exp(2e-4) / 9
    assert_close(logp.grad, t([[g, g, g], [0, 0, 0], [0, 0, 0]]), **TOL)
    assert old.grad is None


def test_gspo_ratio_is_per_sequence_not_per_token():
    # Two sequences with the same mean log ratio but different token spreads have the
    # same s_i, hence the same loss and the same gradient on every token of a row.
    logp = t([[3e-4, 1e-4], [2e-4, 2e-4]]).requires_grad_(True)
    out = gspo_loss(logp, torch.zeros(2, 2), t([1.0, 1.0]), torch.ones(2, 2))
    out.loss.backward()
    assert_close(logp.grad[0], logp.grad[1], **TOL)
    assert_close(logp.grad[0, 0], logp.grad[0, 1], **TOL)
    # PPO on the same input weights tokens by their own ratios instead.
    logp.grad = None
    ppo_clip_loss(logp, torch.zeros(2, 2), t([1.0, 1.0]), torch.ones(2, 2)).loss.backward()
    assert not torch.allclose(logp.grad[0, 0], logp.grad[0, 1], atol=1e-9, rtol=0)


def test_gspo_token_gradient_equals_sequence_level_gspo():
    # The paper's claim: with one advantage per sequence, GSPO-token's gradient is that
    # of the sequence objective -1/G sum_i min(s_i A_i, clip(s_i) A_i), s_i differentiable.
    gen = torch.Generator().manual_seed(0)
    logp = (torch.randn(4, 5, generator=gen) * 3e-4).requires_grad_(True)
    old = torch.zeros(4, 5)
    adv = torch.randn(4, generator=gen)
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 0, 0, 0], [1, 1, 1, 0, 0], [1, 0, 0, 0, 0]])
    gspo_loss(logp, old, adv, mask).loss.backward()
    token_grad = logp.grad.clone()

    logp.grad = None
    m = mask.bool()
    s = torch.exp((logp * m).sum(-1) / m.sum(-1))  # [N]
    seq_obj = torch.minimum(s * adv, s.clamp(1 - 3e-4, 1 + 4e-4) * adv)
    (-seq_obj.mean()).backward()
    assert_close(token_grad, logp.grad, atol=1e-7, rtol=1e-5)
    assert token_grad[~m].abs().max() == 0


# --- train/rollout mismatch: the logprob gap and truncated importance sampling -------------

# The TIS fixture: the trainer's old logprobs are 0, the rollout engine's are -log(r), so
# pi_old / pi_rollout = exp(0 + log r) = r exactly:
#   row 0, A = +1, r [0.5, 1.0, 4.0]   (3 tokens)
#   row 1, A = -2, r [1.5, 3.0, pad]   (2 tokens; the engine's pad logprob is -inf)
# cap 2: weights min(r, 2) = [[0.5, 1, 2], [1.5, 2, -]].
TIS_RATIOS = [[0.5, 1.0, 4.0], [1.5, 3.0, 1.0]]


def tis_inputs():
    old = torch.zeros(2, 3)
    rollout = -torch.log(t(TIS_RATIOS))
    rollout[1, 2] = -math.inf  # garbage under the pad must not reach anything
    return old, rollout, torch.tensor(MASK, dtype=torch.bool)


def test_tis_weights_by_hand():
    old, rollout, mask = tis_inputs()
    w = tis_weights(old, rollout, mask, cap=2.0)
    assert_close(w, t([[0.5, 1.0, 2.0], [1.5, 2.0, 1.0]]), **TOL)  # pad: 1
    assert not w.requires_grad
    with pytest.raises(ValueError, match="cap must be >= 1"):
        tis_weights(old, rollout, mask, cap=0.5)
    with pytest.raises(ValueError, match=r"must all be \[N, T\]"):
        tis_weights(old, rollout[:, :2], mask, cap=2.0)


def test_logprob_gap_by_hand():
    # |gap| = |log r| = [log 2, 0, log 4, log 1.5, log 3]; mean 3.583519 / 5 = 0.716704;
    # max log 4 = 1.386294; mean exp(gap) = (0.5 + 1 + 4 + 1.5 + 3) / 5 = 2.
    old, rollout, mask = tis_inputs()
    gap = logprob_gap(old, rollout, mask)
    logs = [math.log(2), 0.0, math.log(4), math.log(1.5), math.log(3)]
    assert_close(gap.mean_abs, torch.tensor(sum(logs) / 5), **TOL)
    assert_close(gap.max_abs, torch.tensor(math.log(4)), **TOL)
    assert_close(gap.ratio_mean, torch.tensor(2.0), **TOL)
    same = logprob_gap(old, old, mask)
    assert float(same.mean_abs) == float(same.max_abs) == 0.0 and float(same.ratio_mean) == 1.0


def test_ppo_with_tis_weights_by_hand():
    # logp = old: the PPO ratio is 1 everywhere (nothing clips), so each token's loss is
    # -A * w: row 0: -0.5, -1, -2; row 1: 2 * 1.5 = 3, 2 * 2 = 4. Token mean
    # (-3.5 + 7) / 5 = 0.7 (unweighted: (-3 + 4) / 5 = 0.2).
    # Gradient -A * r * w / 5 = row 0: -0.1, -0.2, -0.4; row 1: 0.6, 0.8, pad 0.
    old, rollout, mask = tis_inputs()
    w = tis_weights(old, rollout, mask, cap=2.0)
    logp = old.clone().requires_grad_(True)
    out = ppo_clip_loss(logp, old, t(ADV), mask, clip_low=0.2, clip_high=0.28, token_weights=w)
    assert_close(out.loss, torch.tensor(0.7), **TOL)
    out.loss.backward()
    assert_close(logp.grad, t([[-0.1, -0.2, -0.4], [0.6, 0.8, 0.0]]), **TOL)
    plain = ppo_clip_loss(old, old, t(ADV), mask)
    assert_close(plain.loss, torch.tensor(0.2), **TOL)
    assert_close(out.ratio_mean, torch.tensor(1.0), **TOL)  # diagnostics are unweighted
    # GSPO takes the same weights (its ratio is 1 here too): sequence mean of
    # row 0 (-3.5 / 3) and row 1 (7 / 2) = (-1.166667 + 3.5) / 2 = 1.166667.
    g = gspo_loss(old, old, t(ADV), mask, token_weights=w)
    assert_close(g.loss, torch.tensor((-3.5 / 3 + 3.5) / 2), **TOL)
    with pytest.raises(ValueError, match="token_weights"):
        ppo_clip_loss(old, old, t(ADV), mask, token_weights=w[:, :2])
