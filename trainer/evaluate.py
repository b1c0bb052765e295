"""Evaluation metrics over scored completions: accuracy, mean reward, pass@k.

Pure functions over plain numbers; the recipe generates the held-out completions, has
them scored by the same reward services as training, and hands the scores here.

A sample whose reward did not come back OK (invalid input, timeout, error, service
unavailable) is *excluded* from every metric and counted on its own (`n_invalid`, and
per status in the eval row). It is never a wrong answer and never a right one: a dead
reward service must show up as fewer valid samples, not as a drop in accuracy.

>>> acc = accuracy([1.0, 0.0, None, 1.0], [True, True, False, True])
>>> round(acc.value, 4), acc.n_valid, acc.n_invalid
(0.6667, 3, 1)
>>> round(pass_at_k(n=5, c=2, k=2), 12)
0.7
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

__all__ = [
    "Accuracy",
    "EvalResult",
    "PassAtK",
    "ScoredSample",
    "accuracy",
    "eval_metrics",
    "eval_result",
    "mean_pass_at_k",
    "mean_reward",
    "pass_at_k",
]

OK = "OK"


class ScoredSample(Protocol):
    """What eval needs of a score: `referee.types.Score` and `Result` both fit."""

    @property
    def value(self) -> float | None: ...

    @property
    def status(self) -> object:
        """A `referee.types.Status` or its name; only "OK" carries a value."""
        ...


@dataclass(frozen=True)
class Accuracy:
    """Fraction of valid samples that are correct; invalid ones are only counted."""

    value: float | None
    """n_correct / n_valid; None when no sample is valid (there is nothing to measure)."""
    n: int
    """All samples, valid or not."""
    n_valid: int
    n_invalid: int
    n_correct: int


@dataclass(frozen=True)
class PassAtK:
    """pass@k averaged over problems that have at least k valid samples."""

    value: float | None
    """Mean of the per-problem estimates; None when no problem qualifies."""
    k: int
    n_problems: int
    """Problems that entered the mean."""
    n_excluded: int
    """Problems left out because fewer than k of their samples were valid."""


def _check_valid_values(values: Sequence[float | None], valid: Sequence[bool]) -> None:
    if len(values) != len(valid):
        raise ValueError(f"{len(values)} values but {len(valid)} valid flags")
    for i, (v, ok) in enumerate(zip(values, valid, strict=True)):
        if ok and (v is None or not math.isfinite(v)):
            raise ValueError(
                f"sample {i} is marked valid but its value is {v!r}; a valid reward is a "
                "finite number (mark the sample invalid instead)"
            )


def accuracy(
    values: Sequence[float | None], valid: Sequence[bool], threshold: float = 1.0
) -> Accuracy:
    """A valid sample is correct when its reward is >= `threshold`.

    `values[i]` of an invalid sample is ignored (it may be None). Raises ValueError when a
    valid sample has no finite value: that is a bug upstream, not a wrong answer.

    >>> accuracy([0.5, 1.0], [True, True], threshold=0.5).value
    1.0
    >>> accuracy([None], [False]).value is None
    True
    """
    _check_valid_values(values, valid)
    kept = [v for v, ok in zip(values, valid, strict=True) if ok]
    correct = sum(1 for v in kept if v >= threshold)  # type: ignore[operator]
    return Accuracy(
        value=correct / len(kept) if kept else None,
        n=len(values),
        n_valid=len(kept),
        n_invalid=len(values) - len(kept),
        n_correct=correct,
    )


def mean_reward(values: Sequence[float | None], valid: Sequence[bool]) -> float | None:
    """Mean reward over the valid samples; None when there are none.

    >>> mean_reward([0.5, None, 1.0], [True, False, True])
    0.75
    """
    _check_valid_values(values, valid)
    kept = [float(v) for v, ok in zip(values, valid, strict=True) if ok]  # type: ignore[arg-type]
    return math.fsum(kept) / len(kept) if kept else None


def pass_at_k(n: int, c: int, k: int) -> float:
    """Probability that at least one of k samples, drawn without replacement from n of
    which c are correct, is correct: the unbiased estimator of Chen et al. 2021
    (HumanEval), 1 - C(n-c, k) / C(n, k).

    Computed as the product 1 - prod_{i=n-c+1..n} (1 - k/i), which never forms the
    binomials (they overflow floats for n in the hundreds).

    >>> round(pass_at_k(5, 2, 1), 12), pass_at_k(5, 0, 3), pass_at_k(5, 5, 3)
    (0.4, 0.0, 1.0)
    """
    if not 0 <= c <= n:
        raise ValueError(f"need 0 <= c <= n, got n={n}, c={c}")
    if not 1 <= k <= n:
        raise ValueError(f"need 1 <= k <= n, got n={n}, k={k}: draw at least k samples")
    if n - c < k:  # every draw of k contains a correct sample
        return 1.0
    prod = 1.0
    for i in range(n - c + 1, n + 1):
        prod *= 1.0 - k / i
    return 1.0 - prod


def mean_pass_at_k(ns: Sequence[int], cs: Sequence[int], k: int) -> PassAtK:
    """pass@k averaged over problems; problem j has `ns[j]` valid samples, `cs[j]` correct.

    Problems with fewer than k valid samples are left out of the mean and counted in
    `n_excluded`: their estimate is undefined, and guessing would move the figure.
    """
    if len(ns) != len(cs):
        raise ValueError(f"{len(ns)} sample counts but {len(cs)} correct counts")
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    estimates = [pass_at_k(n, c, k) for n, c in zip(ns, cs, strict=True) if n >= k]
    return PassAtK(
        value=math.fsum(estimates) / len(estimates) if estimates else None,
        k=k,
        n_problems=len(estimates),
        n_excluded=len(ns) - len(estimates),
    )


@dataclass(frozen=True)
class EvalResult:
    """Everything one evaluation measured."""

    accuracy: Accuracy
    mean_reward: float | None
    pass_at_k: PassAtK
    n_prompts: int
    status_counts: dict[str, int] = field(default_factory=dict)
    """Samples per reward status ("OK", "TIMEOUT", ...)."""

    def row(self, prefix: str = "eval/") -> dict[str, float | int | None]:
        """The flat metrics row (`eval/accuracy`, `eval/pass@4`, ...) that `RunLog.log`
        writes; undefined figures are None (written as null)."""
        k = self.pass_at_k.k
        out: dict[str, float | int | None] = {
            "accuracy": self.accuracy.value,
            "mean_reward": self.mean_reward,
            f"pass@{k}": self.pass_at_k.value,
            "n_prompts": self.n_prompts,
            "n_samples": self.accuracy.n,
            "n_valid": self.accuracy.n_valid,
            "n_invalid": self.accuracy.n_invalid,
            "n_correct": self.accuracy.n_correct,
            f"pass@{k}_excluded": self.pass_at_k.n_excluded,
        }
        out.update({f"status/{s}": c for s, c in sorted(self.status_counts.items())})
        return {prefix + key: v for key, v in out.items()}


def eval_result(
    groups: Sequence[Sequence[ScoredSample]], k: int = 1, threshold: float = 1.0
) -> EvalResult:
    """Metrics of per-prompt groups of scored completions (`groups[j]`: prompt j's).

    Accuracy and mean reward are per sample over the valid ones; pass@k is per prompt,
    from each prompt's valid samples (n) and correct ones (c).
    """
    values: list[float | None] = []
    valid: list[bool] = []
    ns: list[int] = []
    cs: list[int] = []
    statuses: Counter[str] = Counter()
    for group in groups:
        n = c = 0
        for s in group:
            status = str(s.status)
            statuses[status] += 1
            ok = status == OK
            values.append(s.value)
            valid.append(ok)
            if ok:
                n += 1
                c += int(s.value is not None and s.value >= threshold)
        ns.append(n)
        cs.append(c)
    return EvalResult(
        accuracy=accuracy(values, valid, threshold),
        mean_reward=mean_reward(values, valid),
        pass_at_k=mean_pass_at_k(ns, cs, k),
        n_prompts=len(groups),
        status_counts=dict(statuses),
    )


def eval_metrics(
    groups: Sequence[Sequence[ScoredSample]], k: int = 1, threshold: float = 1.0
) -> dict[str, float | int | None]:
    """`eval_result(groups, k, threshold).row()`: the eval row for `RunLog.log`."""
    return eval_result(groups, k, threshold).row()
