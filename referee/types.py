"""The Python side of the reward contract: samples in, results out.

These mirror the messages of `proto/referee/v1/reward.proto` and their JSONL form (the
same field names), so a verifier, the CLI and the client all speak one language. The
conversions to and from protobuf live in `referee.convert`.
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass, field
from typing import Any


class Status(str, enum.Enum):
    """Per-sample outcome. Only `OK` carries a value: a failure is not a score."""

    OK = "OK"
    INVALID_INPUT = "INVALID_INPUT"
    TIMEOUT = "TIMEOUT"
    ERROR = "ERROR"
    UNAVAILABLE = "UNAVAILABLE"

    def __str__(self) -> str:
        return self.value


class InvalidInput(ValueError):
    """Raised by a verifier when the sample (not the verifier) is at fault.

    The message should name the field, e.g. ``metadata.schema is not an object``.
    The server turns it into a per-sample `INVALID_INPUT` score; the rest of the batch
    is scored as usual.
    """


class InvalidParams(ValueError):
    """Raised by a verifier when the request's params (not the sample) are wrong.

    The server answers the whole request INVALID_ARGUMENT with this message, since no
    sample can be scored with them. Prefer declaring a `check_params` hook, which
    rejects the request before any work; this is the fallback for checks made inside
    `verify`.
    """


@dataclass(frozen=True)
class Sample:
    """One completion to score. JSONL rows use exactly these field names.

    `prompt` is either plain text or a list of chat messages (``{"role", "content"}``).
    `completion` is None when the sample has none at all (distinct from an empty one).
    """

    completion: str | None
    id: str = ""
    prompt: str | list[dict[str, str]] = ""
    reference: str = ""
    metadata: dict[str, Any] = field(default_factory=dict)

    @property
    def prompt_text(self) -> str:
        """The prompt as one string (chat messages joined by newlines)."""
        if isinstance(self.prompt, str):
            return self.prompt
        return "\n".join(m.get("content", "") for m in self.prompt)


@dataclass(frozen=True)
class Result:
    """What a verifier returns for one sample.

    >>> Result.ok(1.0, reason="answer 42 matches").value
    1.0
    >>> Result.invalid("metadata.choices is missing").status
    <Status.INVALID_INPUT: 'INVALID_INPUT'>
    """

    value: float | None
    status: Status = Status.OK
    reason: str = ""
    components: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.status is Status.OK:
            if self.value is None or not isinstance(self.value, (int, float)):
                raise TypeError(f"an OK result needs a float value, got {self.value!r}")
            if not math.isfinite(self.value):
                raise ValueError(f"an OK result needs a finite value, got {self.value!r}")
        elif self.value is not None:
            raise ValueError(f"a {self.status.value} result carries no value, got {self.value!r}")

    @classmethod
    def ok(
        cls, value: float, reason: str = "", components: dict[str, float] | None = None
    ) -> Result:
        return cls(float(value), Status.OK, reason, dict(components or {}))

    @classmethod
    def invalid(cls, reason: str) -> Result:
        return cls(None, Status.INVALID_INPUT, reason)

    @classmethod
    def error(cls, reason: str) -> Result:
        return cls(None, Status.ERROR, reason)

    @classmethod
    def timeout(cls, reason: str) -> Result:
        return cls(None, Status.TIMEOUT, reason)

    @classmethod
    def unavailable(cls, reason: str) -> Result:
        return cls(None, Status.UNAVAILABLE, reason)


@dataclass(frozen=True)
class Score:
    """A scored sample as a client sees it: the Result plus bookkeeping.

    `value` is None whenever `status` is not OK, so arithmetic on a failed score fails
    loudly instead of treating it as 0.
    """

    id: str
    status: Status
    value: float | None
    components: dict[str, float] = field(default_factory=dict)
    reason: str = ""
    cost_s: float = 0.0
    cached: bool = False

    @property
    def ok(self) -> bool:
        return self.status is Status.OK

    def to_json(self) -> dict[str, Any]:
        """The JSONL form written by `referee score`."""
        return {
            "id": self.id,
            "status": self.status.value,
            "value": self.value,
            "components": self.components,
            "reason": self.reason,
            "cost_s": round(self.cost_s, 6),
            "cached": self.cached,
        }
