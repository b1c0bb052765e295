"""exact, normalized_match and regex: what matches, what does not, what is refused."""

from __future__ import annotations

import doctest
import importlib
import re

import pytest

from referee import InvalidInput, Sample, Status
from referee.verifier import FunctionVerifier, validate_params
from referee.verifiers import match
from referee.verifiers.match import exact, normalize, normalized_match, regex


def run_doctests(module) -> doctest.TestResults:
    """Runs the `>>>` examples of `module` and of the functions behind its verifiers."""
    runner, finder = doctest.DocTestRunner(), doctest.DocTestFinder()
    objs = [module] + [v.fn for v in vars(module).values() if isinstance(v, FunctionVerifier)]
    for obj in objs:
        for test in finder.find(obj, globs=dict(vars(module))):
            runner.run(test)
    return runner.summarize(verbose=False)


def test_docstring_examples_run():
    results = run_doctests(match)
    assert results.failed == 0 and results.attempted >= 6


def test_builtin_verifiers_lists_the_rule_verifiers():
    # math_answer.py is written separately; until it lands there is nothing to import.
    pytest.importorskip("referee.verifiers.math_answer")
    builtins = importlib.import_module("referee.verifiers").builtin_verifiers()
    names = {v.name for v in builtins}
    assert {"exact", "normalized_match", "regex", "choice", "format", "json", "length"} <= names
    assert len(names) == len(builtins)


# --- exact -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "completion, reference, params, value",
    [
        ("Paris", "Paris", {}, 1.0),
        ("  Paris\n", "Paris", {}, 1.0),
        ("Paris", " Paris ", {}, 1.0),
        ("  Paris\n", "Paris", {"strip": False}, 0.0),
        ("paris", "Paris", {}, 0.0),
        ("Paris.", "Paris", {}, 0.0),
        ("", "Paris", {}, 0.0),
        ("Zürich", "Zürich", {}, 1.0),
        ("Zu\u0308rich", "Z\u00fcrich", {}, 0.0),  # exact means code points, no NFC
    ],
)
def test_exact(completion, reference, params, value):
    result = exact(Sample(completion=completion, reference=reference), **params)
    assert result.status is Status.OK
    assert result.value == value


def test_exact_defaults():
    assert validate_params(exact, {}) == {"strip": True}


@pytest.mark.parametrize("reference", ["", "   \n"])
def test_exact_refuses_an_empty_reference(reference):
    with pytest.raises(InvalidInput, match="reference is empty"):
        exact(Sample(completion="x", reference=reference))


def test_exact_refuses_a_missing_completion():
    with pytest.raises(InvalidInput, match="completion is missing"):
        exact(Sample(completion=None, reference="x"))


# --- normalized_match --------------------------------------------------------------


@pytest.mark.parametrize(
    "completion, reference, params, value",
    [
        ("the Beatles.", "The Beatles", {}, 1.0),
        ("  New   York\tCity ", "new york city", {}, 1.0),
        ("«Bonjour»!", "bonjour", {}, 1.0),  # Unicode punctuation (Pi/Pf) goes too
        ("¿Qué?", "qué", {}, 1.0),
        ("Ｐａｒｉｓ", "paris", {}, 1.0),  # NFKC folds full-width forms
        ("Ｐａｒｉｓ", "paris", {"unicode_normalize": False}, 0.0),
        ("STRASSE", "straße", {}, 1.0),  # casefold, not lower
        ("Paris", "paris", {"case_sensitive": True}, 0.0),
        ("New  York", "New York", {"collapse_whitespace": False}, 0.0),
        ("Paris!", "Paris", {"strip_punctuation": False}, 0.0),
        ("The Eiffel Tower", "Eiffel Tower", {}, 0.0),
        ("The Eiffel Tower", "Eiffel Tower", {"strip_articles": True}, 1.0),
        ("an apple", "APPLE", {"strip_articles": True}, 1.0),
        ("theatre", "atre", {"strip_articles": True}, 0.0),  # whole words only
        ("$5", "5", {}, 0.0),  # symbols are not punctuation
        ("-5", "5", {}, 1.0),  # ... but "-" is: documented
        ("London", "Paris", {}, 0.0),
        ("", "Paris", {}, 0.0),
        ("Paris is the answer", "Paris", {}, 0.0),
    ],
)
def test_normalized_match(completion, reference, params, value):
    result = normalized_match(Sample(completion=completion, reference=reference), **params)
    assert result.status is Status.OK
    assert result.value == value, result.reason


def test_normalized_match_defaults():
    assert validate_params(normalized_match, {}) == {
        "case_sensitive": False,
        "collapse_whitespace": True,
        "strip_punctuation": True,
        "unicode_normalize": True,
        "strip_articles": False,
    }


@pytest.mark.parametrize(
    "completion, reference, alternatives, value, reason",
    [
        ("NYC", "New York", ["nyc", "New York City"], 1.0, "matches metadata.references[0]"),
        ("new york city", "New York", ["nyc", "New York City"], 1.0, "references[1]"),
        ("New York", "New York", ["nyc"], 1.0, "matches reference"),
        ("Boston", "New York", ["nyc"], 0.0, "matches no reference"),
        ("nyc", "", ["NYC"], 1.0, "references[0]"),  # alternatives alone suffice
        ("nyc", "NYC", [], 1.0, "matches reference"),
    ],
)
def test_normalized_match_accepts_alternatives(completion, reference, alternatives, value, reason):
    sample = Sample(
        completion=completion, reference=reference, metadata={"references": alternatives}
    )
    result = normalized_match(sample)
    assert result.value == value
    assert reason in result.reason


