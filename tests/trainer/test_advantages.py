"""Advantage estimators against values worked out by hand.

Layout everywhere: rewards [B*G], grouped contiguously by prompt; `valid` marks samples
whose reward status was OK. The arithmetic is in the comments.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch.testing import assert_close

from referee.trainer.algorithms import (
    ADVANTAGE_ESTIMATORS,
    dr_grpo_advantages,
    group_stats,
    grpo_advantages,
    reinforce_pp_advantages,
    reinforce_pp_baseline_advantages,
    reinforce_pp_token_advantages,
    rloo_advantages,
    token_advantages,
)

TOL = {"atol": 1e-5, "rtol": 1e-5}
S3 = math.sqrt(3.0)


def t(values) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float32)


def all_valid(n: int) -> torch.Tensor:
    return torch.ones(n, dtype=torch.bool)


# --- GRPO ----------------------------------------------------------------------------


def test_grpo_two_groups_by_hand():
    # Group 1 [1, 0, 0, 1]: mean 0.5; unbiased var = 4 * 0.5^2 / (4 - 1) = 1/3,
    # std = 1/sqrt(3) = 0.57735; A = ±0.5 / 0.57735 = ±sqrt(3)/2 = ±0.866025.
    # (The biased std, 0.5, would give ±1: this pins the convention.)
    # Group 2 [1, 1, 1, 1]: every reward equals the mean -> 0.
    adv = grpo_advantages(t([1, 0, 0, 1, 1, 1, 1, 1]), all_valid(8), group_size=4)
    h = S3 / 2
    assert_close(adv, t([h, -h, -h, h, 0, 0, 0, 0]), **TOL)


def test_grpo_non_binary_rewards():
    # [3, 1, 2, 6]: mean 3; deviations [0, -2, -1, 3]; unbiased var = (0+4+1+9)/3 = 14/3,
    # std = 2.160247; A = [0, -0.925820, -0.462910, 1.388730].
    adv = grpo_advantages(t([3, 1, 2, 6]), all_valid(4), group_size=4)
    std = math.sqrt(14 / 3)
    assert_close(adv, t([0, -2 / std, -1 / std, 3 / std]), **TOL)


def test_grpo_failed_sample_is_excluded_not_zero():
    # [1, 0, X, 1] with X failed: valid rewards {1, 0, 1}, mean 2/3,
    # unbiased var = ((1/3)^2 + (2/3)^2 + (1/3)^2) / 2 = (6/9) / 2 = 1/3, std = 1/sqrt(3);
    # A = [(1/3)*sqrt(3), -(2/3)*sqrt(3), 0, (1/3)*sqrt(3)] = [0.57735, -1.15470, 0, 0.57735].
    # Read as a 0 it would give group [1, 0, 0, 1] and ±0.866 instead.
    valid = torch.tensor([True, True, False, True])
    adv = grpo_advantages(t([1, 0, 0, 1]), valid, group_size=4)
    assert_close(adv, t([S3 / 3, -2 * S3 / 3, 0, S3 / 3]), **TOL)


@pytest.mark.parametrize("name", sorted(ADVANTAGE_ESTIMATORS))
@pytest.mark.parametrize("placeholder", [0.0, 1.0, -7.5, float("nan"), float("inf")])
def test_failed_placeholder_never_matters(name, placeholder):
    # Sample 2 (group 1) and sample 5 (group 2) failed. Whatever value sits in their
    # slot, every estimator must return exactly what it returns with the slot at 0.5,
    # and 0 for the failed samples themselves.
    estimator = ADVANTAGE_ESTIMATORS[name]
    valid = torch.tensor([True, True, False, True, True, False, True, True])
    base = t([1, 0, 0.5, 1, 0.25, 0.5, 1, 0])
    probe = base.clone()
    probe[2] = probe[5] = placeholder
    expected = estimator(base, valid, 4)
    got = estimator(probe, valid, 4)
    assert torch.isfinite(got).all()
    assert_close(got, expected, atol=0.0, rtol=0.0)
    assert got[2] == 0 and got[5] == 0


@pytest.mark.parametrize("name", ["grpo", "dr_grpo", "rloo", "reinforce_pp_baseline"])
def test_group_with_fewer_than_two_valid_gets_zero(name):
    # Group 1: only sample 0 valid -> no baseline -> all 0 (even sample 0's reward of 1).
    # Group 2: [0, 1] with both valid -> non-zero.
    valid = torch.tensor([True, False, True, True])
    adv = ADVANTAGE_ESTIMATORS[name](t([1, 5, 0, 1]), valid, 2)
    assert_close(adv[:2], t([0, 0]), atol=0.0, rtol=0.0)
    assert (adv[2] < 0) and (adv[3] > 0)


def test_grpo_bf16_input_computes_in_fp32():
    adv = grpo_advantages(t([1, 0, 0, 1]).bfloat16(), all_valid(4), group_size=4)
    assert adv.dtype == torch.float32
    h = S3 / 2
    assert_close(adv, t([h, -h, -h, h]), **TOL)


def test_group_stats_by_hand():
    # [3, 1, 2, 6 | 1, X, X, X]: means 3 and 1; std sqrt(14/3) and 0 (one valid sample).
    valid = torch.tensor([True] * 5 + [False] * 3)
    s = group_stats(t([3, 1, 2, 6, 1, 9, 9, 9]), valid, 4)
    assert_close(s.count.squeeze(-1), torch.tensor([4, 1]))
    assert_close(s.mean.squeeze(-1), t([3, 1]), **TOL)
    assert_close(s.std.squeeze(-1), t([math.sqrt(14 / 3), 0]), **TOL)
    assert s.usable.squeeze(-1).tolist() == [True, False]


@pytest.mark.parametrize(
    ("rewards", "valid", "group_size"),
    [
        (t([[1, 0], [0, 1]]), torch.ones(2, 2, dtype=torch.bool), 2),  # not 1-D
        (t([1, 0, 1]), all_valid(3), 2),  # not whole groups
        (t([1, 0, 1, 0]), all_valid(3), 2),  # valid shape differs
    ],
)
def test_bad_shapes_raise(rewards, valid, group_size):
    with pytest.raises(ValueError):
        grpo_advantages(rewards, valid, group_size)


# --- Dr. GRPO ------------------------------------------------------------------------


def test_dr_grpo_by_hand():
    # [3, 1, 2, 6]: mean 3 -> [0, -2, -1, 3] (no std). [1, 0, 0, 1]: mean 0.5 -> ±0.5.
    adv = dr_grpo_advantages(t([3, 1, 2, 6, 1, 0, 0, 1]), all_valid(8), group_size=4)
    assert_close(adv, t([0, -2, -1, 3, 0.5, -0.5, -0.5, 0.5]), **TOL)


def test_dr_grpo_with_failed_sample():
    # [3, X, 2, 6]: valid mean (3+2+6)/3 = 11/3 -> [3-11/3, 0, 2-11/3, 6-11/3]
    #             = [-2/3, 0, -5/3, 7/3].
    valid = torch.tensor([True, False, True, True])
    adv = dr_grpo_advantages(t([3, 1, 2, 6]), valid, group_size=4)
    assert_close(adv, t([-2 / 3, 0, -5 / 3, 7 / 3]), **TOL)


# --- RLOO ----------------------------------------------------------------------------


def test_rloo_by_hand():
    # [3, 1, 2, 6], sum 12. A_i = r_i - (12 - r_i)/3:
    #   3 - 9/3 = 0;  1 - 11/3 = -8/3;  2 - 10/3 = -4/3;  6 - 6/3 = 4.
    # [1, 0, 0, 1], sum 2: 1 - 1/3 = 2/3;  0 - 2/3 = -2/3.
    adv = rloo_advantages(t([3, 1, 2, 6, 1, 0, 0, 1]), all_valid(8), group_size=4)
    expected = t([0, -8 / 3, -4 / 3, 4, 2 / 3, -2 / 3, -2 / 3, 2 / 3])
    assert_close(adv, expected, **TOL)
    # RLOO = n/(n-1) * Dr. GRPO.
    dr = dr_grpo_advantages(t([3, 1, 2, 6, 1, 0, 0, 1]), all_valid(8), group_size=4)
    assert_close(adv, dr * 4 / 3, **TOL)


def test_rloo_with_failed_sample():
    # [1, 0, X, 1]: others of sample 0 are {0, 1} -> 1 - 0.5 = 0.5;
    # sample 1: 0 - (1+1)/2 = -1; sample 3: 1 - (1+0)/2 = 0.5; failed -> 0.
    valid = torch.tensor([True, True, False, True])
    adv = rloo_advantages(t([1, 0, 123, 1]), valid, group_size=4)
    assert_close(adv, t([0.5, -1, 0, 0.5]), **TOL)


# --- REINFORCE++ ---------------------------------------------------------------------


def test_reinforce_pp_batch_normalisation_by_hand():
    # Whole batch [1, 0, 0, 1, 1, 1, 1, 1]: mean 6/8 = 0.75;
    # population var = (6 * 0.25^2 + 2 * 0.75^2) / 8 = (0.375 + 1.125) / 8 = 0.1875,
    # std = 0.433013; A(1) = 0.25/0.433013 = 1/sqrt(3), A(0) = -0.75/0.433013 = -sqrt(3).
    # No group baseline: the all-ones group gets positive advantages too.
    adv = reinforce_pp_advantages(t([1, 0, 0, 1, 1, 1, 1, 1]), all_valid(8), group_size=4)
    p, n = 1 / S3, -S3
    assert_close(adv, t([p, n, n, p, p, p, p, p]), **TOL)


def test_reinforce_pp_failed_sample_excluded_from_batch_stats():
    # [2, X | 0, 4], X failed: valid {2, 0, 4}, mean 2, population var = (0+4+4)/3 = 8/3,
    # std = 1.632993; A = [0, 0, -2/1.632993, 2/1.632993] = [0, 0, -1.224745, 1.224745].
    valid = torch.tensor([True, False, True, True])
    adv = reinforce_pp_advantages(t([2, 0, 0, 4]), valid, group_size=2)
    s = math.sqrt(8 / 3)
    assert_close(adv, t([0, 0, -2 / s, 2 / s]), **TOL)


def test_reinforce_pp_baseline_by_hand():
    # Group-centred: [0.5, -0.5, -0.5, 0.5, 0, 0, 0, 0]; batch mean 0,
    # population var = 4 * 0.25 / 8 = 0.125, std = 0.353553; A = ±0.5/0.353553 = ±sqrt(2).
    # The uniform group stays at 0 but counts in the batch statistics (n = 8, not 4).
    adv = reinforce_pp_baseline_advantages(t([1, 0, 0, 1, 1, 1, 1, 1]), all_valid(8), group_size=4)
    r2 = math.sqrt(2.0)
    assert_close(adv, t([r2, -r2, -r2, r2, 0, 0, 0, 0]), **TOL)


def test_reinforce_pp_baseline_leaves_groups_without_baseline_out_of_batch_stats():
    # G = 2, [1, X | 0, 1]: group 1 has one valid sample -> 0, and not counted.
    # Counted: group 2 centred [-0.5, 0.5]; mean 0, population std 0.5 -> [-1, 1].
    # (Counting group 1's centred 0 would give std sqrt(1/6) and ±1.224745.)
    valid = torch.tensor([True, False, True, True])
    adv = reinforce_pp_baseline_advantages(t([1, 7, 0, 1]), valid, group_size=2)
    assert_close(adv, t([0, 0, -1, 1]), **TOL)


def test_reinforce_pp_token_reward_to_go_by_hand():
    # Row 0 token rewards [0.5, 0, 0.5] -> reward-to-go [1.0, 0.5, 0.5].
    # Row 1 [0, -1, pad(9)] with the pad masked -> [-1, -1, 0(masked)].
    # Valid values {1, .5, .5, -1, -1}: mean 0, population var = (1+.25+.25+1+1)/5 = 0.7,
    # std = 0.836660; A = [1.195229, 0.597614, 0.597614 | -1.195229, -1.195229, 0].
    rewards = t([[0.5, 0, 0.5], [0, -1, 9]])
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]])
    adv = reinforce_pp_token_advantages(rewards, mask)
    s = math.sqrt(0.7)
    assert_close(adv, t([[1 / s, 0.5 / s, 0.5 / s], [-1 / s, -1 / s, 0]]), **TOL)


# --- broadcast -----------------------------------------------------------------------


def test_token_advantages_broadcast_and_mask():
    mask = torch.tensor([[1, 1, 0], [0, 1, 1]], dtype=torch.bool)
    got = token_advantages(t([2.0, -1.0]), mask)
    assert_close(got, t([[2, 2, 0], [0, -1, -1]]), atol=0.0, rtol=0.0)
