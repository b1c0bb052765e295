"""json: parsing (bare, fenced, lenient), schema validation, and refused samples."""

from __future__ import annotations

import doctest
import socket

import pytest

from referee import InvalidInput, Sample, Status
from referee.verifier import FunctionVerifier, validate_params
from referee.verifiers import json_check
from referee.verifiers.json_check import depth, json_reward

PERSON = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "minLength": 1},
        "age": {"type": "integer", "minimum": 0},
        "tags": {"type": "array", "items": {"type": "string"}, "maxItems": 3},
    },
    "required": ["name", "age"],
    "additionalProperties": False,
}


def test_docstring_examples_run():
    runner, finder = doctest.DocTestRunner(), doctest.DocTestFinder()
    objs = [json_check] + [
        v.fn for v in vars(json_check).values() if isinstance(v, FunctionVerifier)
    ]
    for obj in objs:
        for test in finder.find(obj, globs=dict(vars(json_check))):
            runner.run(test)
    results = runner.summarize(verbose=False)
    assert results.failed == 0 and results.attempted >= 4


def score(completion, schema=None, **params):
    metadata = {} if schema is None else {"schema": schema}
    return json_reward(Sample(completion=completion, metadata=metadata), **params)


@pytest.mark.parametrize(
    "completion",
    [
        '{"a": 1}',
        "  [1, 2, 3]\n",
        "42",
        '"just a string"',
        "null",
        '{"ünïcödé": "✓", "emoji": "\\ud83d\\ude00"}',
        '```json\n{"a": 1}\n```',
        '```JSON\n{"a": 1}\n```\n',
        '```\n{"a": 1}\n```',
        '\n```json\n{"a": 1}```',
    ],
)
def test_json_parses(completion):
    result = score(completion)
    assert result.status is Status.OK
    assert result.value == 1.0, result.reason
    assert result.components == {"parsed": 1.0}


@pytest.mark.parametrize(
    "completion, reason",
    [
        ("", "not JSON: Expecting value"),
        ("   ", "not JSON"),
        ("{'a': 1}", "not JSON: Expecting property name"),
        ('{"a": 1,}', "not JSON"),
        ('{"a": 1} {"b": 2}', "Extra data"),
        ('Here you go: {"a": 1}', "not JSON"),
        ('```json\n{"a": 1}\n```\nHope this helps!', "not JSON"),
        ('```python\n{"a": 1}\n```', "not JSON"),
        ("NaN", "NaN is not valid JSON"),
        ('{"x": -Infinity}', "-Infinity is not valid JSON"),
        ('```json\n{"a": 1}', "not JSON"),  # unclosed fence
    ],
)
def test_not_json_scores_zero(completion, reason):
    result = score(completion)
    assert result.status is Status.OK
    assert result.value == 0.0
    assert result.components == {"parsed": 0.0}
    assert reason in result.reason


def test_fences_can_be_refused():
    assert score('```json\n{"a": 1}\n```', allow_fenced=False).value == 0.0


@pytest.mark.parametrize(
    "completion, value",
    [
        ('Here you go: {"a": 1}. Anything else?', 1.0),
        ('Sure.\n```json\n{"a": 1}\n```\nDone.', 1.0),
        ("The list is [1, 2] as asked", 1.0),
        ('{"a": 1} {"b": 2}', 1.0),  # the first value counts
        ("no json here", 0.0),
        ("{not json} [1]", 0.0),  # one attempt, at the first bracket
    ],
)
def test_non_strict_finds_json_inside_text(completion, value):
    assert score(completion, strict=False).value == value


@pytest.mark.parametrize(
    "completion, value, reason",
    [
        ('{"name": "Ada", "age": 36}', 1.0, "valid against metadata.schema"),
        ('{"name": "Ada", "age": 36, "tags": ["x"]}', 1.0, "valid"),
        ('{"name": "Ada"}', 0.0, "$: 'age' is a required property"),
        ('{"name": "Ada", "age": "36"}', 0.0, "$.age: '36' is not of type 'integer'"),
        ('{"name": "Ada", "age": -1}', 0.0, "$.age: -1 is less than the minimum of 0"),
        ('{"name": "", "age": 1}', 0.0, "$.name"),
        ('{"name": "A", "age": 1, "tags": ["a", 2]}', 0.0, "$.tags[1]: 2 is not of type"),
        ('{"name": "A", "age": 1, "extra": 1}', 0.0, "Additional properties"),
        ('{"name": "A", "age": 1.5}', 0.0, "$.age: 1.5 is not of type 'integer'"),
        ("[]", 0.0, "is not of type 'object'"),
    ],
)
def test_schema_validation(completion, value, reason):
    result = score(completion, PERSON)
    assert result.value == value
    assert result.components == {"parsed": 1.0, "schema_valid": value}
    assert reason in result.reason


def test_schema_given_but_unparsable_reports_both_components():
    result = score("nope", PERSON)
    assert result.components == {"parsed": 0.0, "schema_valid": 0.0}


