"""Length reward: DAPO's soft penalty for completions that run too long.

A completion cut off at the generation limit gets a wrong-answer reward for a reason
that has nothing to do with its reasoning, which adds noise to training. DAPO replaces
that cliff with a ramp: no penalty up to ``max_length - cache_length``, then a penalty
growing linearly to -1 at `max_length`, and -1 beyond. Add this reward to the
correctness reward (the verifier returns the penalty, 0 to -1, not a total).

Lengths can be counted in characters (code points), whitespace-separated words, or
tokens. Only the trainer knows the token count, so ``unit="tokens"`` reads it from
``metadata.num_tokens``; characters and words are approximations of it.

Not covered: lengths of the prompt or of a multi-turn conversation, and any reward for
being short (a completion of length 0 gets penalty 0, like any short one).
"""

from __future__ import annotations

from referee.types import InvalidInput, InvalidParams, Result, Sample
from referee.verifier import verifier

_UNITS = ("chars", "words", "tokens")


def overlong_penalty(length: int, max_length: int, cache_length: int) -> float:
    """DAPO's soft overlong punishment for a completion of `length`.

    From "DAPO: An Open-Source LLM Reinforcement Learning System at Scale" (Yu et al.,
    2025, arXiv:2503.14476), section "Overlong Reward Shaping", with
    L_max = `max_length` and L_cache = `cache_length`::

        0                              if L <= L_max - L_cache
        ((L_max - L_cache) - L) / L_cache   if L_max - L_cache < L <= L_max
        -1                             if L > L_max

    >>> overlong_penalty(100, max_length=1000, cache_length=200)
    0.0
    >>> overlong_penalty(900, max_length=1000, cache_length=200)
    -0.5
    >>> overlong_penalty(1001, max_length=1000, cache_length=200)
    -1.0
    """
    threshold = max_length - cache_length
    if length <= threshold:
        return 0.0
    if length <= max_length:
        return (threshold - length) / cache_length
    return -1.0


def _num_tokens(sample: Sample) -> int:
    n = sample.metadata.get("num_tokens")
    if n is None:
        raise InvalidInput("metadata.num_tokens is missing; unit='tokens' needs the token count")
    # Struct metadata carries every number as a double: accept 812.0, refuse 812.5.
    if isinstance(n, bool) or not isinstance(n, (int, float)) or not float(n).is_integer():
        raise InvalidInput(f"metadata.num_tokens must be an integer, got {n!r:.40}")
    if n < 0:
        raise InvalidInput(f"metadata.num_tokens must not be negative, got {n}")
    return int(n)


@verifier(
    name="length",
    version="1",
    kind="rule",
    param_docs={
        "max_length": "L_max: longer completions get -1",
        "cache_length": "L_cache: the penalty ramps from 0 to -1 over the last this-many units",
        "unit": "'chars', 'words', or 'tokens' (read from metadata.num_tokens)",
    },
)
def length(
    sample: Sample, *, max_length: int = 4096, cache_length: int = 512, unit: str = "chars"
) -> Result:
    """The DAPO overlong penalty (0 to -1) for the completion's length.

    >>> length(Sample(completion="x" * 30), max_length=40, cache_length=20).value
    -0.5
    >>> length(Sample(completion="", metadata={"num_tokens": 4000}), unit="tokens").value
    -0.8125
    """
    if max_length <= 0:
        raise InvalidParams(f"param max_length must be positive, got {max_length}")
    if not 0 < cache_length <= max_length:
        raise InvalidParams(
            f"param cache_length must be in (0, max_length={max_length}], got {cache_length}"
        )
    if unit not in _UNITS:
        raise InvalidParams(f"param unit must be one of {list(_UNITS)}, got {unit!r}")
    if sample.completion is None:
        raise InvalidInput("completion is missing")
    if unit == "chars":
        n = len(sample.completion)
    elif unit == "words":
        n = len(sample.completion.split())
    else:
        n = _num_tokens(sample)
    penalty = overlong_penalty(n, max_length, cache_length)
    reason = f"{n} {unit}; penalty starts above {max_length - cache_length}, -1 above {max_length}"
    return Result.ok(penalty, reason=reason, components={"length": float(n)})
