"""Function-calling reward: the completion's tool calls against the expected ones.

Why: tool use is trained with RLVR like maths is, and needs a reward that reads the
call formats policies actually emit and grades them the way the leaderboards do
(BFCL's AST checker). The pieces live apart: `tool_call_parse` reads the completion's
calls, `tool_call_expect` reads the sample's expected calls and tool schemas (the
accepted shapes are listed there), `tool_call_match` compares them.

Components, each 0.0 or 1.0 except `matched`:

- ``parsed``: the completion holds no broken attempt at a call (plain text parses);
- ``count``: it makes as many calls as expected;
- ``name``, ``required``, ``types``, ``values``: every expected call is paired with an
  actual call passing that check (see `tool_call_match`); 1.0 when none is expected;
- ``matched``: expected calls fully matched / max(expected, made); 1.0 when both are 0.

The value is 1.0 only when every call matches and no call is extra or missing; with
``partial_credit`` it is ``matched`` instead, so an extra or missing call costs its
share. When no call is expected (``[]``), a plain-text answer scores 1.0 and any call,
even a broken one, 0.0.

Outcomes: a malformed completion (a ``<tool_call>`` block that is not JSON, arguments
that are not an object, a duplicate key...) is the policy's fault and scores OK 0.0
with ``parsed=0``. A completion with more than ``max_calls`` calls scores OK 0.0 too,
unpaired (``parsed=1``, the rest 0), since pairing is exponential in them. A malformed
reference or ``metadata`` (not JSON, wrong shape, an invalid schema, an expected call
to an undeclared tool, more expected calls than ``max_calls``) is the dataset's fault:
INVALID_INPUT naming the field. A missing completion, or one over ``max_chars``, is
INVALID_INPUT too (unchecked is not failed).
"""

from __future__ import annotations

from typing import Any

from referee.types import InvalidInput, InvalidParams, Result, Sample
from referee.verifier import verifier
from referee.verifiers.tool_call_expect import ExpectedCall, Tool, expected_calls, load_tools
from referee.verifiers.tool_call_match import CHECKS, PairCheck, assign, check_pair
from referee.verifiers.tool_call_parse import Call, parse_completion

MAX_CALLS_LIMIT = 10
# jsonschema spends about ten stack frames per level of nesting it validates, so
# arguments much deeper than this would exhaust Python's default recursion limit (1000).
MAX_DEPTH_LIMIT = 64
_ALL = ("parsed", "count", *CHECKS, "matched")


def _check_params(
    *,
    ordered: Any = False,
    partial_credit: Any = False,
    normalize_strings: Any = True,
    max_calls: Any = 8,
    max_chars: Any = 1_000_000,
    max_depth: Any = 32,
) -> None:
    """InvalidParams naming the param; the server calls it once per request."""
    for name, value in (
        ("ordered", ordered),
        ("partial_credit", partial_credit),
        ("normalize_strings", normalize_strings),
    ):
        if not isinstance(value, bool):
            raise InvalidParams(f"param {name} must be a boolean, got {value!r}")
    if isinstance(max_calls, bool) or not isinstance(max_calls, int):
        raise InvalidParams(f"param max_calls must be an integer, got {max_calls!r}")
    if not 1 <= max_calls <= MAX_CALLS_LIMIT:
        raise InvalidParams(
            f"param max_calls must be in 1..{MAX_CALLS_LIMIT} (unordered matching is "
            f"exponential in it), got {max_calls}"
        )
    for name, value, top in (
        ("max_chars", max_chars, None),
        ("max_depth", max_depth, MAX_DEPTH_LIMIT),
    ):
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            raise InvalidParams(f"param {name} must be a positive integer, got {value!r}")
        if top is not None and value > top:
            raise InvalidParams(f"param {name} must be at most {top}, got {value}")


def _zero(reason: str, **set_: float) -> Result:
    return Result.ok(0.0, reason=reason[:300], components={k: set_.get(k, 0.0) for k in _ALL})


def _describe(i: int, expected: ExpectedCall, check: PairCheck | None) -> str:
    head = f"expected call {i + 1} ({expected.name[:60]})"
    if check is None:
        return f"{head} is not made"
    return f"{head}: {check.problem}"


