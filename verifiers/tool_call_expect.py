"""What a sample expects of its tool calls: the expected calls and the tools' schemas.

Everything here reads the *sample* (its reference and metadata), so every problem is
the dataset's fault and raises `InvalidInput` naming the field, never a score.

Expected calls come from ``reference`` (a JSON string) or ``metadata.ground_truth``
(BFCL's field name; a list, or a JSON string of one), not both. The value is a list of
calls (one call alone may be given without the list; ``[]`` means "no call expected";
an assistant message ``{"tool_calls": [...]}`` is read as its list). Each call is one
of two shapes, which may be mixed in one list:

- **BFCL's possible_answer**: ``{"get_weather": {"city": ["Paris", "paris, fr"],
  "unit": ["celsius", ""]}}``. Each argument maps to its list of acceptable values; an
  empty string in the list marks the argument optional (it may be omitted; ``""`` is
  only that marker, never an accepted value). An argument whose value is an object is
  given as a list of objects in the same shape (``{"loc": [{"lat": [1.5], "lon":
  [2]}]}``), and a list of objects as a list of lists of such objects, exactly as
  BFCL writes them. A bare value where a list of alternatives belongs is refused
  rather than guessed at (``{"f": {"x": 5}}`` is INVALID_INPUT; write ``[5]``).
- **A single answer**: ``{"name": "get_weather", "arguments": {"city": "Paris"}}``
  (``"parameters"`` for ``"arguments"``, an ``arguments`` JSON string and the OpenAI
  wrapper ``{"type": "function", "function": {...}}`` are read as in completions).
  Every argument is required and has exactly the value given; nested objects and
  lists are literal values.

Tool schemas come from ``metadata.tools`` (a list, or a JSON string of one), each an
OpenAI tool ``{"type": "function", "function": {"name", "parameters"}}`` or a bare
``{"name", "parameters"}``, where ``parameters`` is a JSON Schema for the arguments
object (none means no arguments are declared). BFCL's Python-flavoured type names are
translated on the way in ("dict" -> "object", "float" -> "number", "tuple" ->
"array"; "any" drops the type), so its function docs work unchanged. Schemas are
checked against their metaschema and never fetch remote ``$ref``.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import jsonschema
import referencing
from jsonschema.protocols import Validator
from jsonschema.validators import validator_for

from referee.types import InvalidInput, Sample
from referee.verifiers.json_check import depth
from referee.verifiers.tool_call_parse import call_from_object, load_json

_BFCL_TYPES = {"dict": "object", "float": "number", "tuple": "array"}


def _bound(max_depth: int) -> int:
    """Nesting allowed in the reference and metadata for arguments `max_depth` deep:
    BFCL answers and JSON Schemas spend two levels on each level of the arguments."""
    return 2 * max_depth + 8


@dataclass(frozen=True)
class Lit:
    """A scalar value (string, number, boolean or null) that must be matched."""

    value: Any


@dataclass(frozen=True)
class ListOf:
    """A list that must match item by item, in order."""

    items: tuple[Pattern, ...]


@dataclass(frozen=True)
class DictOf:
    """An object whose keys must each match their `Arg`; no other keys allowed."""

    fields: Mapping[str, Arg]


Pattern = Lit | ListOf | DictOf


@dataclass(frozen=True)
class Arg:
    """The acceptable values of one argument, and whether it may be omitted."""

    alternatives: tuple[Pattern, ...]
    optional: bool


@dataclass(frozen=True)
class ExpectedCall:
    name: str
    args: Mapping[str, Arg]


@dataclass(frozen=True)
class Tool:
    """One declared function: its arguments' validator and required argument names."""

    name: str
    validator: Validator
    required: tuple[str, ...]


def _scalar(value: Any, where: str) -> Lit:
    if value is None or isinstance(value, (str, bool, int, float)):
        return Lit(value)
    raise InvalidInput(f"{where} is a {type(value).__name__}, which JSON has no value for")


