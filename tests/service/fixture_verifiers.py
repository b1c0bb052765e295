"""Verifiers that misbehave on purpose, for the service tests.

Served with ``--load fixture_verifiers:ALL`` (the CLI runs with this folder as its
working directory) or with the spec ``fixture_verifiers:ALL`` in-process (pytest puts
this folder on sys.path). Unless a verifier says otherwise, an OK result's value is the
completion's length, so tests can tell samples (and their order) apart.

Names never collide with the built-ins, so both can be served by one server.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path
from typing import Any

from referee import InvalidInput, Param, Result, Sample, verifier

SPIN = "spin"
"""A `spin` completion that never returns (a CPU loop the worker cannot interrupt)."""

EXIT = "exit"
"""A `crash` completion whose worker calls os._exit(3)."""

KILL = "kill"
"""A `crash` completion whose worker SIGKILLs itself."""

BOOM = "boom"
"""A `boom` completion that raises RuntimeError."""

SPIN_TIMEOUT_S = 1.0


def _length(sample: Sample) -> Result:
    return Result.ok(float(len(sample.completion or "")))


@verifier(name="sleepy", version="1")
def sleepy(sample: Sample) -> Result:
    """Sleeps ``metadata.sleep_s`` seconds, after creating the file ``metadata.touch``
    (when given) so a test can tell the sample has started."""
    touch = sample.metadata.get("touch")
    if touch:
        Path(touch).touch()
    time.sleep(float(sample.metadata.get("sleep_s", 0.0)))
    return _length(sample)


@verifier(name="spin", version="1", timeout_s=SPIN_TIMEOUT_S)
def spin(sample: Sample) -> Result:
    """Loops forever on the completion "spin"; its time limit is SPIN_TIMEOUT_S."""
    if sample.completion == SPIN:
        while True:
            pass
    return _length(sample)


@verifier(name="crash", version="1")
def crash(sample: Sample) -> Result:
    """Kills its own worker on "exit" (exit code 3) and "kill" (SIGKILL)."""
    if sample.completion == EXIT:
        os._exit(3)
    if sample.completion == KILL:
        os.kill(os.getpid(), signal.SIGKILL)
    return _length(sample)


@verifier(name="boom", version="1")
def boom(sample: Sample) -> Result:
    """Raises a plain RuntimeError on the completion "boom"."""
    if sample.completion == BOOM:
        raise RuntimeError("kaboom in the fixture")
    return _length(sample)


@verifier(name="not_result", version="1")
def not_result(sample: Sample) -> Result:
    """Returns a bare float instead of a Result."""
    return 0.5  # type: ignore[return-value]


@verifier(name="picky", version="1")
def picky(sample: Sample) -> Result:
    """INVALID_INPUT unless ``metadata.level`` is a number (InvalidInput raised)."""
    level = sample.metadata.get("level")
    if not isinstance(level, (int, float)) or isinstance(level, bool):
        raise InvalidInput(f"metadata.level must be a number, got {type(level).__name__}")
    return Result.ok(float(level))


@verifier(name="scaled", version="1", param_docs={"scale": "multiplies the length"})
def scaled(sample: Sample, *, scale: float = 1.0, label: str = "") -> Result:
    """The completion's length times `scale`."""
    return Result.ok(len(sample.completion or "") * scale, reason=label)


@verifier(name="scaled2", version="1")
def scaled2(sample: Sample, *, scale: float = 1.0, label: str = "") -> Result:
    """The same function as `scaled` under another name (its cache entries are its own)."""
    return Result.ok(len(sample.completion or "") * scale, reason=label)


class Checked:
    """A class-based verifier whose `check_params` validates a request's params once:
    ValueError for label "bad" (the request's fault), RuntimeError for "explode" (a bug)."""

    name = "checked"
    version = "1"
    kind = "custom"
    description = "checks its params before any sample runs"
    params = (Param("label", "string", "bad or explode to fail the check", ""),)
    timeout_s = None

    def check_params(self, params: dict[str, Any]) -> None:
        if params["label"] == "bad":
            raise ValueError("label 'bad' is not allowed")
        if params["label"] == "explode":
            raise RuntimeError("check_params blew up")

    def verify(self, sample: Sample, *, label: str = "") -> Result:
        return _length(sample)


ALL = (sleepy, spin, crash, boom, not_result, picky, scaled, scaled2, Checked())
NAMES = sorted(v.name for v in ALL)
