"""The math reward: is the completion's final answer equal to the reference answer?

Why: competition-style math (GSM8K, MATH, AIME) is the workhorse of verifiable-reward RL,
and string matching under-rewards it badly ("1/2" vs "0.5" vs "\\frac{1}{2}"). This
verifier extracts the final answer (`referee.verifiers.math_extract`: last ``\\boxed``,
else an "answer is" phrase, else the last LaTeX, else the last number) and compares it
with the reference using math-verify, which parses both into SymPy.

What counts as equal (math-verify's rules, plus the preprocessing in math_extract):

- numbers in any spelling: ``1/2``, ``\\frac{1}{2}``, ``\\dfrac12``, ``0.5``, ``1,000``,
  ``1{,}000``, ``1\\,000``, ``1.5e3``, ``1.5 \\times 10^3``, unicode minus and digits;
  decimals are rounded to `float_rounding` places before comparing with an exact value,
  so with the default 6, ``0.333333`` equals 1/3 and ``0.333`` does not;
- percentages: ``50\\%`` equals both ``50`` and ``0.5`` (math-verify's choice: a model
  that drops the % sign, or converts it, is not penalised), while ``50`` and ``0.5``
  without a % anywhere differ;
- units and decoration: ``5 cm``, ``5\\text{ cm}``, ``\\$5``, ``30^\\circ`` are 5, 5, 5, 30
  (degrees are not converted to radians: ``30^\\circ`` is not ``\\pi/6``);
- expressions, simplified by SymPy: ``(x+1)^2`` is ``x^2+2x+1``, ``\\sqrt{8}`` is
  ``2\\sqrt{2}``; ``\\pi``, ``e``, ``\\infty``; matrices (``pmatrix``/``bmatrix``);
- sets ignore order ({1,2} is {2,1}), tuples do not, intervals keep their open/closed
  ends; a relation such as ``0 < x \\le 1`` matches the interval ``(0, 1]``;
- ``x = 5`` matches ``5`` (either side), and several answers ("2 and 3",
  ``\\boxed{2}, \\boxed{3}``) form a set.

What it does not cover: it does not judge the reasoning, only the final answer; an
answer in words is no answer ("the answer is five"); an "answer is" phrase is cut at
the sentence end by a heuristic; any LaTeX beats a later bare number, so "$x=3$, so the
total is 7" is graded as 3; reasoning blocks (``<think>``) are searched like any other
text; a reference in prose is not rejected but read as a product of symbols, which
matches nothing numeric; with `strict` off, variable names are matched by position,
which can equate unrelated expressions; and math-verify itself turns an error inside
SymPy into "no parse" or "not equal", which is not re-checked here.

Time: SymPy can take unbounded time on hostile answers (``9^{9^{9^9}}``). Each sample
gets one deadline of `BUDGET_S` seconds (SIGALRM, main thread only), and an overrun is
reported as TIMEOUT, never as a score. math-verify's own per-call alarms are switched
off because they cancel any outer alarm and turn their timeouts into "wrong answer".
Off the main thread there is no internal deadline: the worker pool's kill at
`timeout_s` is then the only bound.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import threading
import time
from collections.abc import Iterator
from typing import Any

from math_verify import verify

from referee.types import InvalidInput, InvalidParams, Result, Sample
from referee.verifier import verifier
from referee.verifiers.math_extract import (
    STAGES,
    Answer,
    boxed_contents,
    extract_answer,
    has_math,
    normalize_unicode,
    parse_answer,
)

BUDGET_S = 5.0
"""Per-sample deadline for extraction, parsing and comparison (below `timeout_s`)."""

EXTRACT_FROM = {
    "auto": STAGES,
    "boxed": ("boxed",),
    "anchored": ("boxed", "phrase"),
}

_SHOW_CHARS = 200


class _Deadline(BaseException):
    """Raised by SIGALRM. A BaseException, so no ``except Exception`` in math-verify or
    SymPy can turn it into a wrong answer on its way out."""


def _quiet_timeout_warning(record: logging.LogRecord) -> bool:
    return "Timeout is disabled" not in record.getMessage()


# We pass timeout None on purpose (see the module docstring); silence math-verify's warning.
logging.getLogger("math_verify.parser").addFilter(_quiet_timeout_warning)
logging.getLogger("math_verify.grader").addFilter(_quiet_timeout_warning)


def _check_params(
    *, float_rounding: Any = 6, strict: Any = True, extract_from: Any = "auto"
) -> None:
    """InvalidParams naming the param: the whole request is wrong, not one sample.

    Declared as the verifier's `check_params`, so the server rejects a bad request with
    INVALID_ARGUMENT before any work; `math_reward` repeats it for direct callers.
    """
    if isinstance(float_rounding, bool) or not isinstance(float_rounding, int):
        raise InvalidParams(f"param float_rounding must be an integer, got {float_rounding!r}")
    if not 0 <= float_rounding <= 15:
        raise InvalidParams(f"param float_rounding must be in 0..15, got {float_rounding}")
    if not isinstance(strict, bool):
        raise InvalidParams(f"param strict must be a boolean, got {strict!r}")
    if extract_from not in EXTRACT_FROM:
        choices = ", ".join(repr(k) for k in EXTRACT_FROM)
        raise InvalidParams(f"param extract_from must be one of {choices}, got {extract_from!r}")


@verifier(
    name="math",
    version="1",
    kind="rule",
    param_docs={
        "float_rounding": "decimal places a decimal answer is rounded to before it is "
        "compared (0-15); 6 makes 0.333333 equal 1/3 and 0.333 not",
        "strict": "variable names matter (x+1 is not y+1) and sets are not tuples; "
        "false matches variables by position",
        "extract_from": "where the answer may come from: 'auto' (last \\boxed, else an "
        "'answer is' phrase, else the last LaTeX, else the last number), 'boxed' (only "
        "\\boxed/\\fbox) or 'anchored' (\\boxed, else an 'answer is' phrase)",
    },
    timeout_s=10.0,
    check_params=_check_params,
)
def math_reward(
    sample: Sample, *, float_rounding: int = 6, strict: bool = True, extract_from: str = "auto"
) -> Result:
    """1.0 when the completion's final answer equals the reference mathematically.

    >>> math_reward(Sample(completion="So $x = \\\\boxed{\\\\frac{1}{2}}$.", reference="0.5")).value
    1.0
    >>> r = math_reward(Sample(completion="The answer is 0.33.", reference="\\\\frac13"))
    >>> r.value, r.components
    (0.0, {'extracted': 1.0, 'correct': 0.0})
    >>> math_reward(Sample(completion="I am not sure.", reference="7")).components
    {'extracted': 0.0, 'correct': 0.0}
    """
    _check_params(float_rounding=float_rounding, strict=strict, extract_from=extract_from)
    if sample.completion is None:
        raise InvalidInput("completion is missing")
    try:
        with _deadline(BUDGET_S):
            gold = _parse_reference(sample.reference)
            answer = extract_answer(sample.completion, EXTRACT_FROM[extract_from])
            if not answer.found:
                return _no_answer(answer, gold)
            correct = verify(
                gold,
                answer.parsed,
                float_rounding=float_rounding,
                strict=strict,
                allow_set_relation_comp=True,
                timeout_seconds=None,  # type: ignore[arg-type]
            )
            return _graded(answer, gold, sample.reference, correct)
    except _Deadline:
        return Result.timeout(f"math answer not graded within {BUDGET_S:g}s")


def _parse_reference(reference: str) -> list[Any]:
    """math-verify's parse of the gold answer (bare, LaTeX or boxed); InvalidInput if none."""
    text = normalize_unicode(reference.strip())
    if not text:
        raise InvalidInput("reference is empty; the math verifier needs the expected answer")
    boxed = boxed_contents(text)
    if boxed == []:
        raise InvalidInput(f"reference {_clip(text)} has an unclosed \\boxed{{")
    parsed = parse_answer(", ".join(boxed) if boxed else text)
    if not has_math(parsed):
        raise InvalidInput(f"reference {_clip(text)} could not be parsed as a math answer")
    return parsed


