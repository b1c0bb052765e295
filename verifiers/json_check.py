"""JSON reward: the completion is JSON, and (optionally) valid against a JSON Schema.

Structured-output and tool-calling training needs a reward for "the model emitted
parseable JSON of the right shape". The schema comes per sample, in
``metadata.schema``, and is checked with `jsonschema`, using the draft its
``$schema`` names (2020-12 when it names none).

Decisions worth knowing:

- NaN and Infinity are not JSON (Python's `json` accepts them; this does not).
- Too-deep nesting (beyond `max_depth`, or deep enough to exhaust Python's stack while
  parsing) is the model's output failing to be usable JSON: OK 0.0, ``parsed=0``,
  reason "nesting too deep". Bounding the depth up front also means that a
  RecursionError during validation can only come from the schema (a ``$ref`` cycle),
  which is then reported as INVALID_INPUT.
- A completion over `max_chars` is refused as INVALID_INPUT naming its length: it was
  not checked, and an unchecked sample is not a failed one.
- Protobuf Struct metadata carries every number as a double, so a schema's
  ``"minLength": 3`` arrives as 3.0. jsonschema accepts integral floats wherever the
  metaschema wants an integer, so such schemas work unchanged.

Not covered: ``format`` keywords are annotations only (as the JSON Schema spec
defaults); remote ``$ref`` are never fetched (an empty `referencing.Registry` is used,
so this stays offline) and count as an invalid schema; duplicate object keys are
accepted, the last one winning, as in Python's `json`.
"""

from __future__ import annotations

import json
import re
from typing import Any

import jsonschema
import referencing
import referencing.exceptions
from jsonschema.protocols import Validator
from jsonschema.validators import validator_for

from referee.types import InvalidInput, InvalidParams, Result, Sample
from referee.verifier import verifier

_FENCE_OPEN = re.compile(r"(?im)^[ \t]*```[ \t]*(?:json)?[ \t]*\n")
_REASON_CHARS = 200


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _fenced_body(text: str, strict: bool) -> str | None:
    """The body of the first ```json (or bare ```) block; strict: the only content."""
    m = _FENCE_OPEN.search(text)
    if m is None or (strict and text[: m.start()].strip()):
        return None
    end = text.find("```", m.end())
    if end < 0 or (strict and text[end + 3 :].strip()):
        return None
    return text[m.end() : end]


def _candidates(text: str, allow_fenced: bool, strict: bool) -> list[tuple[str, bool]]:
    """(text, prefix_only) pairs to try, best first; prefix_only ignores trailing text."""
    out = []
    if allow_fenced:
        body = _fenced_body(text, strict)
        if body is not None:
            out.append((body, False))
    out.append((text, False))
    if not strict:
        starts = [i for i in (text.find("{"), text.find("[")) if i >= 0]
        if starts:
            out.append((text[min(starts) :], True))
    return out


def parse_json(text: str, allow_fenced: bool = True, strict: bool = True) -> Any:
    """The JSON value in `text`, or ValueError saying why there is none.

    Non-strict parsing also accepts text around the JSON: a fenced block anywhere, or
    the value that starts at the first "{" or "[" (whatever follows it is ignored).
    One attempt per candidate, so the cost stays linear in the length of `text`.

    >>> parse_json('```json\\n{"a": [1, 2]}\\n```')
    {'a': [1, 2]}
    >>> parse_json('Sure! {"a": 1} Hope this helps.', strict=False)
    {'a': 1}
    """
    decoder = json.JSONDecoder(parse_constant=_reject_constant)
    first_error: ValueError | None = None
    for candidate, prefix_only in _candidates(text, allow_fenced, strict):
        try:
            if prefix_only:
                return decoder.raw_decode(candidate)[0]
            return decoder.decode(candidate.strip())
        except ValueError as e:
            first_error = first_error or e
    raise first_error or ValueError("no JSON found")