def literal(value: Any, where: str) -> Pattern:
    """The pattern that accepts exactly `value` (under the matcher's coercions)."""
    if isinstance(value, dict):
        return DictOf(
            {k: Arg((literal(v, f"{where}.{k}"),), optional=False) for k, v in value.items()}
        )
    if isinstance(value, (list, tuple)):
        return ListOf(tuple(literal(v, f"{where}[{i}]") for i, v in enumerate(value)))
    return _scalar(value, where)


def _bfcl_arg(values: Any, where: str) -> Arg:
    if not isinstance(values, (list, tuple)):
        raise InvalidInput(f"{where} must be a list of acceptable values, got {values!r:.80}")
    if not values:
        raise InvalidInput(f'{where} lists no acceptable values ([""] marks it optional)')
    kept = tuple(_bfcl_value(v, f"{where}[{i}]") for i, v in enumerate(values) if v != "")
    return Arg(kept, optional=len(kept) < len(values))


def _bfcl_value(value: Any, where: str) -> Pattern:
    """One acceptable value in BFCL's shape: objects hold lists of alternatives."""
    if isinstance(value, dict):
        return DictOf({k: _bfcl_arg(v, f"{where}.{k}") for k, v in value.items()})
    if isinstance(value, (list, tuple)):
        return ListOf(tuple(_bfcl_value(v, f"{where}[{i}]") for i, v in enumerate(value)))
    return _scalar(value, where)


def _expected_call(item: Any, where: str, max_depth: int) -> ExpectedCall:
    if not isinstance(item, dict):
        raise InvalidInput(f"{where} must be an object, got {type(item).__name__}")
    if "function" in item or isinstance(item.get("name"), str):
        try:
            call = call_from_object(item, where, max_depth)
        except ValueError as e:
            raise InvalidInput(str(e)) from None
        args = {
            k: Arg((literal(v, f"{where}.arguments.{k}"),), optional=False)
            for k, v in call.arguments.items()
        }
        return ExpectedCall(call.name, args)
    if len(item) != 1:
        raise InvalidInput(
            f"{where} must be {{'name': ..., 'arguments': {{...}}}} or BFCL's "
            f"{{function_name: {{arg: [values]}}}}, got keys {sorted(item)[:5]}"
        )
    ((name, args),) = item.items()
    if not isinstance(args, dict):
        raise InvalidInput(f"{where}.{name} must map argument names to value lists")
    return ExpectedCall(name, {k: _bfcl_arg(v, f"{where}.{name}.{k}") for k, v in args.items()})


def _json_field(value: Any, field: str, max_depth: int) -> Any:
    """A metadata field given as JSON text or as the value itself, depth-bounded."""
    if isinstance(value, str):
        try:
            return load_json(value, max_depth)
        except ValueError as e:
            raise InvalidInput(f"{field} is a string but not JSON: {e}") from None
    if depth(value) > max_depth:
        raise InvalidInput(f"{field} is nested too deep (over {max_depth} levels)")
    return value


def expected_calls(sample: Sample, max_depth: int) -> tuple[ExpectedCall, ...]:
    """The calls the sample expects, in order; InvalidInput naming the bad field."""
    max_depth = _bound(max_depth)
    reference = sample.reference.strip()
    truth = sample.metadata.get("ground_truth")
    if reference and truth is not None:
        raise InvalidInput(
            "give the expected calls in reference or metadata.ground_truth, not both"
        )
    if reference:
        field = "reference"
        try:
            value = load_json(reference, max_depth)
        except ValueError as e:
            raise InvalidInput(f"reference is not JSON: {e}"[:300]) from None
    elif truth is not None:
        field = "metadata.ground_truth"
        value = _json_field(truth, field, max_depth)
    else:
        raise InvalidInput(
            "reference is empty; tool_call needs the expected calls as JSON in reference "
            "or metadata.ground_truth ([] when no call is expected)"
        )
    if isinstance(value, dict) and "tool_calls" in value:
        value, field = value["tool_calls"], f"{field}.tool_calls"
    if isinstance(value, dict):
        value = [value]
    if not isinstance(value, list):
        raise InvalidInput(f"{field} must be a list of expected calls, got {type(value).__name__}")
    return tuple(_expected_call(item, f"{field}[{i}]", max_depth) for i, item in enumerate(value))


