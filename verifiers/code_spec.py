"""Reading a code sample's `metadata` into what to run: tests or cases, and limits.

Field names follow the datasets, so rows map onto samples without glue:

- ``language``: a sandbox language or alias (default ``python``);
- ``tests`` (aliases ``test_list`` as in MBPP, ``test`` as in HumanEval; the first
  non-empty one in that order is used): Python test code run after the program. A string is ONE case (HumanEval's ``def check(candidate)``
  is called with the program's ``entry_point`` function when the string defines it); a
  list is one case per item (MBPP's assert lines);
- ``entry_point``: the function under test (HumanEval); in list tests it is also bound
  to the name ``candidate``;
- ``setup``, ``test_setup_code`` (MBPP), ``test_imports`` (sanitized MBPP, a list of
  lines): code run before the program, in its namespace (all that are given, in order);
- ``cases``: a list of ``{"stdin": str, "stdout": str}`` (``input``/``output`` are
  accepted too, as in LiveCodeBench; a missing stdin is empty);
- ``time_limit_s`` and ``memory_mb``: per-case limits overriding the request's params.

Anything else malformed raises `InvalidInput` naming the field: the sample is at fault,
not the completion, so it is never scored.
"""

from __future__ import annotations

import ast
import math
from dataclasses import dataclass
from typing import Any

from referee.sandboxes.languages import Language, find_language
from referee.types import InvalidInput
from referee.verifiers.code_harness import MAX_EXPECTED_BYTES

TESTS_KEYS = ("tests", "test_list", "test")
SETUP_KEYS = ("setup", "test_setup_code", "test_imports")
MAX_TIME_LIMIT_S = 30.0
MEMORY_RANGE_MB = (16, 2048)
"""Per-case memory; the job adds room for the harness (and V8's reservation) and must
stay under the sandbox service's default ceiling of 4 GiB."""
MAX_TESTS_CHARS = 4_000_000


@dataclass(frozen=True)
class Case:
    stdin: str
    stdout: str


@dataclass(frozen=True)
class Spec:
    """What one sample asks for. Exactly one of `tests` and `cases` is set."""

    language: Language
    tests: tuple[str, ...] | None
    cases: tuple[Case, ...] | None
    entry_point: str
    call_check: bool
    """The single test string defines ``check`` and an entry point is given."""
    setup: str
    time_limit_s: float
    memory_mb: int

    @property
    def count(self) -> int:
        return len(self.tests if self.tests is not None else self.cases or ())


def _first(md: dict[str, Any], keys: tuple[str, ...]) -> tuple[str, Any]:
    """The first of `keys` that `md` gives a non-empty value, else the first given at
    all (so an empty one is reported as empty), else ("", None)."""
    given = [(k, md[k]) for k in keys if md.get(k) is not None]
    full = [(k, v) for k, v in given if v not in ("", [])]
    return (full or given or [("", None)])[0]


def _strings(name: str, value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    if not isinstance(value, list):
        raise InvalidInput(
            f"metadata.{name} must be a string or a list of strings, not {type(value).__name__}"
        )
    for i, item in enumerate(value):
        if not isinstance(item, str):
            raise InvalidInput(f"metadata.{name}[{i}] is {type(item).__name__}, not a string")
    return value


def _parse_tests(name: str, value: Any) -> tuple[list[str], bool]:
    """(test sources, whether the single string defines a top-level `check`)."""
    tests = _strings(name, value)
    if not tests or not any(t.strip() for t in tests):
        raise InvalidInput(f"metadata.{name} is empty")
    if sum(map(len, tests)) > MAX_TESTS_CHARS:
        raise InvalidInput(f"metadata.{name} holds over {MAX_TESTS_CHARS} characters")
    defines_check = False
    for i, src in enumerate(tests):
        where = f"metadata.{name}" if isinstance(value, str) else f"metadata.{name}[{i}]"
        try:
            tree = ast.parse(src)
        except (SyntaxError, ValueError) as e:
            line = f" (line {e.lineno})" if isinstance(e, SyntaxError) else ""
            raise InvalidInput(f"{where} is not valid Python: {e}{line}") from None
        defines_check = defines_check or any(
            isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)) and n.name == "check"
            for n in tree.body
        )
    return tests, defines_check and isinstance(value, str)


