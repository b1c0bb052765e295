"""format: tag structure checks, partial credit, custom patterns, hostile inputs."""

from __future__ import annotations

import doctest

import pytest

from referee import InvalidInput, Sample, Status
from referee.verifier import FunctionVerifier, validate_params
from referee.verifiers import format as format_module
from referee.verifiers.format import format_reward

GOOD = "<think>2 + 2 is 4</think>\n<answer>4</answer>"


def test_docstring_examples_run():
    runner, finder = doctest.DocTestRunner(), doctest.DocTestFinder()
    objs = [format_module] + [
        v.fn for v in vars(format_module).values() if isinstance(v, FunctionVerifier)
    ]
    for obj in objs:
        for test in finder.find(obj, globs=dict(vars(format_module))):
            runner.run(test)
    results = runner.summarize(verbose=False)
    assert results.failed == 0 and results.attempted >= 3


def checks(completion, **params):
    result = format_reward(Sample(completion=completion), **params)
    assert result.status is Status.OK
    return result, {k for k, v in result.components.items() if v == 0.0}


@pytest.mark.parametrize(
    "completion",
    [
        GOOD,
        "<think>x</think><answer>y</answer>",
        "\n  <think>\nlong\nthoughts\n</think>\n\n<answer> 4 </answer>\n",
        "<think>思考中…</think><answer>四</answer>",
        "<think>a < b and b > c</think><answer><b>bold</b></answer>",  # other tags are text
        "<think>see <thinking> vs </thinking></think><answer>4</answer>",
    ],
)
def test_well_formed_completions_pass(completion):
    result, failed = checks(completion)
    assert result.value == 1.0, result.reason
    assert failed == set()
    assert set(result.components) == {
        "tag:think",
        "tag:answer",
        "order",
        "nonempty",
        "no_extra_text",
    }


@pytest.mark.parametrize(
    "completion, failed",
    [
        ("", {"tag:think", "tag:answer", "order", "nonempty", "no_extra_text"}),
        ("4", {"tag:think", "tag:answer", "order", "nonempty", "no_extra_text"}),
        ("<think>x</think>", {"tag:answer", "order", "nonempty", "no_extra_text"}),
        ("<answer>4</answer><think>x</think>", {"order", "no_extra_text"}),
        ("Sure! " + GOOD, {"no_extra_text"}),
        (GOOD + " Hope that helps.", {"no_extra_text"}),
        ("<think>x</think> so <answer>4</answer>", {"no_extra_text"}),
        ("<think></think><answer>4</answer>", {"nonempty"}),
        ("<think>x</think><answer>  \n </answer>", {"nonempty"}),
        # Duplicates, nesting, unclosed and reversed tags.
        (GOOD + "<answer>5</answer>", {"tag:answer", "order", "nonempty", "no_extra_text"}),
        (
            "<think>x</think><answer>4<answer>5</answer>",
            {"tag:answer", "order", "nonempty", "no_extra_text"},
        ),
        ("<think>x<answer>4</answer></think>", {"order", "no_extra_text"}),
        (
            "<think>x<think>y</think></think><answer>4</answer>",
            {"tag:think", "order", "nonempty", "no_extra_text"},
        ),
        ("<think>x<answer>4</answer>", {"tag:think", "order", "nonempty", "no_extra_text"}),
        ("</think>x<think><answer>4</answer>", {"tag:think", "order", "nonempty", "no_extra_text"}),
        ("<think>x</think><answer>4</answer", {"tag:answer", "order", "nonempty", "no_extra_text"}),
        ("<THINK>x</THINK><answer>4</answer>", {"tag:think", "order", "nonempty", "no_extra_text"}),
        (
            "<think id=1>x</think><answer>4</answer>",
            {"tag:think", "order", "nonempty", "no_extra_text"},
        ),
    ],
)
def test_failing_checks_are_named(completion, failed):
    result, got = checks(completion)
    assert result.value == 0.0
    assert got == failed, result.reason
    for name in failed:
        assert name in result.reason


