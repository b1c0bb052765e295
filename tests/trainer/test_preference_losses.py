"""Bradley-Terry, DPO (with label smoothing) and IPO against values worked out by hand.

Identities used below: -log sigmoid(x) = log(1 + e^-x), and e.g. log(1 + e^-2) = 0.126928,
log(1 + e^1) = 1.313262, log(1 + e^-1) = 0.313262, log(1 + e^0.5) = 0.974077,
log(1 + e^-0.5) = 0.474077, log(1 + e^2) = 2.126928.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch.testing import assert_close

from referee.trainer.algorithms import (
    PREFERENCE_LOSSES,
    bradley_terry_loss,
    dpo_loss,
    ipo_loss,
    pairwise_accuracy,
)

TOL = {"atol": 1e-5, "rtol": 1e-5}


def t(values, grad: bool = False) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float32, requires_grad=grad)


# --- Bradley-Terry ---------------------------------------------------------------------
# Two pairs: scores (chosen, rejected) = (2, 0) and (0, 1); differences d = [2, -1].


def test_bradley_terry_by_hand() -> None:
    chosen, rejected = t([2.0, 0.0], grad=True), t([0.0, 1.0], grad=True)
    out = bradley_terry_loss(chosen, rejected)
    # mean(log(1 + e^-2), log(1 + e^1)) = (0.126928 + 1.313262) / 2
    assert_close(out.loss, t(0.720095), **TOL)
    assert_close(out.margins, t([2.0, -1.0]))
    assert_close(out.chosen_rewards, t([2.0, 0.0]))
    assert_close(out.rejected_rewards, t([0.0, 1.0]))
    assert float(out.accuracy) == 0.5
    out.loss.backward()
    # d loss / d chosen_i = -sigmoid(-d_i) / B: -0.119203 / 2 and -0.731059 / 2
    assert_close(chosen.grad, t([-0.0596015, -0.3655293]), **TOL)
    assert_close(rejected.grad, -chosen.grad)


def test_bradley_terry_margin_shifts_the_difference() -> None:
    out = bradley_terry_loss(t([2.0, 0.0]), t([0.0, 1.0]), margin=1.0)
    # d - 1 = [1, -2]: (log(1 + e^-1) + log(1 + e^2)) / 2 = (0.313262 + 2.126928) / 2
    assert_close(out.loss, t(1.220095), **TOL)
    assert_close(out.margins, t([2.0, -1.0]))  # reported without the margin
    per_pair = bradley_terry_loss(t([2.0, 0.0]), t([0.0, 1.0]), margin=t([1.0, 0.0]))
    assert_close(per_pair.loss, t((0.313262 + 1.313262) / 2), **TOL)


def test_bradley_terry_depends_only_on_the_difference() -> None:
    a = bradley_terry_loss(t([2.0, 0.0]), t([0.0, 1.0]))
    b = bradley_terry_loss(t([102.0, 100.0]), t([100.0, 101.0]))
    assert_close(a.loss, b.loss, **TOL)


def test_ties_count_as_wrong_and_no_pairs_is_zero() -> None:
    assert float(pairwise_accuracy(t([0.0, 0.0, 1.0, -1.0]))) == 0.25
    assert float(pairwise_accuracy(t([]))) == 0.0


# --- DPO -------------------------------------------------------------------------------
# policy (chosen, rejected) = (-1, -3), (-2, -1); reference -2 everywhere.
# log-ratios: chosen [1, 0], rejected [-1, 1]; h = [2, -1]; beta 0.5: beta h = [1, -0.5].

POLICY_C, POLICY_R, REF_C, REF_R = [-1.0, -2.0], [-3.0, -1.0], [-2.0, -2.0], [-2.0, -2.0]


def test_dpo_by_hand() -> None:
    pc, pr = t(POLICY_C, grad=True), t(POLICY_R, grad=True)
    rc, rr = t(REF_C, grad=True), t(REF_R, grad=True)
    out = dpo_loss(pc, pr, rc, rr, beta=0.5)
    # mean(log(1 + e^-1), log(1 + e^0.5)) = (0.313262 + 0.974077) / 2
    assert_close(out.loss, t(0.6436693), **TOL)
    assert_close(out.chosen_rewards, t([0.5, 0.0]))
    assert_close(out.rejected_rewards, t([-0.5, 0.5]))
    assert_close(out.margins, t([1.0, -0.5]))
    assert float(out.accuracy) == 0.5
    out.loss.backward()
    # d/d pc_i = -beta sigmoid(-beta h_i) / B: -0.5 * 0.268941 / 2, -0.5 * 0.622459 / 2
    assert_close(pc.grad, t([-0.0672353, -0.1556148]), **TOL)
    assert_close(pr.grad, -pc.grad)
    assert rc.grad is None and rr.grad is None  # the reference is a constant


def test_dpo_label_smoothing_is_conservative_dpo() -> None:
    out = dpo_loss(t(POLICY_C), t(POLICY_R), t(REF_C), t(REF_R), beta=0.5, label_smoothing=0.2)
    # pair 0 (z = 1):    0.8 * log(1 + e^-1) + 0.2 * log(1 + e^1)     = 0.513262
    # pair 1 (z = -0.5): 0.8 * log(1 + e^0.5) + 0.2 * log(1 + e^-0.5) = 0.874077
    assert_close(out.loss, t((0.513262 + 0.874077) / 2), **TOL)
    assert_close(out.margins, t([1.0, -0.5]))
    # The smoothed loss has its minimum at a finite margin: sigmoid(z) = 1 - eps.
    z = t([math.log(0.8 / 0.2)], grad=True)
    dpo_loss(z, t([0.0]), t([0.0]), t([0.0]), beta=1.0, label_smoothing=0.2).loss.backward()
    assert abs(float(z.grad)) < 1e-6


def test_untrained_policy_has_zero_margins_and_log2_loss() -> None:
    logp = t([-4.0, -7.0, -1.5])
    out = dpo_loss(logp, logp - 1, logp, logp - 1, beta=0.1)
    assert_close(out.loss, t(math.log(2)), **TOL)
    assert float(out.margins.abs().max()) == 0.0 and float(out.accuracy) == 0.0


def test_ipo_by_hand() -> None:
    pc = t(POLICY_C, grad=True)
    out = ipo_loss(pc, t(POLICY_R), t(REF_C), t(REF_R), beta=0.5)
    # target 1 / (2 beta) = 1: ((2 - 1)^2 + (-1 - 1)^2) / 2
    assert_close(out.loss, t(2.5), **TOL)
    assert_close(out.margins, t([1.0, -0.5]))
    out.loss.backward()
    # d/d pc_i = 2 (h_i - 1) / B = [1, -2]
    assert_close(pc.grad, t([1.0, -2.0]), **TOL)


def test_bad_arguments_raise() -> None:
    args = (t(POLICY_C), t(POLICY_R), t(REF_C), t(REF_R))
    with pytest.raises(ValueError, match="label_smoothing"):
        dpo_loss(*args, label_smoothing=0.5)
    with pytest.raises(ValueError, match="IPO has no label smoothing"):
        ipo_loss(*args, label_smoothing=0.1)
    assert PREFERENCE_LOSSES == {"sigmoid": dpo_loss, "ipo": ipo_loss}
