"""Eval metrics against values worked out by hand and against brute-force enumeration.

pass@k (Chen et al. 2021): the chance that k samples drawn without replacement from n, of
which c are correct, include a correct one: 1 - C(n-c, k) / C(n, k).
"""

from __future__ import annotations

import itertools
import math
from fractions import Fraction

import pytest

from referee.trainer.evaluate import (
    accuracy,
    eval_metrics,
    eval_result,
    mean_pass_at_k,
    mean_reward,
    pass_at_k,
)
from referee.types import Score, Status

# --- pass@k --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("n", "c", "k", "expected"),
    [
        (5, 2, 1, 0.4),  # c/n
        (5, 2, 2, 0.7),  # 1 - C(3,2)/C(5,2) = 1 - 3/10
        (5, 2, 3, 0.9),  # 1 - C(3,3)/C(5,3) = 1 - 1/10
        (5, 2, 4, 1.0),  # n - c = 3 < 4: every draw holds a correct one
        (5, 0, 1, 0.0),
        (5, 0, 5, 0.0),
        (5, 5, 1, 1.0),
        (5, 5, 5, 1.0),
        (1, 1, 1, 1.0),
        (1, 0, 1, 0.0),
        (10, 1, 5, 0.5),  # 1 - C(9,5)/C(10,5) = 1 - 126/252
    ],
)
def test_pass_at_k_by_hand(n: int, c: int, k: int, expected: float) -> None:
    assert pass_at_k(n, c, k) == pytest.approx(expected, abs=1e-12)


def brute_force(n: int, c: int, k: int) -> Fraction:
    """Fraction of the k-subsets of n samples (the first c correct) holding a correct one."""
    subsets = list(itertools.combinations(range(n), k))
    hits = sum(1 for s in subsets if any(i < c for i in s))
    return Fraction(hits, len(subsets))


@pytest.mark.parametrize("n", range(1, 8))
def test_pass_at_k_matches_enumeration(n: int) -> None:
    for c in range(n + 1):
        for k in range(1, n + 1):
            assert pass_at_k(n, c, k) == pytest.approx(float(brute_force(n, c, k)), abs=1e-12)


def test_pass_at_k_is_stable_where_binomials_overflow_floats() -> None:
    n, c, k = 2000, 7, 500  # C(2000, 500) ~ 1e486: far past float range
    exact = 1 - Fraction(math.comb(n - c, k), math.comb(n, k))
    assert pass_at_k(n, c, k) == pytest.approx(float(exact), rel=1e-12)


@pytest.mark.parametrize(("n", "c", "k"), [(5, 6, 1), (5, -1, 1), (5, 2, 0), (5, 2, 6)])
def test_pass_at_k_rejects_impossible_counts(n: int, c: int, k: int) -> None:
    with pytest.raises(ValueError):
        pass_at_k(n, c, k)


def test_mean_pass_at_k_excludes_and_counts_problems_with_too_few_samples() -> None:
    # problems (n, c): (5, 2) -> 0.7, (4, 0) -> 0, (1, 1) excluded for k = 2
    result = mean_pass_at_k([5, 4, 1], [2, 0, 1], k=2)
    assert result.value == pytest.approx(0.35)
    assert (result.k, result.n_problems, result.n_excluded) == (2, 2, 1)
    assert mean_pass_at_k([1], [1], k=2).value is None
    assert mean_pass_at_k([], [], k=1).value is None


# --- accuracy and mean reward --------------------------------------------------------


def test_accuracy_excludes_invalid_samples_and_counts_them() -> None:
    values = [1.0, 0.0, None, 1.0, None, 0.5]
    valid = [True, True, False, True, False, True]
    acc = accuracy(values, valid)
    # valid: 1, 0, 1, 0.5 -> 2 of 4 reach 1.0
    assert acc.value == 0.5
    assert (acc.n, acc.n_valid, acc.n_invalid, acc.n_correct) == (6, 4, 2, 2)
    # the same answers without the failed samples score the same: a failure is neither
    # a wrong answer nor a right one
    clean = accuracy([1.0, 0.0, 1.0, 0.5], [True] * 4)
    assert clean.value == acc.value


def test_accuracy_ignores_the_value_of_an_invalid_sample() -> None:
    # a stale value under an invalid flag must not count as correct
    acc = accuracy([1.0, 1.0], [True, False])
    assert (acc.value, acc.n_correct, acc.n_invalid) == (1.0, 1, 1)
    assert accuracy([0.0, 1.0], [True, False]).value == 0.0