def _translate_types(schema: Any) -> Any:
    """A copy of `schema` with BFCL's type names replaced (iterative: depth-safe)."""
    if not isinstance(schema, dict):
        return schema
    root: dict[str, Any] = {}
    stack = [(schema, root)]
    while stack:
        src, dst = stack.pop()
        for key, value in src.items():
            if isinstance(value, dict):
                dst[key] = {}
                stack.append((value, dst[key]))
            elif isinstance(value, list):
                dst[key] = [dict() if isinstance(v, dict) else v for v in value]
                stack.extend(
                    (v, d) for v, d in zip(value, dst[key], strict=True) if isinstance(v, dict)
                )
            else:
                dst[key] = value
        kind = dst.get("type")
        if kind == "any":
            del dst["type"]
        elif isinstance(kind, str):
            dst["type"] = _BFCL_TYPES.get(kind, kind)
        elif isinstance(kind, list):
            dst["type"] = [_BFCL_TYPES.get(k, k) if isinstance(k, str) else k for k in kind]
    return root


def _tool(item: Any, where: str) -> Tool:
    if not isinstance(item, dict):
        raise InvalidInput(f"{where} must be an object, got {type(item).__name__}")
    if "function" in item:
        item, where = item["function"], f"{where}.function"
        if not isinstance(item, dict):
            raise InvalidInput(f"{where} must be an object, got {type(item).__name__}")
    name = item.get("name")
    if not isinstance(name, str) or not name:
        raise InvalidInput(f"{where}.name must be a non-empty string, got {name!r:.60}")
    schema = item.get("parameters")
    if schema is None:
        schema = {"type": "object"}
    if not isinstance(schema, dict):
        raise InvalidInput(f"{where}.parameters must be a JSON Schema object")
    schema = _translate_types(schema)
    try:
        validator = _compiled(json.dumps(schema, sort_keys=True))
    except jsonschema.SchemaError as e:
        raise InvalidInput(
            f"{where}.parameters is invalid at {e.json_path}: {e.message:.200}"
        ) from None
    except RecursionError:
        raise InvalidInput(f"{where}.parameters is nested too deep to check") from None
    required = schema.get("required", [])
    if not isinstance(required, list):
        raise InvalidInput(f"{where}.parameters.required must be a list")
    return Tool(name, validator, tuple(required))


@functools.lru_cache(maxsize=1024)
def _compiled(schema_json: str) -> Validator:
    """A checked validator for one schema, kept by its canonical JSON: a training run
    sends the same few tool schemas with every sample, and checking a schema against
    the metaschema costs milliseconds (about 95% of a sample's scoring before this)."""
    schema = json.loads(schema_json)
    cls = validator_for(schema, default=jsonschema.Draft202012Validator)
    cls.check_schema(schema)
    return cls(schema, registry=referencing.Registry())


def load_tools(sample: Sample, max_depth: int) -> dict[str, Tool] | None:
    """The declared tools by name, or None when ``metadata.tools`` is absent."""
    max_depth = _bound(max_depth)
    raw = sample.metadata.get("tools")
    if raw is None:
        return None
    tools = _json_field(raw, "metadata.tools", max_depth)
    if not isinstance(tools, list):
        raise InvalidInput(f"metadata.tools must be a list of tools, got {type(tools).__name__}")
    out: dict[str, Tool] = {}
    for i, item in enumerate(tools):
        tool = _tool(item, f"metadata.tools[{i}]")
        if tool.name in out:
            raise InvalidInput(f"metadata.tools declares {tool.name!r:.60} twice")
        out[tool.name] = tool
    return out