def test_struct_style_floats_in_the_schema_still_work():
    # protobuf Struct turns every number in metadata into a double.
    schema = {
        "type": "object",
        "properties": {"n": {"type": "integer", "minimum": 3.0}, "s": {"maxLength": 2.0}},
        "minProperties": 1.0,
    }
    assert score('{"n": 3, "s": "ab"}', schema).value == 1.0
    assert score('{"n": 2}', schema).value == 0.0
    assert score('{"s": "abc"}', schema).value == 0.0
    assert score('{"n": 3.5}', schema).value == 0.0


def test_schema_draft_follows_dollar_schema():
    draft4 = {
        "$schema": "http://json-schema.org/draft-04/schema#",
        "exclusiveMinimum": True,
        "minimum": 0,
    }
    assert score("0", draft4).value == 0.0
    assert score("1", draft4).value == 1.0
    draft2020 = {"prefixItems": [{"type": "integer"}]}  # default: 2020-12
    assert score('["x"]', draft2020).value == 0.0


def test_boolean_schemas():
    assert score("1", True).value == 1.0
    assert score("1", False).value == 0.0


@pytest.mark.parametrize(
    "schema, message",
    [
        ({"type": "nonsense"}, r"metadata.schema is invalid at \$\.type: 'nonsense'"),
        ({"minimum": "three"}, "metadata.schema is invalid"),
        ({"required": "name"}, "metadata.schema is invalid"),
        ("{}", "metadata.schema must be an object, got str"),
        ([{"type": "object"}], "metadata.schema must be an object, got list"),
        ({"$ref": "#/$defs/missing"}, "metadata.schema has a \\$ref that cannot be resolved"),
        ({"$ref": "#"}, "metadata.schema recursed too deep"),
    ],
)
def test_bad_schemas_are_invalid_input(schema, message):
    with pytest.raises(InvalidInput, match=message):
        score('{"a": 1}', schema)


def test_remote_refs_are_never_fetched(monkeypatch):
    # Recorded rather than raised: referencing turns a failing retrieval into
    # Unresolvable, which would hide an attempt.
    attempts = []

    def no_network(*args, **kwargs):
        attempts.append(args)
        raise OSError("no network in tests")

    monkeypatch.setattr(socket, "create_connection", no_network)
    monkeypatch.setattr(socket, "getaddrinfo", no_network)
    with pytest.raises(InvalidInput, match="cannot be resolved"):
        score("1", {"$ref": "https://example.com/schema.json"})
    assert attempts == []


def test_invalid_schema_is_refused_even_when_the_completion_is_garbage():
    with pytest.raises(InvalidInput, match="metadata.schema"):
        score("not json at all", {"type": 3})


def test_long_validation_messages_are_truncated():
    result = score('"' + "x" * 10_000 + '"', {"type": "integer"})
    assert result.value == 0.0
    assert len(result.reason) <= 200


def test_missing_completion_is_invalid():
    with pytest.raises(InvalidInput, match="completion is missing"):
        score(None)


def test_over_long_completion_is_refused_not_scored():
    with pytest.raises(InvalidInput, match="completion is 12 chars, over max_chars=10"):
        score('"' + "x" * 10 + '"', max_chars=10)


@pytest.mark.parametrize(
    "params, message",
    [({"max_chars": 0}, "max_chars"), ({"max_depth": -1}, "max_depth")],
)
def test_bad_params_are_request_errors(params, message):
    with pytest.raises(ValueError, match=message) as info:
        score("1", **params)
    assert not isinstance(info.value, InvalidInput)


def test_defaults():
    assert validate_params(json_reward, {}) == {
        "allow_fenced": True,
        "strict": True,
        "max_chars": 1_000_000,
        "max_depth": 100,
    }


@pytest.mark.parametrize(
    "completion, reason",
    [
        ("[" * 100_000 + "]" * 100_000, "nesting too deep"),  # exhausts the stack
        ("[" * 101 + "]" * 101, "nesting too deep (over max_depth=100)"),
        ('{"a":' * 101 + "1" + "}" * 101, "nesting too deep"),
    ],
)
def test_deep_nesting_is_a_clean_zero(completion, reason):
    result = score(completion, PERSON)
    assert result.status is Status.OK
    assert result.value == 0.0
    assert result.components == {"parsed": 0.0, "schema_valid": 0.0}
    assert reason in result.reason


def test_nesting_at_max_depth_validates_against_a_recursive_schema():
    tree = {"type": "array", "items": {"$ref": "#"}}
    assert score("[" * 100 + "]" * 100, tree).value == 1.0
    assert score("[" * 100 + "1" + "]" * 100, tree).value == 0.0


def test_depth():
    assert depth(1) == 0
    assert depth([]) == 1
    assert depth({"a": [1, {"b": []}]}) == 4


@pytest.mark.timeout(30)
def test_huge_valid_json_within_the_bound():
    big = "[" + ",".join(['{"k": "' + "v" * 50 + '"}'] * 15_000) + "]"
    schema = {"type": "array", "items": {"type": "object", "required": ["k"]}}
    assert len(big) < 1_000_000
    assert score(big, schema).value == 1.0
