"""Comparing a case's stdout with the expected output: tokens, lines, exact, tolerance."""

from __future__ import annotations

import pytest

from referee.verifiers.code_compare import compare_output


@pytest.mark.parametrize(
    ("got", "want", "mode", "tol", "same"),
    [
        ("1 2 3\n", "1 2 3", "tokens", 0.0, True),
        ("1\n2\n3\n\n\n", "1 2 3", "tokens", 0.0, True),
        ("1\t2  3", "1 2 3", "tokens", 0.0, True),
        ("1 2", "1 2 3", "tokens", 0.0, False),
        ("1 2 3 4", "1 2 3", "tokens", 0.0, False),
        ("1.0", "1", "tokens", 0.0, False),
        ("1.0", "1", "tokens", 1e-9, True),
        ("1.0000001", "1", "tokens", 1e-6, True),
        ("1.00001", "1", "tokens", 1e-6, False),
        ("1000000.5", "1000000", "tokens", 1e-6, True),  # relative
        ("nan", "nan", "tokens", 1e-6, True),  # equal as text
        ("inf", "1e308", "tokens", 1e-6, False),
        ("YES", "yes", "tokens", 0.0, False),
        ("a  \nb\t\n\n\n", "a\nb", "lines", 0.0, True),
        ("a\r\nb\r\n", "a\nb\n", "lines", 0.0, True),
        ("a b", "a  b", "lines", 0.0, False),
        ("a\nb", "a b", "lines", 0.0, False),
        ("\na", "a", "lines", 0.0, False),
        ("a\n", "a\n", "exact", 0.0, True),
        ("a\n", "a", "exact", 0.0, False),
        (b"caf\xc3\xa9\n", "café", "tokens", 0.0, True),
        (b"\xff\n", "x", "tokens", 0.0, False),
    ],
)
def test_compare(got, want: str, mode: str, tol: float, same: bool) -> None:
    assert (compare_output(got, want, mode, tol) is None) == same


def test_mismatch_says_where() -> None:
    assert compare_output("1 2 4", "1 2 3") == "token 3: expected '3', got '4'"
    assert compare_output("1 2", "1 2 3") == "output ends after 2 tokens; expected 3 (next: '3')"
    assert compare_output("1 2 3 9", "1 2 3") == "extra output after 3 tokens: '9'"
    assert compare_output("a\nc", "a\nb", "lines") == "line 2: expected 'b', got 'c'"
    assert compare_output("ab", "ac", "exact") == "char 2: expected 'c', got 'b'"
    assert len(compare_output("x" * 10_000, "y" * 10_000) or "") < 150


def test_unknown_mode() -> None:
    with pytest.raises(ValueError, match="compare must be one of"):
        compare_output("a", "a", "fuzzy")