@pytest.mark.parametrize("bad", ["nyc", ["nyc", 3], {"a": "b"}, 3.0, [None]])
def test_normalized_match_refuses_malformed_references(bad):
    sample = Sample(completion="nyc", reference="NYC", metadata={"references": bad})
    with pytest.raises(InvalidInput, match="metadata.references must be a list of strings"):
        normalized_match(sample)


@pytest.mark.parametrize(
    "reference, alternatives, where",
    [
        ("", None, "reference is empty"),
        ("  ", [], "reference is empty"),
        ("?!", None, "reference '\\?!' normalises to an empty string"),
        ("Paris", [""], r"metadata.references\[0\]"),
        ("the", None, "normalises to an empty string"),
    ],
)
def test_normalized_match_refuses_references_that_match_nothing(reference, alternatives, where):
    metadata = {} if alternatives is None else {"references": alternatives}
    params = {"strip_articles": True} if reference == "the" else {}
    with pytest.raises(InvalidInput, match=where):
        normalized_match(Sample(completion="", reference=reference, metadata=metadata), **params)


def test_normalized_match_refuses_a_missing_completion():
    with pytest.raises(InvalidInput, match="completion is missing"):
        normalized_match(Sample(completion=None, reference="x"))


@pytest.mark.timeout(30)
def test_normalized_match_is_linear_on_huge_input():
    huge = "The, quick; brown fox! " * 200_000  # ~4.6 MB
    result = normalized_match(Sample(completion=huge, reference="fox"), strip_articles=True)
    assert result.value == 0.0
    assert len(result.reason) < 200


def test_normalize_keeps_internal_whitespace_when_asked():
    assert normalize(" a  b ", collapse_whitespace=False) == "a  b"


# --- regex -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "completion, params, metadata, value",
    [
        ("The answer is 42.", {"pattern": r"\b42\b"}, {}, 1.0),
        ("The answer is 420.", {"pattern": r"\b42\b"}, {}, 0.0),
        ("The answer is 42.", {}, {"pattern": r"\b42\b"}, 1.0),
        ("42", {"pattern": r"\d+", "mode": "fullmatch"}, {}, 1.0),
        ("42 apples", {"pattern": r"\d+", "mode": "fullmatch"}, {}, 0.0),
        ("YES", {"pattern": "yes"}, {}, 0.0),
        ("YES", {"pattern": "yes", "flags": ["IGNORECASE"]}, {}, 1.0),
        ("YES", {"pattern": "yes", "flags": ["i"]}, {}, 1.0),
        ("a\nb", {"pattern": "a.b"}, {}, 0.0),
        ("a\nb", {"pattern": "a.b", "flags": ["DOTALL"]}, {}, 1.0),
        ("x\nend", {"pattern": "^end$", "flags": ["MULTILINE"]}, {}, 1.0),
        ("", {"pattern": "^$"}, {}, 1.0),
        ("", {"pattern": "x"}, {}, 0.0),
        ("naïve café", {"pattern": r"caf\w"}, {}, 1.0),
        ("café", {"pattern": r"caf\w", "flags": ["ASCII"]}, {}, 0.0),
        # The param wins over metadata.pattern.
        ("cat", {"pattern": "cat"}, {"pattern": "dog"}, 1.0),
    ],
)
def test_regex(completion, params, metadata, value):
    result = regex(Sample(completion=completion, metadata=metadata), **params)
    assert result.status is Status.OK
    assert result.value == value, result.reason


def test_regex_defaults():
    assert validate_params(regex, {}) == {
        "pattern": None,
        "mode": "search",
        "flags": None,
        "max_chars": 100_000,
    }


@pytest.mark.parametrize(
    "params, message",
    [
        ({"pattern": "("}, "param pattern is not a valid regex"),
        ({"pattern": ""}, "param pattern is empty"),
        ({"pattern": "x", "mode": "match"}, "param mode"),
        ({"pattern": "x", "flags": ["NOPE"]}, "param flags: unknown flag 'NOPE'"),
        ({"pattern": "x", "flags": [3]}, "param flags"),
        ({"pattern": "x", "max_chars": 0}, "param max_chars"),
    ],
)
def test_regex_request_errors_are_value_errors(params, message):
    with pytest.raises(ValueError, match=re.escape(message)) as info:
        regex(Sample(completion="x"), **params)
    assert not isinstance(info.value, InvalidInput)


@pytest.mark.parametrize(
    "metadata, message",
    [
        ({"pattern": "(unclosed"}, "metadata.pattern is not a valid regex: missing )"),
        ({}, "metadata.pattern is missing"),
        ({"pattern": ""}, "metadata.pattern must be a non-empty string"),
        ({"pattern": 42.0}, "metadata.pattern must be a non-empty string"),
    ],
)
def test_regex_sample_errors_are_invalid_input(metadata, message):
    with pytest.raises(InvalidInput, match=re.escape(message)):
        regex(Sample(completion="x", metadata=metadata))


def test_regex_refuses_a_missing_completion():
    with pytest.raises(InvalidInput, match="completion is missing"):
        regex(Sample(completion=None), pattern="x")


def test_regex_refuses_over_long_completions_instead_of_scoring_them():
    with pytest.raises(InvalidInput, match="completion is 11 chars, over max_chars=10"):
        regex(Sample(completion="x" * 11), pattern="x", max_chars=10)
    assert regex(Sample(completion="x" * 10), pattern="x", max_chars=10).value == 1.0


@pytest.mark.timeout(30)
def test_regex_huge_completion_within_the_bound():
    text = "a" * 5_000_000 + "needle"
    assert regex(Sample(completion=text), pattern="needle", max_chars=10_000_000).value == 1.0