def depth(value: Any) -> int:
    """Nesting depth of a parsed JSON value (a scalar is 0), without recursion."""
    deepest, stack = 0, [(value, 0)]
    while stack:
        v, d = stack.pop()
        if isinstance(v, (dict, list)):
            deepest = max(deepest, d + 1)
            stack.extend((child, d + 1) for child in (v.values() if isinstance(v, dict) else v))
    return deepest


def _validator(schema: Any) -> Validator:
    if not isinstance(schema, (dict, bool)):
        raise InvalidInput(f"metadata.schema must be an object, got {type(schema).__name__}")
    cls = validator_for(schema, default=jsonschema.Draft202012Validator)
    try:
        cls.check_schema(schema)
    except jsonschema.SchemaError as e:
        raise InvalidInput(
            f"metadata.schema is invalid at {e.json_path}: {e.message:.200}"
        ) from None
    return cls(schema, registry=referencing.Registry())


def _first_error(validator: Validator, instance: Any) -> str | None:
    try:
        error = jsonschema.exceptions.best_match(validator.iter_errors(instance))
    except referencing.exceptions.Unresolvable as e:
        raise InvalidInput(f"metadata.schema has a $ref that cannot be resolved: {e}") from None
    except RecursionError:
        raise InvalidInput(
            "metadata.schema recursed too deep while validating (a $ref cycle?)"
        ) from None
    if error is None:
        return None
    return f"{error.json_path}: {error.message}"[:_REASON_CHARS]


@verifier(
    name="json",
    version="1",
    kind="rule",
    param_docs={
        "allow_fenced": "accept JSON inside a ```json fenced block",
        "strict": "the completion must be only the JSON (or only the fenced block)",
        "max_chars": "longer completions are refused as INVALID_INPUT, not parsed",
        "max_depth": "deeper nesting scores 0.0 ('nesting too deep')",
    },
)
def json_reward(
    sample: Sample,
    *,
    allow_fenced: bool = True,
    strict: bool = True,
    max_chars: int = 1_000_000,
    max_depth: int = 100,
) -> Result:
    """1.0 when the completion is JSON and satisfies ``metadata.schema`` if given.

    Components: `parsed`, and `schema_valid` when a schema is given.

    >>> json_reward(Sample(completion='{"name": "Ada"}')).value
    1.0
    >>> s = Sample(completion='{"age": "old"}', metadata={"schema": {"properties": {"age": {"type": "integer"}}}})
    >>> json_reward(s).reason
    "$.age: 'old' is not of type 'integer'"
    """
    if max_chars <= 0 or max_depth <= 0:
        raise InvalidParams(
            f"params max_chars and max_depth must be positive, got {max_chars}, {max_depth}"
        )
    if sample.completion is None:
        raise InvalidInput("completion is missing")
    if len(sample.completion) > max_chars:
        raise InvalidInput(
            f"completion is {len(sample.completion)} chars, over max_chars={max_chars}"
        )
    schema = sample.metadata.get("schema")
    validator = None if schema is None else _validator(schema)
    failed = {"parsed": 0.0} | ({} if validator is None else {"schema_valid": 0.0})
    try:
        value = parse_json(sample.completion, allow_fenced, strict)
    except RecursionError:
        return Result.ok(0.0, reason="nesting too deep", components=failed)
    except ValueError as e:
        return Result.ok(0.0, reason=f"not JSON: {e}"[:_REASON_CHARS], components=failed)
    if depth(value) > max_depth:
        return Result.ok(
            0.0, reason=f"nesting too deep (over max_depth={max_depth})", components=failed
        )
    if validator is None:
        return Result.ok(1.0, reason="parses as JSON", components={"parsed": 1.0})
    error = _first_error(validator, value)
    if error is not None:
        return Result.ok(0.0, reason=error, components={"parsed": 1.0, "schema_valid": 0.0})
    return Result.ok(
        1.0, reason="valid against metadata.schema", components={"parsed": 1.0, "schema_valid": 1.0}
    )