def test_accuracy_threshold_is_inclusive() -> None:
    assert accuracy([0.5, 0.49], [True, True], threshold=0.5).value == 0.5


def test_accuracy_with_no_valid_sample_is_undefined_not_zero() -> None:
    acc = accuracy([None, None], [False, False])
    assert acc.value is None
    assert (acc.n, acc.n_valid, acc.n_invalid) == (2, 0, 2)
    assert accuracy([], []).value is None


@pytest.mark.parametrize("bad", [None, math.nan, math.inf])
def test_a_valid_sample_without_a_finite_value_is_an_error(bad: float | None) -> None:
    with pytest.raises(ValueError, match="sample 1 is marked valid"):
        accuracy([1.0, bad], [True, True])
    with pytest.raises(ValueError, match="sample 1 is marked valid"):
        mean_reward([1.0, bad], [True, True])


def test_lengths_must_match() -> None:
    with pytest.raises(ValueError, match="2 values but 1 valid"):
        accuracy([1.0, 0.0], [True])


def test_mean_reward_over_valid_samples() -> None:
    assert mean_reward([0.5, None, 1.0, 0.25], [True, False, True, True]) == pytest.approx(
        0.5833333333333334
    )
    assert mean_reward([None], [False]) is None


# --- eval rows from scored groups ------------------------------------------------------


def ok(value: float) -> Score:
    return Score(id="", status=Status.OK, value=value)


def failed(status: Status) -> Score:
    return Score(id="", status=status, value=None, reason="service went away")


def test_eval_result_from_groups_of_scores() -> None:
    groups = [
        [ok(1.0), ok(0.0), ok(0.0), failed(Status.TIMEOUT)],  # n=3 valid, c=1
        [ok(0.0), ok(0.0), ok(0.0), ok(0.0)],  # n=4, c=0
        [ok(1.0), failed(Status.UNAVAILABLE), failed(Status.UNAVAILABLE), ok(1.0)],  # n=2, c=2
        [failed(Status.INVALID_INPUT)] * 4,  # n=0: excluded from pass@2
    ]
    result = eval_result(groups, k=2)
    # accuracy over the 9 valid samples: 3 correct
    assert result.accuracy.value == pytest.approx(3 / 9)
    assert (result.accuracy.n, result.accuracy.n_valid, result.accuracy.n_invalid) == (16, 9, 7)
    assert result.mean_reward == pytest.approx(3 / 9)
    # pass@2: (1 - C(2,2)/C(3,2)) = 2/3, 0, 1 -> mean 5/9; one prompt excluded
    assert result.pass_at_k.value == pytest.approx(5 / 9)
    assert (result.pass_at_k.n_problems, result.pass_at_k.n_excluded) == (3, 1)
    assert result.status_counts == {"OK": 9, "TIMEOUT": 1, "UNAVAILABLE": 2, "INVALID_INPUT": 4}

    row = eval_metrics(groups, k=2)
    assert row == {
        "eval/accuracy": pytest.approx(3 / 9),
        "eval/mean_reward": pytest.approx(3 / 9),
        "eval/pass@2": pytest.approx(5 / 9),
        "eval/n_prompts": 4,
        "eval/n_samples": 16,
        "eval/n_valid": 9,
        "eval/n_invalid": 7,
        "eval/n_correct": 3,
        "eval/pass@2_excluded": 1,
        "eval/status/INVALID_INPUT": 4,
        "eval/status/OK": 9,
        "eval/status/TIMEOUT": 1,
        "eval/status/UNAVAILABLE": 2,
    }


def test_greedy_eval_pass_at_1_equals_accuracy() -> None:
    groups = [[ok(1.0)], [ok(0.0)], [ok(1.0)], [failed(Status.ERROR)]]
    row = eval_metrics(groups, k=1)
    assert row["eval/accuracy"] == row["eval/pass@1"] == pytest.approx(2 / 3)
    assert row["eval/pass@1_excluded"] == 1


def test_status_may_be_given_by_name_and_threshold_applies() -> None:
    from types import SimpleNamespace

    groups = [
        [SimpleNamespace(value=0.6, status="OK"), SimpleNamespace(value=None, status="ERROR")]
    ]
    row = eval_metrics(groups, threshold=0.5)
    assert row["eval/accuracy"] == 1.0
    assert row["eval/n_invalid"] == 1