def _no_answer(answer: Answer, gold: list[Any]) -> Result:
    reason = f"no answer extracted ({answer.note}); gold {_show(gold)}"
    return Result.ok(0.0, reason=reason, components={"extracted": 0.0, "correct": 0.0})


def _graded(answer: Answer, gold: list[Any], reference: str, correct: bool) -> Result:
    verdict = "equals" if correct else "does not equal"
    reason = (
        f"{answer.stage} answer {_clip(answer.text)} (parsed {_show(answer.parsed)}) "
        f"{verdict} gold {_clip(reference.strip())} (parsed {_show(gold)})"
    )
    return Result.ok(
        float(correct),
        reason=reason,
        components={"extracted": 1.0, "correct": float(correct)},
    )


def _show(parsed: list[Any]) -> str:
    """The first parsed object as text, clipped; SymPy may refuse to print huge integers."""
    obj = next((p for p in parsed if not isinstance(p, str)), parsed[0] if parsed else "")
    try:
        text = str(obj)
    except ValueError:  # int -> str beyond sys.get_int_max_str_digits()
        text = f"<{type(obj).__name__} too large to print>"
    return text if len(text) <= _SHOW_CHARS else text[:_SHOW_CHARS] + "..."


def _clip(text: str) -> str:
    return repr(text) if len(text) <= _SHOW_CHARS else repr(text[:_SHOW_CHARS]) + "..."


@contextlib.contextmanager
def _deadline(seconds: float) -> Iterator[None]:
    """Raises `_Deadline` in the body after `seconds`, on the main thread only.

    An itimer already set by someone else (pytest-timeout, a caller's own alarm) is
    re-armed afterwards with the time it had left, so it still fires.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def fire(signum: int, frame: Any) -> None:
        raise _Deadline

    start = time.monotonic()
    old_handler = signal.signal(signal.SIGALRM, fire)
    old_delay, old_interval = signal.setitimer(signal.ITIMER_REAL, seconds)
    if 0 < old_delay < seconds:  # the outer timer is due first: stop then, it fires after
        signal.setitimer(signal.ITIMER_REAL, old_delay)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, signal.SIG_DFL if old_handler is None else old_handler)
        if old_delay > 0:
            left = max(old_delay - (time.monotonic() - start), 1e-3)
            signal.setitimer(signal.ITIMER_REAL, left, old_interval)
