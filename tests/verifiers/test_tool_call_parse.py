"""tool_call parsing: every completion form, and each way a call attempt can be broken."""

from __future__ import annotations

import json

import pytest

from referee.verifiers.tool_call_parse import Call, parse_completion

WEATHER = Call("get_weather", {"city": "Paris", "unit": "celsius"})
ARGS = '{"city": "Paris", "unit": "celsius"}'
BARE = f'{{"name": "get_weather", "arguments": {ARGS}}}'
OPENAI = {
    "id": "call_1",
    "type": "function",
    "function": {"name": "get_weather", "arguments": ARGS},
}


@pytest.mark.parametrize(
    ("completion", "form"),
    [
        (f"<tool_call>\n{BARE}\n</tool_call>", "tool_call tags"),
        (
            f"<think>Need the weather.</think>\nLet me check.\n<tool_call>{BARE}</tool_call>",
            "tool_call tags",
        ),
        (f"<tool_call>\n{BARE}\n", "tool_call tags"),  # stop string </tool_call> stripped
        (f"<tool_call>[{BARE}]</tool_call>", "tool_call tags"),
        (json.dumps([OPENAI]), "json"),
        (
            json.dumps(
                [{**OPENAI, "function": {**OPENAI["function"], "arguments": json.loads(ARGS)}}]
            ),
            "json",
        ),
        (json.dumps({"role": "assistant", "content": None, "tool_calls": [OPENAI]}), "json"),
        (json.dumps(OPENAI), "json"),
        (BARE, "json"),
        (f"  {BARE}\n", "json"),
        (BARE.replace('"arguments"', '"parameters"'), "json"),
        (f"[{BARE}]", "json"),
        (f"Calling the tool now:\n```json\n{BARE}\n```\nDone.", "json"),
        (f"```\n[{BARE}]\n```", "json"),
        (f"[TOOL_CALLS][{BARE}]", "json"),
        (f"<|python_tag|>{BARE.replace('arguments', 'parameters')}", "json"),
    ],
)
def test_each_form_yields_the_call(completion, form):
    parsed = parse_completion(completion)
    assert parsed.error is None
    assert parsed.calls == (WEATHER,)
    assert parsed.form == form


def test_several_tag_blocks_are_parallel_calls():
    text = (
        '<tool_call>{"name": "a", "arguments": {"x": 1}}</tool_call>\n'
        '<tool_call>{"name": "b", "arguments": {}}</tool_call>\n'
        '<tool_call>{"name": "c", "arguments": {"y": [1, 2]}}'
    )
    assert parse_completion(text).calls == (
        Call("a", {"x": 1}),
        Call("b", {}),
        Call("c", {"y": [1, 2]}),
    )


@pytest.mark.parametrize(
    "completion",
    [
        '{"name": "ping"}',
        '{"name": "ping", "arguments": null}',
        '{"name": "ping", "arguments": "  "}',
        '[{"type": "function", "function": {"name": "ping", "arguments": "{}"}}]',
    ],
)
def test_missing_or_blank_arguments_mean_none(completion):
    assert parse_completion(completion).calls == (Call("ping", {}),)


@pytest.mark.parametrize(
    "completion",
    [
        "The weather in Paris is mild.",
        "",
        '{"answer": 42}',
        "[1, 2, 3]",
        "[]",
        '"get_weather"',
        "[Note] no tool is needed here.",
        '{"role": "assistant", "content": "Hi", "tool_calls": null}',
        "```python\nprint('hi')\n```",
        'Sure: {"name": "f", "arguments": {}}',  # not covered: a call inside prose
    ],
)
def test_text_and_non_call_json_are_no_call(completion):
    parsed = parse_completion(completion)
    assert parsed.calls == () and parsed.error is None


@pytest.mark.parametrize(
    ("completion", "says"),
    [
        ('<tool_call>{"name": "f", "arguments": {"x": }</tool_call>', "block 1 is not a call"),
        ("<tool_call></tool_call>", "block 1 is empty"),
        ('<tool_call>{"name": "f"}</tool_call><tool_call>42</tool_call>', "block 2 must hold"),
        ('<tool_call>{"arguments": {}}</tool_call>', "non-empty string name"),
        ('{"name": "f", "arguments": "{x: 1}"}', "arguments is a string but not JSON"),
        ('{"name": "f", "arguments": "[1, 2]"}', "arguments must be an object, got list"),
        ('{"name": "f", "arguments": 7}', "arguments must be an object, got int"),
        ('{"name": 7, "arguments": {}}', "non-empty string name"),
        ('{"name": "  ", "arguments": {}}', "non-empty string name"),
        ('{"name": "f", "arguments": {}, "parameters": {}}', "both arguments and parameters"),
        ('{"type": "retrieval", "function": {"name": "f"}}', "not 'function'"),
        ('{"function": "f"}', "function must be an object"),
        ('{"name": "f", "arguments": {"x": 1, "x": 2}}', "duplicate key 'x'"),
        ('{"name": "f", "arguments": {"x": NaN}}', "NaN is not valid JSON"),
        ('{"name": "f", "arguments": {"x": 1}', "starts with '{' but is not JSON"),
        ('[{"name": "f"}, {"city": "Paris"}]', "completion[1] needs a non-empty string name"),
        ('[{"name": "f"}, 3]', "completion[1] must be an object"),
        ('{"tool_calls": {"name": "f"}}', "tool_calls must be a list"),
        ("```json\n{'name': 'f'}\n```", "fenced block starts with '{' but is not JSON"),
    ],
)
def test_broken_call_attempts_are_errors(completion, says):
    parsed = parse_completion(completion)
    assert parsed.calls == ()
    assert parsed.error is not None and says in parsed.error, parsed.error


def test_nesting_beyond_max_depth_is_an_error_not_a_crash():
    deep = '{"name": "f", "arguments": {"x": ' + "[" * 50 + "]" * 50 + "}}"
    assert "nesting too deep" in parse_completion(deep, max_depth=10).error
    assert parse_completion(deep, max_depth=60).error is None
    abyss = '{"name": "f", "arguments": ' + "[" * 200_000 + "]" * 200_000 + "}"
    assert "nesting too deep" in parse_completion(abyss).error
    assert "nesting too deep" in parse_completion(f"<tool_call>{abyss}</tool_call>").error


def test_arguments_string_gets_the_same_strict_reading():
    dup = json.dumps(
        [{"type": "function", "function": {"name": "f", "arguments": '{"a": 1, "a": 2}'}}]
    )
    assert "duplicate key 'a'" in parse_completion(dup).error
    inf = json.dumps({"name": "f", "arguments": '{"a": Infinity}'})
    assert "Infinity is not valid JSON" in parse_completion(inf).error


def test_only_the_text_after_thinking_is_read():
    thought = "<think>Use <tool_call> tags? The format is <tool_call>{...}</tool_call>.</think>"
    assert parse_completion(f"{thought}\nNo tool is needed: 4.") == parse_completion(
        "No tool is needed: 4."
    )
    assert parse_completion(f"{thought}\n<tool_call>{BARE}</tool_call>").calls == (WEATHER,)
