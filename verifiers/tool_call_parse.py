"""Reading tool calls out of a completion, in the shapes models and servers emit them.

The `tool_call` reward has to meet the policy where it is: a chat server returns an
OpenAI-style ``tool_calls`` list, while a raw completion from SGLang or vLLM holds the
model's own text form. The forms read, tried in this order (the first form present
decides: a completion with a ``<tool_call>`` tag is read only as tags):

1. Hermes / Qwen tags: ``<tool_call>{"name": ..., "arguments": {...}}</tool_call>``,
   one block per call (several blocks are parallel calls), text around them allowed.
   A final block may lack its closing tag, since servers strip the stop string
   ``</tool_call>``. A block may also hold a JSON list of calls.
2. JSON, the whole completion or the first fenced block (```` ```json ```` or bare
   ```` ``` ````, text around the fence allowed): an OpenAI call
   ``{"id"?, "type": "function", "function": {"name", "arguments"}}``, a bare call
   ``{"name", "arguments"}`` (``"parameters"`` is accepted for ``"arguments"``, as
   Llama 3 emits it), a list of either, or an assistant message
   ``{"tool_calls": [...]}``. A leading ``[TOOL_CALLS]`` (Mistral) or
   ``<|python_tag|>`` (Llama 3) marker is ignored.

Reasoning is not output: when the completion has a ``</think>`` tag, only the text
after the last one is read (as a server's reasoning parser would hand it on), so a
``<tool_call>`` mentioned while thinking is neither a call nor a broken one.

``arguments`` may be an object or a JSON string holding one (OpenAI's wire form); a
missing, null or blank ``arguments`` means no arguments.

Telling "no call" from "a broken call" matters, because a broken call is the model's
fault and scores 0 (``parsed=0``), while plain text is a legitimate answer where no
call is expected. A completion *tried* to call when it has a ``<tool_call>`` tag, or
its text (or its first fenced block) starts with ``{``; anything else that does not
parse as a call is plain text. JSON that parses but is not call-shaped (``{"answer":
4}``, ``[1, 2]``) is plain text too.

JSON is read strictly: NaN and Infinity are refused, a duplicate key in an object is
an error (a tool would receive one of the two values, and which one is not defined),
and nesting deeper than `max_depth` is an error, which also bounds the recursion of
everything that later walks the values.

Not covered: calls embedded in prose without tags or a fence ("Sure: {...}"),
Python-syntax calls (BFCL's ``f(a=1)`` prompting mode), Llama's ``<function=f>``
form, and more than the first fenced block.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from referee.verifiers.json_check import depth

_TAG_BLOCK = re.compile(r"<tool_call>(.*?)(?:</tool_call>|(?=<tool_call>)|\Z)", re.DOTALL)
_FENCE = re.compile(r"```[ \t]*(?:json|JSON)?[ \t]*\n(.*?)```", re.DOTALL)
_MARKERS = ("[TOOL_CALLS]", "<|python_tag|>")


@dataclass(frozen=True)
class Call:
    """One tool call: the function's name and its arguments object."""

    name: str
    arguments: dict[str, Any]


@dataclass(frozen=True)
class Parsed:
    """What the completion holds: its calls, or why its attempt at calling is broken.

    `form` names where the calls came from ("tool_call tags", "json", "text"); `error`
    is set (and `calls` empty) when the completion tried to call and failed.
    """

    calls: tuple[Call, ...]
    form: str
    error: str | None = None


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj = dict(pairs)
    if len(obj) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise ValueError(f"duplicate key {key!r:.60}")
            seen.add(key)
    return obj


def load_json(text: str, max_depth: int) -> Any:
    """Strict JSON (see the module docstring), or ValueError saying why not.

    >>> load_json('{"a": [1, 2]}', max_depth=5)
    {'a': [1, 2]}
    >>> load_json('{"a": 1, "a": 2}', max_depth=5)
    Traceback (most recent call last):
    ...
    ValueError: duplicate key 'a'
    """
    try:
        value = json.loads(text, parse_constant=_reject_constant, object_pairs_hook=_unique_keys)
    except RecursionError:
        raise ValueError("nesting too deep") from None
    if depth(value) > max_depth:
        raise ValueError(f"nesting too deep (over max_depth={max_depth})")
    return value


def is_call_like(obj: Any) -> bool:
    """An object that means to be a call (its fields may still be wrong)."""
    return isinstance(obj, dict) and ("name" in obj or "function" in obj)


