"""tool_call on hostile completions (a clear OK 0.0, fast) and on broken samples and
params (INVALID_INPUT / InvalidParams naming the field, never a score)."""

from __future__ import annotations

import json
import time

import pytest

from referee import InvalidInput, InvalidParams, Sample, Status
from referee.rewardsvc.calling import call_sync
from referee.verifier import validate_params
from referee.verifiers.tool_call import tool_call

REF = json.dumps([{"f": {"a": [1]}}])
TOOLS = [{"name": "f", "parameters": {"type": "object", "properties": {"a": {"type": "integer"}}}}]


def run(completion, reference=REF, metadata=None, **params):
    """Through the server's own call path, so an escaping exception would show as ERROR."""
    sample = Sample(completion=completion, reference=reference, metadata=metadata or {})
    return call_sync(tool_call, sample, validate_params(tool_call, params))


def nested(levels, leaf=1):
    for _ in range(levels):
        leaf = {"x": leaf}
    return leaf


@pytest.mark.parametrize(
    ("completion", "says"),
    [
        ('{"name": "f", "arguments": ' + "[" * 100_000 + "]" * 100_000 + "}", "nesting too deep"),
        (json.dumps({"name": "f", "arguments": nested(40)}), "nesting too deep"),
        ("<tool_call>" * 50_000, "block 1 is empty"),
        ('<tool_call>{"name": "f", "arguments": "not json"}</tool_call>', "string but not JSON"),
        ('{"name": "f", "arguments": ["a", 1]}', "must be an object, got list"),
        ('{"name": "f", "arguments": {"a": 1, "a": 1}}', "duplicate key 'a'"),
        ('{"name": {"$ne": null}, "arguments": {}}', "non-empty string name"),
        ("{" + '"k": 1, ' * 100_000, "not JSON"),
    ],
)
def test_hostile_completions_are_a_clear_zero(completion, says):
    start = time.monotonic()
    result = run(completion, metadata={"tools": TOOLS})
    assert time.monotonic() - start < 5
    assert (result.status, result.value, result.components["parsed"]) == (Status.OK, 0.0, 0.0)
    assert says in result.reason and len(result.reason) <= 300


def test_huge_values_are_scored_not_choked_on():
    big = "x" * 900_000
    result = run(json.dumps({"name": "f", "arguments": {"a": big}}), metadata={"tools": TOOLS})
    assert result.status is Status.OK and result.value == 0.0
    assert result.components["types"] == 0.0 and len(result.reason) <= 300
    ok = run(json.dumps({"name": "f", "arguments": {"a": big}}), json.dumps([{"f": {"a": [big]}}]))
    assert ok.value == 1.0


def test_too_many_calls_score_zero_and_stay_fast():
    calls = json.dumps([{"name": "f", "arguments": {"a": i}} for i in range(5000)])
    result = run(calls)
    assert (result.value, result.components["parsed"], result.components["count"]) == (
        0.0,
        1.0,
        0.0,
    )
    assert "5000 calls made, over max_calls=8" in result.reason
    ten = [{"name": "f", "arguments": {"a": i}} for i in range(10)]
    expected = json.dumps([{"f": {"a": [9 - i]}} for i in range(10)])
    start = time.monotonic()
    assert run(json.dumps(ten), expected, max_calls=10).value == 1.0
    assert time.monotonic() - start < 5


def test_missing_completion_and_overlong_completion_are_invalid():
    assert run(None).status is Status.INVALID_INPUT
    long = run("x" * 2_000_000)
    assert long.status is Status.INVALID_INPUT and "over max_chars=1000000" in long.reason