def _score(
    expected: tuple[ExpectedCall, ...],
    calls: tuple[Call, ...],
    tools: dict[str, Tool] | None,
    ordered: bool,
    partial_credit: bool,
    norm: bool,
) -> Result:
    """Pairs the calls, then turns the pair checks into components and a value."""
    checks = [
        [check_pair(e, c, tools.get(e.name) if tools else None, norm) for c in calls]
        for e in expected
    ]
    pairing = assign(checks, ordered)
    paired = [None if j is None else checks[i][j] for i, j in enumerate(pairing)]
    full = sum(1 for p in paired if p is not None and p.full)
    comps = {"parsed": 1.0, "count": float(len(calls) == len(expected))}
    for check in CHECKS:
        comps[check] = float(all(p is not None and getattr(p, check) for p in paired))
    comps["matched"] = full / max(len(expected), len(calls)) if expected or calls else 1.0
    value = comps["matched"] if partial_credit else float(comps["matched"] == 1.0)
    if comps["matched"] == 1.0:
        reason = {0: "no call expected and none made", 1: "the call matches"}.get(
            len(calls), f"all {len(calls)} calls match"
        )
        return Result.ok(value, reason=reason, components=comps)
    problems = [
        _describe(i, e, p)
        for i, (e, p) in enumerate(zip(expected, paired, strict=True))
        if p is None or not p.full
    ]
    if not expected:
        problems = ["no call expected"]
    problems += [
        f"call {j + 1} ({c.name[:60]}) is not expected"
        for j, c in enumerate(calls)
        if j not in pairing
    ]
    return Result.ok(value, reason="; ".join(problems)[:300], components=comps)


@verifier(
    name="tool_call",
    version="1",
    kind="rule",
    param_docs={
        "ordered": "parallel calls must come in the expected order (default: any order)",
        "partial_credit": "value is the fraction of calls fully matched (extra calls "
        "count against it) instead of all-or-nothing",
        "normalize_strings": "compare strings BFCL's way (case-folded, whitespace and "
        ",./-_*^ removed); false compares them exactly",
        "max_calls": f"most calls considered (1-{MAX_CALLS_LIMIT}); a completion with "
        "more scores 0.0, a reference with more is INVALID_INPUT",
        "max_chars": "longer completions are refused as INVALID_INPUT, not parsed",
        "max_depth": f"deepest nesting of a completion's JSON (at most {MAX_DEPTH_LIMIT}); "
        "deeper is a parse failure",
    },
    check_params=_check_params,
)
def tool_call(
    sample: Sample,
    *,
    ordered: bool = False,
    partial_credit: bool = False,
    normalize_strings: bool = True,
    max_calls: int = 8,
    max_chars: int = 1_000_000,
    max_depth: int = 32,
) -> Result:
    """1.0 when the completion makes exactly the expected tool calls.

    >>> ref = '[{"get_weather": {"city": ["Paris"], "unit": ["celsius", ""]}}]'
    >>> done = '<tool_call>{"name": "get_weather", "arguments": {"city": "paris"}}</tool_call>'
    >>> tool_call(Sample(completion=done, reference=ref)).value
    1.0
    >>> r = tool_call(Sample(completion="It is sunny.", reference=ref))
    >>> r.value, r.components["count"], r.reason
    (0.0, 0.0, 'expected call 1 (get_weather) is not made')
    >>> tool_call(Sample(completion="It is sunny.", reference="[]")).value
    1.0
    """
    _check_params(
        ordered=ordered,
        partial_credit=partial_credit,
        normalize_strings=normalize_strings,
        max_calls=max_calls,
        max_chars=max_chars,
        max_depth=max_depth,
    )
    if sample.completion is None:
        raise InvalidInput("completion is missing")
    if len(sample.completion) > max_chars:
        raise InvalidInput(
            f"completion is {len(sample.completion)} chars, over max_chars={max_chars}"
        )
    expected = expected_calls(sample, max_depth)
    if len(expected) > max_calls:
        raise InvalidInput(f"reference expects {len(expected)} calls, over max_calls={max_calls}")
    tools = load_tools(sample, max_depth)
    if tools is not None:
        for i, e in enumerate(expected):
            if e.name not in tools:
                raise InvalidInput(
                    f"expected call {i + 1} names {e.name!r:.60}, which metadata.tools does not declare"
                )
    parsed = parse_completion(sample.completion, max_depth)
    if parsed.error is not None:
        return _zero(f"unparseable tool call: {parsed.error}")
    if len(parsed.calls) > max_calls:
        return _zero(f"{len(parsed.calls)} calls made, over max_calls={max_calls}", parsed=1.0)
    return _score(expected, parsed.calls, tools, ordered, partial_credit, normalize_strings)