def call_from_object(obj: Any, where: str, max_depth: int) -> Call:
    """Reads one call object (bare or OpenAI-wrapped); ValueError naming `where`."""
    if not isinstance(obj, dict):
        raise ValueError(f"{where} must be an object, got {type(obj).__name__}")
    if "function" in obj:
        if obj.get("type", "function") != "function":
            raise ValueError(f"{where} has type {obj['type']!r:.40}, not 'function'")
        obj, where = obj["function"], f"{where}.function"
        if not isinstance(obj, dict):
            raise ValueError(f"{where} must be an object, got {type(obj).__name__}")
    name = obj.get("name")
    if not isinstance(name, str) or not name.strip():
        raise ValueError(f"{where} needs a non-empty string name, got {name!r:.60}")
    if "arguments" in obj and "parameters" in obj:
        raise ValueError(f"{where} has both arguments and parameters")
    key = "parameters" if "parameters" in obj else "arguments"
    args = obj.get(key)
    if isinstance(args, str):
        if not args.strip():
            args = None
        else:
            try:
                args = load_json(args, max_depth)
            except ValueError as e:
                raise ValueError(f"{where}.{key} is a string but not JSON: {e}") from None
    if args is None:
        args = {}
    if not isinstance(args, dict):
        raise ValueError(f"{where}.{key} must be an object, got {type(args).__name__}")
    return Call(name, args)


def _calls_in(value: Any, where: str, max_depth: int) -> list[Call]:
    """Calls in a parsed JSON value; ValueError when it is call-shaped but broken."""
    if isinstance(value, dict) and "tool_calls" in value:
        value = value["tool_calls"]
        where = f"{where}.tool_calls"
        if value is None:
            return []
        if not isinstance(value, list):
            raise ValueError(f"{where} must be a list, got {type(value).__name__}")
    if isinstance(value, dict):
        return [call_from_object(value, where, max_depth)]
    if isinstance(value, list):
        return [call_from_object(v, f"{where}[{i}]", max_depth) for i, v in enumerate(value)]
    raise ValueError(f"{where} must be a call object or a list of calls")


def _looks_like_calls(value: Any) -> bool:
    if isinstance(value, dict):
        return "tool_calls" in value or is_call_like(value)
    return isinstance(value, list) and any(is_call_like(v) for v in value)


def _from_tags(text: str, max_depth: int) -> Parsed:
    calls: list[Call] = []
    for n, m in enumerate(_TAG_BLOCK.finditer(text), start=1):
        where = f"<tool_call> block {n}"
        body = m.group(1).strip()
        if not body:
            return Parsed((), "tool_call tags", f"{where} is empty")
        try:
            value = load_json(body, max_depth)
            if not isinstance(value, (dict, list)):
                raise ValueError(f"{where} must hold a call object, got {type(value).__name__}")
            calls.extend(_calls_in(value, where, max_depth))
        except ValueError as e:
            msg = str(e) if str(e).startswith(where) else f"{where} is not a call: {e}"
            return Parsed((), "tool_call tags", msg)
    return Parsed(tuple(calls), "tool_call tags")


def _strip_marker(text: str) -> str:
    for marker in _MARKERS:
        if text.startswith(marker):
            return text[len(marker) :].lstrip()
    return text


def parse_completion(text: str, max_depth: int = 32) -> Parsed:
    """The tool calls in `text`, per the forms in the module docstring.

    >>> parse_completion('<tool_call>{"name": "f", "arguments": {"x": 1}}</tool_call>').calls
    (Call(name='f', arguments={'x': 1}),)
    >>> parse_completion('[{"type": "function", "function": {"name": "g", "arguments": "{}"}}]').calls
    (Call(name='g', arguments={}),)
    >>> parse_completion("Paris is the capital of France.")
    Parsed(calls=(), form='text', error=None)
    >>> parse_completion('<tool_call>{"name": "f", "arguments": {</tool_call>').error[:34]
    '<tool_call> block 1 is not a call:'
    """
    if "</think>" in text:
        text = text.rsplit("</think>", 1)[1]
    if "<tool_call>" in text:
        return _from_tags(text, max_depth)
    stripped = _strip_marker(text.strip())
    fence = _FENCE.search(stripped)
    candidates = [("completion", stripped)]
    if fence is not None:
        candidates.append(("fenced block", fence.group(1).strip()))
    for where, body in candidates:
        try:
            value = load_json(body, max_depth)
        except ValueError as e:
            if body.startswith("{"):
                return Parsed((), "json", f"{where} starts with '{{' but is not JSON: {e}")
            continue
        if not _looks_like_calls(value):
            continue
        try:
            return Parsed(tuple(_calls_in(value, where, max_depth)), "json")
        except ValueError as e:
            return Parsed((), "json", str(e))
    return Parsed((), "text")
