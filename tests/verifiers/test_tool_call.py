"""tool_call scoring: names, required args, types, values, parallel calls, no-call, credit."""

from __future__ import annotations

import doctest
import json

import pytest

from referee import InvalidInput, Sample, Status
from referee.convert import sample_from_proto, sample_to_proto
from referee.verifier import FunctionVerifier
from referee.verifiers import builtin_verifiers, tool_call_expect, tool_call_match, tool_call_parse
from referee.verifiers import tool_call as tool_call_module
from referee.verifiers.tool_call import tool_call

WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather in a city",
        "parameters": {
            "type": "object",
            "properties": {
                "city": {"type": "string"},
                "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
                "days": {"type": "integer", "minimum": 1},
                "lat": {"type": "number"},
            },
            "required": ["city"],
            "additionalProperties": False,
        },
    },
}
TOOLS = [WEATHER_TOOL]
WEATHER_REF = [{"get_weather": {"city": ["Paris", "Paris, France"], "unit": ["celsius", ""]}}]
ALL_ONES = {k: 1.0 for k in ("parsed", "count", "name", "required", "types", "values", "matched")}


def call(_name="get_weather", /, **arguments):
    return {"name": _name, "arguments": arguments}


def tags(*calls):
    return "\n".join(f"<tool_call>\n{json.dumps(c)}\n</tool_call>" for c in calls)


def score(completion, reference=WEATHER_REF, tools=TOOLS, **params):
    metadata = {} if tools is None else {"tools": tools}
    ref = reference if isinstance(reference, str) else json.dumps(reference)
    return tool_call(Sample(completion=completion, reference=ref, metadata=metadata), **params)


def test_docstring_examples_run():
    runner, finder = doctest.DocTestRunner(), doctest.DocTestFinder()
    modules = (tool_call_module, tool_call_parse, tool_call_match, tool_call_expect)
    for module in modules:
        objs = [module] + [v.fn for v in vars(module).values() if isinstance(v, FunctionVerifier)]
        for obj in objs:
            for test in finder.find(obj, globs=dict(vars(module))):
                runner.run(test)
    results = runner.summarize(verbose=False)
    assert results.failed == 0 and results.attempted >= 10


def test_registered_as_a_builtin():
    assert tool_call in builtin_verifiers()
    assert tool_call.name == "tool_call"


@pytest.mark.parametrize(
    "completion",
    [
        tags(call(city="Paris", unit="celsius")),
        tags(call(city="Paris")),  # unit is optional ("" among its values)
        tags(call(city="paris, france")),  # an alternative, normalised
        json.dumps(
            [
                {
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city": "PARIS"}'},
                }
            ]
        ),
        json.dumps(call(city="Paris")),
        f"```json\n{json.dumps([call(city='Paris')])}\n```",
    ],
)
def test_a_right_call_scores_one_in_every_form(completion):
    result = score(completion)
    assert result.status is Status.OK
    assert (result.value, result.components) == (1.0, ALL_ONES), result.reason


@pytest.mark.parametrize(
    ("arguments", "failed", "says"),
    [
        ({"city": "Lyon"}, {"values"}, "argument 'city' = 'Lyon' is not an accepted value"),
        ({"unit": "celsius"}, {"required"}, "missing argument 'city'"),
        ({"city": 7}, {"types", "values"}, "7 is not of type 'string'"),
        ({"city": "Paris", "unit": "kelvin"}, {"types", "values"}, "'kelvin' is not one of"),
        ({"city": "Paris", "days": 2}, {"values"}, "unexpected argument 'days'"),
        ({"city": "Paris", "wind": True}, {"types", "values"}, "Additional properties"),
        ({"city": "Paris", "days": 0}, {"types", "values"}, "less than the minimum"),
    ],
)
def test_each_check_fails_on_its_own(arguments, failed, says):
    result = score(tags(call(**arguments)))
    assert result.value == 0.0
    assert {k for k, v in result.components.items() if v == 0.0} == failed | {"matched"}
    assert says in result.reason


def test_schema_enum_is_checked_even_when_the_reference_accepts_the_value():
    ref = [{"get_weather": {"city": ["Paris"], "unit": ["kelvin"]}}]
    result = score(tags(call(city="Paris", unit="kelvin")), ref)
    assert result.value == 0.0
    assert (result.components["types"], result.components["values"]) == (0.0, 1.0)


def test_schema_required_beats_an_optional_mark_in_the_reference():
    ref = [{"get_weather": {"city": ["Paris", ""]}}]
    result = score(tags(call()), ref)
    assert result.components["required"] == 0.0 and "missing argument 'city'" in result.reason


def test_wrong_function_name():
    result = score(tags(call("get_forecast", city="Paris")), ordered=True)
    assert result.value == 0.0
    assert result.components["name"] == 0.0 and result.components["count"] == 1.0
    assert "calls 'get_forecast'" in result.reason