@pytest.mark.parametrize(
    ("reference", "metadata", "says"),
    [
        ("", {}, "reference is empty"),
        ("get_weather(city='Paris')", {}, "reference is not JSON"),
        ('{"f": {"a": [1]}, "g": {}}', {}, "reference[0] must be {'name'"),
        ("42", {}, "reference must be a list of expected calls"),
        ("[42]", {}, "reference[0] must be an object"),
        ('[{"f": {"a": 1}}]', {}, "reference[0].f.a must be a list of acceptable values"),
        ('[{"f": [1]}]', {}, "reference[0].f must map argument names"),
        ('[{"f": {"a": []}}]', {}, "reference[0].f.a lists no acceptable values"),
        ('[{"f": {"a": [{"b": 2}]}}]', {}, "reference[0].f.a[0].b must be a list"),
        (
            '[{"name": "f", "arguments": "{oops"}]',
            {},
            "reference[0].arguments is a string but not JSON",
        ),
        ('[{"name": "", "arguments": {}}]', {}, "non-empty string name"),
        ('[{"f": {"a": [1, 1]}}, {"f": {"a": [1, 1]}}]', {}, None),  # valid: a control row
        (json.dumps([{"f": {}}] * 9), {}, "reference expects 9 calls, over max_calls=8"),
        ("[" * 1000 + "]" * 1000, {}, "reference is not JSON: nesting too deep"),
        ("", {"ground_truth": {"f": 1}}, "metadata.ground_truth[0].f must map"),
        ("", {"ground_truth": "[{"}, "metadata.ground_truth is a string but not JSON"),
        ("[]", {"ground_truth": []}, "not both"),
        (REF, {"tools": {"name": "f"}}, "metadata.tools must be a list"),
        (REF, {"tools": ["f"]}, "metadata.tools[0] must be an object"),
        (REF, {"tools": [{"parameters": {}}]}, "metadata.tools[0].name must be a non-empty string"),
        (REF, {"tools": [{"name": "f", "parameters": []}]}, "parameters must be a JSON Schema"),
        (
            REF,
            {"tools": [{"name": "f", "parameters": {"type": "integr"}}]},
            "parameters is invalid",
        ),
        (REF, {"tools": [TOOLS[0], TOOLS[0]]}, "declares 'f' twice"),
        (REF, {"tools": [{"name": "g"}]}, "names 'f', which metadata.tools does not declare"),
        (REF, {"tools": "[{"}, "metadata.tools is a string but not JSON"),
        (
            REF,
            {
                "tools": [
                    {
                        "name": "f",
                        "parameters": {"$ref": "#/$defs/a", "$defs": {"a": {"$ref": "#/$defs/a"}}},
                    }
                ]
            },
            "recursed too deep",
        ),
        (
            REF,
            {"tools": [{"name": "f", "parameters": {"$ref": "https://example.com/s.json"}}]},
            "cannot be resolved",
        ),
    ],
)
def test_broken_reference_or_metadata_is_invalid_input(reference, metadata, says):
    result = run('<tool_call>{"name": "f", "arguments": {"a": 1}}</tool_call>', reference, metadata)
    if says is None:
        assert result.status is Status.OK
        return
    assert result.status is Status.INVALID_INPUT and result.value is None
    assert says in result.reason, result.reason


def test_invalid_input_is_raised_when_called_directly():
    with pytest.raises(InvalidInput, match="reference is empty"):
        tool_call(Sample(completion="hi"))


@pytest.mark.parametrize(
    "params",
    [
        {"max_calls": 0},
        {"max_calls": 11},
        {"max_calls": True},
        {"max_depth": 65},
        {"max_depth": 0},
        {"max_chars": -1},
        {"ordered": "yes"},
        {"partial_credit": 1},
    ],
)
def test_bad_params_are_rejected_before_any_work(params):
    with pytest.raises(InvalidParams):
        tool_call.check_params({**{p.name: p.default for p in tool_call.params}, **params})
    with pytest.raises((InvalidParams, ValueError)):
        tool_call(Sample(completion="hi", reference="[]"), **params)


def test_declared_params():
    names = [p.name for p in tool_call.params]
    assert names == [
        "ordered",
        "partial_credit",
        "normalize_strings",
        "max_calls",
        "max_chars",
        "max_depth",
    ]
    assert all(p.description for p in tool_call.params)


@pytest.mark.parametrize("levels", [10, 40, 66])
def test_deeply_nested_schemas_never_crash_the_verifier(levels):
    schema = {"type": "integer"}
    for _ in range(levels):
        schema = {"allOf": [schema]}
    tools = [{"name": "f", "parameters": {"type": "object", "properties": {"a": schema}}}]
    result = run('{"name": "f", "arguments": {"a": 1}}', metadata={"tools": tools}, max_depth=64)
    assert result.status in (Status.OK, Status.INVALID_INPUT), result.reason
    assert result.value in (1.0, None)