def _parse_cases(value: Any) -> tuple[Case, ...]:
    if not isinstance(value, list) or not value:
        raise InvalidInput("metadata.cases must be a non-empty list of {stdin, stdout} objects")
    out = []
    for i, c in enumerate(value):
        if not isinstance(c, dict):
            raise InvalidInput(
                f"metadata.cases[{i}] is {type(c).__name__}, not a {{stdin, stdout}} object"
            )
        stdin = c.get("stdin", c.get("input", ""))
        stdout = c.get("stdout", c.get("output"))
        if not isinstance(stdin, str):
            raise InvalidInput(f"metadata.cases[{i}].stdin is {type(stdin).__name__}, not a string")
        if not isinstance(stdout, str):
            got = "missing" if stdout is None else f"{type(stdout).__name__}, not a string"
            raise InvalidInput(f"metadata.cases[{i}].stdout is {got}")
        if len(stdout.encode()) > MAX_EXPECTED_BYTES:
            raise InvalidInput(f"metadata.cases[{i}].stdout is over {MAX_EXPECTED_BYTES} bytes")
        out.append(Case(stdin, stdout))
    return tuple(out)


def _number(md: dict[str, Any], key: str, default: float) -> float:
    v = md.get(key)
    if v is None:
        return default
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        raise InvalidInput(f"metadata.{key} must be a number, not {v!r:.40}")
    return float(v)


def check_limits(time_limit_s: float, memory_mb: float, where: str) -> None:
    """ValueError naming the field when a limit is out of range."""
    if not 0 < time_limit_s <= MAX_TIME_LIMIT_S:
        raise ValueError(
            f"{where}time_limit_s must be in (0, {MAX_TIME_LIMIT_S:g}], got {time_limit_s:g}"
        )
    lo, hi = MEMORY_RANGE_MB
    if not (lo <= memory_mb <= hi and float(memory_mb).is_integer()):
        raise ValueError(
            f"{where}memory_mb must be a whole number in [{lo}, {hi}], got {memory_mb:g}"
        )


def parse_spec(md: dict[str, Any], time_limit_s: float, memory_mb: int) -> Spec:
    """The sample's tests or cases and limits; InvalidInput names the bad field."""
    lang_name = md.get("language", "python")
    if not isinstance(lang_name, str):
        raise InvalidInput(f"metadata.language must be a string, not {type(lang_name).__name__}")
    try:
        language = find_language(lang_name)
    except ValueError as e:
        raise InvalidInput(f"metadata.language: {e}") from None
    tests_key, tests_value = _first(md, TESTS_KEYS)
    cases_value = md.get("cases")
    if tests_value is None and cases_value is None:
        raise InvalidInput(
            "metadata needs tests (assert-style test code, or test_list/test) "
            "or cases (a list of {stdin, stdout})"
        )
    if tests_value is not None and cases_value is not None:
        raise InvalidInput(f"metadata.{tests_key} and metadata.cases are both given; give one")
    entry = md.get("entry_point") or ""
    if not isinstance(entry, str) or (entry and not entry.isidentifier()):
        raise InvalidInput(f"metadata.entry_point must be a function name, not {entry!r:.40}")
    setup = "\n".join(
        line for key in SETUP_KEYS if md.get(key) is not None for line in _strings(key, md[key])
    )
    limit, memory = _number(md, "time_limit_s", time_limit_s), _number(md, "memory_mb", memory_mb)
    try:
        check_limits(limit, memory, "metadata.")
    except ValueError as e:
        raise InvalidInput(str(e)) from None
    tests, cases, call_check = None, None, False
    if tests_value is not None:
        if language.name != "python":
            raise InvalidInput(
                f"metadata.{tests_key} (assert-style tests) is for python only; "
                f"give metadata.cases for {language.name}"
            )
        parsed, defines_check = _parse_tests(tests_key, tests_value)
        if defines_check and not entry:
            raise InvalidInput(
                f"metadata.{tests_key} defines check(candidate) but metadata.entry_point is missing"
            )
        tests, call_check = tuple(parsed), defines_check
        if setup:
            try:
                ast.parse(setup)
            except (SyntaxError, ValueError) as e:
                raise InvalidInput(
                    f"metadata.setup (with test_setup_code, test_imports) is not valid Python: {e}"
                ) from None
    else:
        cases = _parse_cases(cases_value)
    return Spec(language, tests, cases, entry, call_check, setup, limit, int(memory))