def test_int_is_accepted_for_a_float_and_the_same_number_matches():
    ref = [{"get_weather": {"city": ["Paris"], "lat": [48.0]}}]
    assert score(tags(call(city="Paris", lat=48)), ref).value == 1.0
    assert score(tags(call(city="Paris", lat=48.0)), ref).value == 1.0
    assert score(tags(call(city="Paris", lat=48.5)), ref).components["values"] == 0.0


def test_a_float_is_not_an_integer_unless_integral():
    ref = [{"get_weather": {"city": ["Paris"], "days": [3]}}]
    assert (
        score(tags(call(city="Paris", days=3.0)), ref).value == 1.0
    )  # JSON Schema: 3.0 is an integer
    half = score(tags(call(city="Paris", days=2.5)), ref)
    assert half.components["types"] == 0.0 and "not of type 'integer'" in half.reason


def test_without_a_schema_types_come_from_the_acceptable_values():
    ref = [{"add": {"a": [1], "b": [2.5], "flag": [True], "name": ["x"]}}]
    assert score(tags(call("add", a=1.0, b=2.5, flag=True, name="X")), ref, tools=None).value == 1.0
    as_string = score(tags(call("add", a="1", b=2.5, flag=True, name="x")), ref, tools=None)
    assert (
        as_string.components["types"] == 0.0
        and "'a' is string, expected number" in as_string.reason
    )
    as_number = score(tags(call("add", a=1, b=2.5, flag=1, name="x")), ref, tools=None)
    assert as_number.components["types"] == 0.0 and as_number.components["values"] == 0.0


def test_strings_are_normalised_bfcl_style_unless_turned_off():
    ref = [{"get_weather": {"city": ["New York, NY"]}}]
    loose = tags(call(city="new york ny"))
    assert score(loose, ref).value == 1.0
    assert score(tags(call(city="New-York_NY.")), ref).value == 1.0
    assert score(loose, ref, normalize_strings=False).components["values"] == 0.0
    assert score(tags(call(city="New York, NY")), ref, normalize_strings=False).value == 1.0
    assert score(tags(call(city="Newark")), ref).value == 0.0


def test_nested_objects_and_lists_compare_recursively():
    tools = [
        {
            "name": "book",
            "parameters": {
                "type": "dict",
                "properties": {
                    "guest": {
                        "type": "dict",
                        "properties": {"name": {"type": "string"}, "age": {"type": "integer"}},
                    },
                    "nights": {"type": "tuple", "items": {"type": "integer"}},
                    "rooms": {"type": "array", "items": {"type": "dict"}},
                    "price": {"type": "float"},
                    "note": {"type": "any"},
                },
                "required": ["guest"],
            },
        }
    ]  # BFCL's own type names
    ref = [
        {
            "book": {
                "guest": [{"name": ["Ada Lovelace"], "age": [36, ""]}],
                "nights": [[1, 2], [2, 1]],
                "rooms": [[{"kind": ["double"]}, {"kind": ["single", "twin"]}]],
                "price": [100.0],
                "note": ["", "late arrival"],
            }
        }
    ]
    good = call(
        "book",
        guest={"name": "ada lovelace"},
        nights=[2, 1],
        rooms=[{"kind": "double"}, {"kind": "twin"}],
        price=100,
    )
    assert score(tags(good), ref, tools).value == 1.0
    for bad in (
        {**good["arguments"], "guest": {"name": "Ada Lovelace", "age": 37}},
        {**good["arguments"], "guest": {"name": "Ada", "title": "Countess"}},
        {**good["arguments"], "nights": [1, 2, 3]},
        {**good["arguments"], "rooms": [{"kind": "twin"}, {"kind": "double"}]},
    ):
        result = score(tags(call("book", **bad)), ref, tools)
        assert result.components["values"] == 0.0, bad
    wrong_type = score(tags(call("book", **{**good["arguments"], "nights": "1-2"})), ref, tools)
    assert wrong_type.components["types"] == 0.0


def test_tuples_and_lists_are_equivalent_in_python_metadata():
    sample = Sample(
        completion=tags(call("f", xy=[1, 2])),
        metadata={"ground_truth": [{"f": {"xy": [(1, 2)]}}]},
    )
    assert tool_call(sample).value == 1.0


PARALLEL_REF = [
    {"get_weather": {"city": ["Paris"]}},
    {"get_weather": {"city": ["Tokyo"]}},
    {"get_weather": {"city": ["Lima"], "unit": ["fahrenheit"]}},
]
PARIS, TOKYO, LIMA = call(city="Paris"), call(city="Tokyo"), call(city="Lima", unit="fahrenheit")


def test_parallel_calls_in_any_order_by_default():
    assert score(tags(PARIS, TOKYO, LIMA), PARALLEL_REF).value == 1.0
    assert score(tags(LIMA, PARIS, TOKYO), PARALLEL_REF).value == 1.0
    assert score(json.dumps([LIMA, TOKYO, PARIS]), PARALLEL_REF).value == 1.0


