"""DAPO filters (dynamic sampling, overlong filtering and penalty) and the loss mask."""

from __future__ import annotations

import pytest
import torch
from torch.testing import assert_close

from referee.trainer.algorithms import (
    expand_group_mask,
    grpo_advantages,
    informative_groups,
    loss_mask,
    overlong_mask,
    overlong_penalty,
    ppo_clip_loss,
)


def t(values) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float32)


def test_informative_groups_by_hand():
    # G = 4, X = failed:
    #   [1, 0, 0, 1]   mixed                          -> informative
    #   [1, 1, 1, 1]   all equal                      -> dropped
    #   [1, X, X, X]   one valid sample               -> dropped
    #   [0, 0, 1, X]   mixed among the valid          -> informative
    #   [1, 1, X, 1]   X = 0 must not make it "mixed" -> dropped
    #   [0, 0, X, 0]   nor X = 5                      -> dropped
    rewards = t([1, 0, 0, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 1, 0, 1, 1, 0, 1, 0, 0, 5, 0])
    valid = torch.tensor(
        [True] * 8
        + [True, False, False, False]
        + [True, True, True, False]
        + [True, True, False, True]
        + [True, True, False, True]
    )
    got = informative_groups(rewards, valid, group_size=4)
    assert got.tolist() == [True, False, False, True, False, False]


def test_informative_groups_tolerance():
    rewards = t([0.5, 0.5 + 1e-7, 0.0, 1.0])
    valid = torch.ones(4, dtype=torch.bool)
    assert informative_groups(rewards, valid, 2).tolist() == [True, True]
    assert informative_groups(rewards, valid, 2, atol=1e-6).tolist() == [False, True]


def test_informative_groups_bad_shape():
    with pytest.raises(ValueError, match="whole groups"):
        informative_groups(t([1, 0, 1]), torch.ones(3, dtype=torch.bool), 2)


def test_expand_group_mask():
    assert expand_group_mask(torch.tensor([True, False]), 3).tolist() == [
        True,
        True,
        True,
        False,
        False,
        False,
    ]


def test_overlong_mask_from_flags_and_finish_reasons():
    assert overlong_mask(torch.tensor([False, True, False])).tolist() == [True, False, True]
    assert overlong_mask(torch.tensor([0, 1, 0])).tolist() == [True, False, True]
    assert overlong_mask(["stop", "length", "stop"]).tolist() == [True, False, True]
    assert overlong_mask(["eos", "max_tokens"], length_reason="max_tokens").tolist() == [
        True,
        False,
    ]


def test_overlong_penalty_by_hand():
    # max_len 10, buffer 4 -> free up to 6 tokens:
    #   L=5: 0;  L=6: 0;  L=8: (6 - 8) / 4 = -0.5;  L=10: -1;  L=12: -1 (capped).
    got = overlong_penalty(torch.tensor([5, 6, 8, 10, 12]), max_len=10, buffer_len=4)
    assert_close(got, t([0, 0, -0.5, -1, -1]), atol=1e-7, rtol=0)
    half = overlong_penalty(torch.tensor([8]), max_len=10, buffer_len=4, penalty=0.5)
    assert_close(half, t([-0.25]), atol=1e-7, rtol=0)
    with pytest.raises(ValueError, match="buffer_len"):
        overlong_penalty(torch.tensor([1]), max_len=10, buffer_len=0)


def test_filtered_samples_get_no_gradient():
    # End to end through the masks: G = 2, four samples, T = 2.
    #   group 0 [1, 0] informative; group 1 [1, 1] uniform (dropped by dynamic sampling);
    #   sample 0 truncated (dropped by overlong filtering).
    # Only sample 1 trains; every other row's gradient must be exactly 0.
    rewards = t([1, 0, 1, 1])
    valid = torch.ones(4, dtype=torch.bool)
    # Group statistics read `valid` (a truncated answer still has a reward); overlong
    # filtering only takes the sample out of the loss.
    keep = valid & overlong_mask(["length", "stop", "stop", "stop"])
    keep &= expand_group_mask(informative_groups(rewards, valid, 2), 2)
    assert keep.tolist() == [False, True, False, False]

    logp = torch.zeros(4, 2, requires_grad=True)
    adv = grpo_advantages(rewards, valid, 2)
    mask = loss_mask(torch.ones(4, 2), keep)
    ppo_clip_loss(logp, torch.zeros(4, 2), adv, mask).loss.backward()
    assert (logp.grad[[0, 2, 3]] == 0).all()
    # sample 1: A = (0 - 0.5) / std([1, 0]) = -0.5 / 0.707107 = -0.707107 (minus eps);
    # token mean over its 2 tokens: d/dlogp = -A * 1 / 2 = 0.353553.
    assert_close(logp.grad[1], t([0.353553, 0.353553]), atol=1e-5, rtol=0)