@pytest.mark.parametrize(
    "completion, value",
    [
        (GOOD, 1.0),
        ("Sure! " + GOOD, 0.8),
        ("<think></think><answer>4</answer>", 0.8),
        ("<answer>4</answer><think>x</think>", 0.6),
        ("<think>x</think>", 0.2),
        ("", 0.0),
    ],
)
def test_partial_credit_is_the_fraction_of_checks_passed(completion, value):
    result, _ = checks(completion, partial_credit=True)
    assert result.value == pytest.approx(value)


@pytest.mark.parametrize(
    "completion, value",
    [
        ("Sure! " + GOOD + " Bye.", 1.0),
        ("<answer>4</answer><think>x</think>", 0.0),
        (GOOD + "<answer>5</answer>", 0.0),  # still exactly once: no hedging
    ],
)
def test_non_strict_allows_text_outside_the_tags(completion, value):
    result, _ = checks(completion, strict=False)
    assert result.value == value
    assert "no_extra_text" not in result.components


def test_custom_tags():
    completion = "<reasoning>r</reasoning><code>print(1)</code><answer>1</answer>"
    result, _ = checks(completion, tags=["reasoning", "code", "answer"])
    assert result.value == 1.0
    assert {"tag:reasoning", "tag:code", "tag:answer"} <= set(result.components)


def test_a_single_tag_has_no_order_check():
    result, _ = checks("<answer>4</answer>", tags=["answer"])
    assert result.value == 1.0
    assert set(result.components) == {"tag:answer", "nonempty", "no_extra_text"}


def test_tag_names_are_matched_literally():
    result, _ = checks("<a.b>x</a.b><c>y</c>", tags=["a.b", "c"])
    assert result.value == 1.0
    result, _ = checks("<axb>x</axb><c>y</c>", tags=["a.b", "c"])
    assert result.value == 0.0


@pytest.mark.parametrize(
    "completion, value",
    [
        ("Answer: 42", 1.0),
        ("Answer: 42\n", 0.0),
        ("Answer:\n42", 0.0),
        ("reasoning\nover\nlines\nAnswer: 42", 1.0),  # DOTALL
    ],
)
def test_custom_pattern_must_match_the_whole_completion(completion, value):
    result, _ = checks(completion, pattern=r".*Answer: \d+")
    assert result.value == value
    assert result.components == {"pattern": value}


def test_defaults():
    assert validate_params(format_reward, {}) == {
        "tags": None,
        "strict": True,
        "partial_credit": False,
        "pattern": None,
    }


@pytest.mark.parametrize(
    "params, message",
    [
        ({"tags": []}, "param tags is empty"),
        ({"tags": ["think", "think"]}, "param tags names a tag twice"),
        ({"tags": ["<think>"]}, "param tags: '<think>' is not a tag name"),
        ({"tags": ["a|b"]}, "not a tag name"),
        ({"tags": [""]}, "not a tag name"),
        ({"tags": [3]}, "not a tag name"),
        ({"pattern": "("}, "param pattern is not a valid regex"),
        ({"pattern": "x", "tags": ["answer"]}, "not both"),
    ],
)
def test_bad_params_are_request_errors(params, message):
    with pytest.raises(ValueError, match=message) as info:
        format_reward(Sample(completion=GOOD), **params)
    assert not isinstance(info.value, InvalidInput)


def test_missing_completion_is_invalid():
    with pytest.raises(InvalidInput, match="completion is missing"):
        format_reward(Sample(completion=None))


@pytest.mark.timeout(30)
@pytest.mark.parametrize(
    "completion, value",
    [
        ("<think>" + "x" * 10_000_000 + "</think><answer>4</answer>", 1.0),
        ("<think>" * 500_000 + "</think><answer>4</answer>", 0.0),
        ("<think></think>" * 500_000 + "<answer>4</answer>", 0.0),
        ("<" * 5_000_000, 0.0),
        ("<think" * 1_000_000, 0.0),
        ("<think>x</think><answer>" + "</answe" * 1_000_000, 0.0),
    ],
)
def test_huge_hostile_inputs_are_linear(completion, value):
    result, _ = checks(completion)
    assert result.value == value
    assert len(result.reason) < 200
