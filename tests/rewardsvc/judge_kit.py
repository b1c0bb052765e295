"""Helpers for the judge tests (imported by them; fixtures are in conftest.py)."""

from __future__ import annotations

from typing import Any

from referee.rewardsvc.calling import call_async
from referee.rewardsvc.judge import JudgeVerifier
from referee.types import Result, Sample
from referee.verifier import validate_params

FAST = {"timeout_s": 5.0, "retries": 2, "backoff_s": 0.01, "max_backoff_s": 0.05}
"""Judge config for tests: short timeouts, millisecond backoffs."""


async def score(judge: JudgeVerifier, sample: Sample, **params: Any) -> Result:
    """One sample through the service's path: validate_params, check_params, call_async."""
    full = validate_params(judge, params)
    judge.check_params(full)
    return await call_async(judge, sample, full, judge.timeout_s or 30.0)


def metric(judge: JudgeVerifier, name: str, **labels: str) -> float:
    """A judge metric's current value (0 when never touched)."""
    return judge.metrics.registry.get_sample_value(name, labels) or 0.0