def test_ordered_mode_wants_the_expected_order():
    assert score(tags(PARIS, TOKYO, LIMA), PARALLEL_REF, ordered=True).value == 1.0
    shuffled = score(tags(TOKYO, PARIS, LIMA), PARALLEL_REF, ordered=True)
    assert shuffled.value == 0.0 and shuffled.components["values"] == 0.0
    assert shuffled.components["count"] == 1.0


def test_unordered_pairing_is_not_greedy():
    ref = [{"f": {"a": [1, 2]}}, {"f": {"a": [1]}}]
    # Greedy first-fit pairs expected call 1 with f(a=1) and leaves f(a=2) for call 2.
    assert score(tags(call("f", a=1), call("f", a=2)), ref, tools=None).value == 1.0


def test_missing_and_extra_calls_with_and_without_partial_credit():
    missing = score(tags(PARIS, LIMA), PARALLEL_REF)
    assert missing.value == 0.0 and missing.components["count"] == 0.0
    assert "expected call 2 (get_weather) is not made" in missing.reason
    assert score(tags(PARIS, LIMA), PARALLEL_REF, partial_credit=True).value == pytest.approx(2 / 3)
    extra = score(tags(PARIS, TOKYO, LIMA, PARIS), PARALLEL_REF, partial_credit=True)
    assert (
        extra.value == pytest.approx(3 / 4)
        and "call 4 (get_weather) is not expected" in extra.reason
    )
    assert extra.components["values"] == 1.0 and extra.components["count"] == 0.0


def test_partial_credit_counts_fully_matched_calls():
    one_wrong = tags(PARIS, call(city="Osaka"), LIMA)
    result = score(one_wrong, PARALLEL_REF, partial_credit=True)
    assert result.value == pytest.approx(2 / 3) and result.components["values"] == 0.0
    assert score(one_wrong, PARALLEL_REF).value == 0.0


@pytest.mark.parametrize("completion", ["Paris is 18°C today.", "", '{"answer": "sunny"}'])
def test_no_call_expected_and_none_made(completion):
    result = score(completion, [])
    assert (result.value, result.components) == (1.0, ALL_ONES)


@pytest.mark.parametrize(
    ("completion", "parsed"),
    [(tags(PARIS), 1.0), (json.dumps([PARIS]), 1.0), ("<tool_call>{oops</tool_call>", 0.0)],
)
def test_no_call_expected_but_one_made(completion, parsed):
    result = score(completion, [])
    assert result.value == 0.0 and result.components["count"] == 0.0
    assert result.components["parsed"] == parsed


def test_call_expected_but_plain_text():
    result = score("It is sunny in Paris.")
    assert result.value == 0.0
    assert result.components["parsed"] == 1.0 and result.components["count"] == 0.0


def test_unparseable_call_scores_zero_with_parsed_zero():
    result = score(
        '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"\n</tool_call>'
    )
    assert result.status is Status.OK and result.value == 0.0
    assert result.components == {k: 0.0 for k in ALL_ONES}
    assert result.reason.startswith("unparseable tool call: <tool_call> block 1 is not a call")


def test_reference_shapes_agree():
    completion = tags(call(city="Paris", unit="celsius"))
    shapes = [
        WEATHER_REF,
        WEATHER_REF[0],
        call(city="Paris", unit="celsius"),
        [{"name": "get_weather", "parameters": {"city": "Paris", "unit": "celsius"}}],
        {
            "role": "assistant",
            "tool_calls": [
                {
                    "type": "function",
                    "function": {
                        "name": "get_weather",
                        "arguments": '{"city": "Paris", "unit": "celsius"}',
                    },
                }
            ],
        },
    ]
    for shape in shapes:
        assert score(completion, shape).value == 1.0, shape
    # The single-answer shape makes every argument required.
    assert score(tags(call(city="Paris")), call(city="Paris", unit="celsius")).value == 0.0


def test_expected_calls_from_metadata_ground_truth():
    for truth in (WEATHER_REF, json.dumps(WEATHER_REF)):
        sample = Sample(completion=tags(PARIS), metadata={"ground_truth": truth, "tools": TOOLS})
        assert tool_call(sample).value == 1.0
    both = Sample(completion=tags(PARIS), reference="[]", metadata={"ground_truth": []})
    with pytest.raises(InvalidInput, match="not both"):
        tool_call(both)


def test_tools_as_a_json_string_and_bare_definitions():
    bare = [WEATHER_TOOL["function"]]
    assert score(tags(PARIS), tools=json.dumps(TOOLS)).value == 1.0
    assert score(tags(PARIS), tools=bare).value == 1.0


def test_protobuf_struct_round_trip_keeps_the_score():
    # Struct carries every number as a double: 3 arrives as 3.0, "minimum": 1 as 1.0.
    ref = [{"get_weather": {"city": ["Paris"], "days": [3]}}]
    sample = Sample(
        completion=tags(call(city="Paris", days=3)),
        metadata={"tools": TOOLS, "ground_truth": ref},
    )
    wired = sample_from_proto(sample_to_proto(sample))
    assert wired.metadata["ground_truth"][0]["get_weather"]["days"] == [3.0]
    assert tool_call(wired).value == 1.0
