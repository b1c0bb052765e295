"""Verifiers the client tests serve from real servers, as ``client_fixture_verifiers:NAME``.

They stand in for the built-ins (which may not exist yet) and make every outcome the
client must carry easy to ask for: a number, an invalid sample, a crash, a slow sample.
This directory is on `sys.path` (see conftest.py), so the forkserver workers import it too.
"""

from __future__ import annotations

import time

from referee import InvalidInput, Result, Sample, verifier


@verifier(name="echo", version="3", param_docs={"offset": "added to every value"})
def echo(sample: Sample, *, offset: float = 0.0, label: str = "echo") -> Result:
    """Scores a numeric completion as that number; "boom" crashes, other text is invalid."""
    text = sample.completion or ""
    if text == "boom":
        raise RuntimeError("asked to crash")
    try:
        value = float(text)
    except ValueError:
        raise InvalidInput(f"completion {text!r} is not a number") from None
    return Result.ok(value + offset, reason=f"{label} {sample.id}")


@verifier(name="slow", version="1", kind="custom")
def slow(sample: Sample, *, seconds: float = 5.0) -> Result:
    """Sleeps `seconds`, then scores 1.0: a verifier that does not answer in time."""
    time.sleep(seconds)
    return Result.ok(1.0)


@verifier(name="needs", version="7", kind="judge")
def needs(sample: Sample, *, target: int, strict: bool = True) -> Result:
    """Has a required param, so ListRewards shows one."""
    return Result.ok(float(sample.completion == str(target)))


SPECS = [f"{__name__}:echo", f"{__name__}:slow", f"{__name__}:needs"]
