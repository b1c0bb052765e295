"""length: the DAPO overlong penalty, its units, and its parameter checks."""

from __future__ import annotations

import doctest

import pytest

from referee import InvalidInput, Sample, Status
from referee.verifier import FunctionVerifier, validate_params
from referee.verifiers import length as length_module
from referee.verifiers.length import length, overlong_penalty


def test_docstring_examples_run():
    runner, finder = doctest.DocTestRunner(), doctest.DocTestFinder()
    objs = [length_module] + [
        v.fn for v in vars(length_module).values() if isinstance(v, FunctionVerifier)
    ]
    for obj in objs:
        for test in finder.find(obj, globs=dict(vars(length_module))):
            runner.run(test)
    results = runner.summarize(verbose=False)
    assert results.failed == 0 and results.attempted >= 4


@pytest.mark.parametrize(
    "n, value",
    [
        (0, 0.0),
        (500, 0.0),
        (800, 0.0),  # L = L_max - L_cache: still no penalty
        (801, -1 / 200),
        (850, -0.25),
        (900, -0.5),
        (1000, -1.0),  # L = L_max: the ramp ends at -1
        (1001, -1.0),
        (10**9, -1.0),
    ],
)
def test_overlong_penalty_formula(n, value):
    assert overlong_penalty(n, max_length=1000, cache_length=200) == pytest.approx(value)


def test_overlong_penalty_is_monotone_and_bounded():
    values = [overlong_penalty(n, 100, 30) for n in range(0, 150)]
    assert all(a >= b for a, b in zip(values, values[1:], strict=False))
    assert max(values) == 0.0 and min(values) == -1.0


def test_cache_length_equal_to_max_length_ramps_from_zero():
    assert overlong_penalty(0, 10, 10) == 0.0
    assert overlong_penalty(5, 10, 10) == -0.5


@pytest.mark.parametrize(
    "completion, params, value",
    [
        ("x" * 3584, {}, 0.0),
        ("x" * 3840, {}, -0.5),
        ("x" * 4096, {}, -1.0),
        ("x" * 5000, {}, -1.0),
        ("", {}, 0.0),
        ("é" * 30, {"max_length": 40, "cache_length": 20}, -0.5),  # code points, not bytes
        ("👍" * 30, {"max_length": 40, "cache_length": 20}, -0.5),
        ("one two  three\nfour", {"unit": "words", "max_length": 4, "cache_length": 2}, -1.0),
        ("a b c", {"unit": "words", "max_length": 4, "cache_length": 2}, -0.5),
        ("a b c", {"unit": "chars", "max_length": 4, "cache_length": 2}, -1.0),
    ],
)
def test_length_in_chars_and_words(completion, params, value):
    result = length(Sample(completion=completion), **params)
    assert result.status is Status.OK
    assert result.value == pytest.approx(value)
    assert result.components["length"] >= 0


@pytest.mark.parametrize(
    "num_tokens, value",
    [(100, 0.0), (3840, -0.5), (3840.0, -0.5), (4097, -1.0), (0, 0.0)],
)
def test_length_in_tokens_reads_metadata(num_tokens, value):
    # The completion's own length does not matter: the trainer counted the tokens.
    sample = Sample(completion="short", metadata={"num_tokens": num_tokens})
    result = length(sample, unit="tokens")
    assert result.value == pytest.approx(value)
    assert result.components == {"length": float(num_tokens)}


@pytest.mark.parametrize(
    "metadata, message",
    [
        ({}, "metadata.num_tokens is missing"),
        ({"num_tokens": None}, "metadata.num_tokens is missing"),
        ({"num_tokens": "12"}, "metadata.num_tokens must be an integer"),
        ({"num_tokens": 12.5}, "metadata.num_tokens must be an integer"),
        ({"num_tokens": True}, "metadata.num_tokens must be an integer"),
        ({"num_tokens": float("nan")}, "metadata.num_tokens must be an integer"),
        ({"num_tokens": -1}, "metadata.num_tokens must not be negative"),
    ],
)
def test_bad_token_counts_are_invalid_input(metadata, message):
    with pytest.raises(InvalidInput, match=message):
        length(Sample(completion="x", metadata=metadata), unit="tokens")


def test_missing_completion_is_invalid():
    with pytest.raises(InvalidInput, match="completion is missing"):
        length(Sample(completion=None))


def test_defaults():
    assert validate_params(length, {}) == {
        "max_length": 4096,
        "cache_length": 512,
        "unit": "chars",
    }


@pytest.mark.parametrize(
    "params, message",
    [
        ({"max_length": 0}, "param max_length must be positive"),
        ({"cache_length": 0}, r"param cache_length must be in \(0, max_length=4096\]"),
        ({"cache_length": -5}, "param cache_length"),
        ({"max_length": 100, "cache_length": 101}, r"param cache_length .* got 101"),
        ({"unit": "bytes"}, "param unit must be one of"),
    ],
)
def test_bad_params_are_request_errors(params, message):
    with pytest.raises(ValueError, match=message) as info:
        length(Sample(completion="x"), **params)
    assert not isinstance(info.value, InvalidInput)


@pytest.mark.timeout(30)
def test_huge_completion():
    result = length(Sample(completion="word " * 2_000_000), unit="words")
    assert result.value == -1.0
    assert result.components == {"length": 2_000_000.0}
