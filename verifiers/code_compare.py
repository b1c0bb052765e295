"""Comparing a program's stdout with a case's expected output (outside the sandbox).

Three modes, the tolerant one first because judges of CodeContests-style data mostly
compare whitespace-separated tokens:

- ``tokens`` (default): both outputs split on any whitespace; the token lists must be
  equal. With ``float_tolerance > 0``, two tokens that both parse as finite floats also
  match when ``|got - want| <= tol`` or ``|got - want| <= tol * |want|`` (absolute or
  relative, as Codeforces checkers do); ``float_tolerance = 0`` means exact tokens, so
  "1.0" does not match "1".
- ``lines``: lines compared one by one after removing trailing whitespace (spaces, tabs,
  ``\\r``) from each, ignoring trailing blank lines at the end of the output.
- ``exact``: byte-for-byte after decoding, nothing ignored.

Outputs are decoded as UTF-8 (bad bytes replaced). A mismatch is described in one short
line: where the outputs first differ, and both sides there.

>>> compare_output("1 2\\n3\\n", "1 2 3")
>>> compare_output("1 2\\n", "1 3")
"token 2: expected '3', got '2'"
>>> compare_output("0.3333333\\n", "0.333333", float_tolerance=1e-6)
>>> compare_output("a  \\nb\\n\\n", "a\\nb", mode="lines")
"""

from __future__ import annotations

import math

MODES = ("tokens", "lines", "exact")
_SHOW = 40


def _show(s: str) -> str:
    return repr(s if len(s) <= _SHOW else s[:_SHOW] + "...")


def _floats_close(got: str, want: str, tol: float) -> bool:
    try:
        a, b = float(got), float(want)
    except ValueError:
        return False
    if not (math.isfinite(a) and math.isfinite(b)):
        return False
    diff = abs(a - b)
    return diff <= tol or diff <= tol * abs(b)


def _compare_tokens(got: str, want: str, tol: float) -> str | None:
    g, w = got.split(), want.split()
    for i, (a, b) in enumerate(zip(g, w, strict=False)):
        if a != b and not (tol > 0 and _floats_close(a, b, tol)):
            return f"token {i + 1}: expected {_show(b)}, got {_show(a)}"
    if len(g) != len(w):
        if len(g) < len(w):
            return (
                f"output ends after {len(g)} tokens; expected {len(w)} (next: {_show(w[len(g)])})"
            )
        return f"extra output after {len(w)} tokens: {_show(g[len(w)])}"
    return None


def _lines(text: str) -> list[str]:
    lines = [line.rstrip(" \t\r\f\v") for line in text.split("\n")]
    while lines and not lines[-1]:
        lines.pop()
    return lines


def _compare_lines(got: str, want: str) -> str | None:
    g, w = _lines(got), _lines(want)
    for i, (a, b) in enumerate(zip(g, w, strict=False)):
        if a != b:
            return f"line {i + 1}: expected {_show(b)}, got {_show(a)}"
    if len(g) != len(w):
        if len(g) < len(w):
            return f"output ends after {len(g)} lines; expected {len(w)}"
        return f"extra output after {len(w)} lines: {_show(g[len(w)])}"
    return None


def _compare_exact(got: str, want: str) -> str | None:
    if got == want:
        return None
    i = next(
        (k for k, (a, b) in enumerate(zip(got, want, strict=False)) if a != b),
        min(len(got), len(want)),
    )
    return f"char {i + 1}: expected {_show(want[i : i + 20])}, got {_show(got[i : i + 20])}"


def compare_output(
    got: str | bytes, want: str, mode: str = "tokens", float_tolerance: float = 0.0
) -> str | None:
    """None when `got` matches `want` under `mode`, else a one-line description."""
    if isinstance(got, bytes):
        got = got.decode("utf-8", errors="replace")
    if mode == "tokens":
        return _compare_tokens(got, want, float_tolerance)
    if mode == "lines":
        return _compare_lines(got, want)
    if mode == "exact":
        return _compare_exact(got, want)
    raise ValueError(f"compare must be one of {', '.join(MODES)}, got {mode!r}")
