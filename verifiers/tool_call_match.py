"""Checking a completion's calls against the expected ones, call by call and as a set.

The semantics follow BFCL's AST checker, the reference for function-calling rewards,
with JSON Schema in place of its hand-written type table. For one expected call and
one actual call, four checks, each a yes/no:

- **name**: the function names are equal (exactly; BFCL's dot-to-underscore renaming
  for OpenAI models is not applied). A wrong name fails the other three checks too,
  since arguments meant for another function are not comparable.
- **required**: no argument is missing that the tool's schema lists as ``required``
  or that the expected call does not mark optional.
- **types**: the arguments satisfy the tool's parameter schema (types, enums, nested
  shapes, ``additionalProperties``...; a missing required argument counts under
  *required* instead). Without a schema, each expected argument's value must have the
  JSON type of one of its acceptable values (an integer passes for a number).
- **values**: every argument given is one the expected call names, with a value equal
  to one of its acceptable values. Equality is BFCL's: an integer equals the same
  float (``2 == 2.0``, so "int for float" passes), booleans never equal numbers,
  lists match item by item in order (JSON has no tuples, so tuples are lists),
  objects match key by key, and strings match after `normalize` (BFCL's rule:
  case-folded, with whitespace and ``, . / - _ * ^`` removed and ``'`` read as ``"``,
  so "April 1, 2024" equals "april 1 2024"), all recursively. With
  ``normalize_strings`` off, strings must be identical.

Parallel calls: each expected call is paired with at most one actual call. In order
mode the i-th expected call is paired with the i-th actual call. Otherwise the pairing
is the one that fully matches the most calls (then passes the most checks), found
exhaustively over subsets, not greedily, so "f(1), f(2)" against "f(2), f(1)" pairs
correctly. The search is exponential in the number of calls, which the verifier caps
(its ``max_calls``).

Not covered: BFCL's "variable" answers (a string naming a variable where another type
is expected), numeric tolerance (floats compare exactly), and unordered list values.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from typing import Any

import referencing.exceptions

from referee.types import InvalidInput
from referee.verifiers.tool_call_expect import Arg, DictOf, ExpectedCall, ListOf, Lit, Pattern, Tool
from referee.verifiers.tool_call_parse import Call

_STRIP = re.compile(r"[\s,./\-_*^]")
CHECKS = ("name", "required", "types", "values")


def normalize(text: str) -> str:
    """BFCL's string normalisation, with Unicode case folding.

    >>> normalize("April 1, 2024") == normalize("april 1 2024")
    True
    >>> normalize("New-York") == normalize("new_york")
    True
    """
    return _STRIP.sub("", text).casefold().replace("'", '"')


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def matches(value: Any, pattern: Pattern, norm: bool) -> bool:
    """Whether `value` (parsed JSON) matches `pattern` under the rules above."""
    if isinstance(pattern, Lit):
        want = pattern.value
        if isinstance(want, str):
            if not isinstance(value, str):
                return False
            return normalize(value) == normalize(want) if norm else value == want
        if isinstance(want, bool) or want is None:
            return value is want
        if _is_number(want):
            return _is_number(value) and value == want
        return False
    if isinstance(pattern, ListOf):
        return (
            isinstance(value, list)
            and len(value) == len(pattern.items)
            and all(matches(v, p, norm) for v, p in zip(value, pattern.items, strict=True))
        )
    return isinstance(value, dict) and _fields_match(value, pattern, norm)


def _accepts(arg: Arg, value: Any, norm: bool) -> bool:
    return any(matches(value, alt, norm) for alt in arg.alternatives)


def _fields_match(value: dict[str, Any], pattern: DictOf, norm: bool) -> bool:
    for key, arg in pattern.fields.items():
        if key not in value and not arg.optional:
            return False
    return all(
        k in pattern.fields and _accepts(pattern.fields[k], v, norm) for k, v in value.items()
    )


def _kind(value: Any) -> str:
    if _is_number(value):
        return "number"
    for cls, kind in (
        (bool, "boolean"),
        (str, "string"),
        ((list, tuple), "array"),
        (dict, "object"),
    ):
        if isinstance(value, cls):
            return kind
    return "null"


def _kind_of(pattern: Pattern) -> str:
    if isinstance(pattern, ListOf):
        return "array"
    if isinstance(pattern, DictOf):
        return "object"
    return _kind(pattern.value)


@dataclass(frozen=True)
class PairCheck:
    """The four checks for one (expected, actual) pair, and the first problem seen."""

    name: bool
    required: bool
    types: bool
    values: bool
    problem: str = ""

    @property
    def full(self) -> bool:
        return self.name and self.required and self.types and self.values

    @property
    def weight(self) -> int:
        """Full matches dominate; partial passes break ties (4 checks x 10 calls < 100)."""
        return 100 * self.full + self.name + self.required + self.types + self.values


def _schema_problem(tool: Tool, arguments: dict[str, Any]) -> str:
    """The first schema violation other than a missing top-level argument, or ""."""
    try:
        for error in tool.validator.iter_errors(arguments):
            if error.validator == "required" and not error.path:
                continue
            return f"{error.json_path}: {error.message}"[:200]
    except referencing.exceptions.Unresolvable as e:
        raise InvalidInput(
            f"metadata.tools schema of {tool.name!r} has a $ref that cannot be resolved: {e}"
        ) from None
    except RecursionError:
        raise InvalidInput(
            f"metadata.tools schema of {tool.name!r} recursed too deep (nesting, or a $ref cycle)"
        ) from None
    return ""


def _type_problem(expected: ExpectedCall, arguments: dict[str, Any]) -> str:
    """Without a schema: a value whose JSON type no acceptable value has, or ""."""
    for key, value in arguments.items():
        arg = expected.args.get(key)
        if arg is None or not arg.alternatives:
            continue
        kinds = {_kind_of(alt) for alt in arg.alternatives}
        if _kind(value) not in kinds:
            return f"argument {key!r:.60} is {_kind(value)}, expected {' or '.join(sorted(kinds))}"
    return ""


def check_pair(expected: ExpectedCall, call: Call, tool: Tool | None, norm: bool) -> PairCheck:
    """The four checks of `call` against `expected` (see the module docstring)."""
    if call.name != expected.name:
        return PairCheck(False, False, False, False, f"calls {call.name!r:.60}")
    args = call.arguments
    wanted = [k for k, a in expected.args.items() if not a.optional]
    missing = [
        k for k in dict.fromkeys([*(tool.required if tool else ()), *wanted]) if k not in args
    ]
    type_problem = _schema_problem(tool, args) if tool else _type_problem(expected, args)
    value_problem = ""
    for key, value in args.items():
        arg = expected.args.get(key)
        if arg is None:
            value_problem = f"unexpected argument {key!r:.60}"
            break
        if not _accepts(arg, value, norm):
            value_problem = f"argument {key!r:.60} = {value!r:.80} is not an accepted value"
            break
    problems = [
        f"missing argument {missing[0]!r:.60}" if missing else "",
        type_problem,
        value_problem,
    ]
    return PairCheck(
        True, not missing, not type_problem, not value_problem, next((p for p in problems if p), "")
    )


def assign(checks: list[list[PairCheck]], ordered: bool) -> list[int | None]:
    """For each expected call, the index of its actual call (None: unpaired).

    `checks[i][j]` is expected call i against actual call j. Unordered pairing
    maximises the total `weight` by dynamic programming over subsets of actual calls,
    O(E * 2^A * A): keep A small.
    """
    n_actual = len(checks[0]) if checks else 0
    if ordered:
        return [i if i < n_actual else None for i in range(len(checks))]

    @functools.cache
    def best(i: int, used: int) -> tuple[int, tuple[int | None, ...]]:
        if i == len(checks):
            return 0, ()
        score, rest = best(i + 1, used)
        top = (score, (None, *rest))
        for j in range(n_actual):
            if used & (1 << j):
                continue
            score, rest = best(i + 1, used | (1 << j))
            score += checks[i][j].weight
            if score > top[0]:
                top = (score, (j, *rest))
        return top

    return list(best(0, 0)[1])
