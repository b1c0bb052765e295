"""What a verifier is, and how a plain function becomes one.

A verifier is anything with a `name`, a `version`, a `kind`, a `description`, the
`params` it accepts, and ``verify(sample, **params) -> Result``. The `@verifier`
decorator turns a function into one, reading the accepted parameters from its
keyword-only arguments, so the signature is the single place they are declared:

>>> from referee import Result, Sample, verifier
>>> @verifier(name="shouts", version="1", param_docs={"min_len": "shortest shout"})
... def shouts(sample: Sample, *, min_len: int = 1) -> Result:
...     text = sample.completion or ""
...     return Result.ok(float(len(text) >= min_len and text.isupper()))
>>> shouts(Sample(completion="HEY")).value
1.0
>>> [p.name for p in shouts.params]
['min_len']

Verifiers must be pure and offline: the same sample and params give the same result,
which is what makes caching by (name, version, params, sample) sound. Bump `version`
whenever the scoring changes.
"""

from __future__ import annotations

import inspect
import json
import math
import types
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from referee.types import Result, Sample

_REQUIRED = object()

_JSON_TYPES: dict[type, str] = {
    bool: "boolean",
    int: "integer",
    float: "number",
    str: "string",
    list: "array",
    tuple: "array",
    dict: "object",
}


@dataclass(frozen=True)
class Param:
    """One accepted parameter. `type` is a JSON type name, as in JSON Schema."""

    name: str
    type: str
    description: str = ""
    default: Any = _REQUIRED
    nullable: bool = False

    @property
    def required(self) -> bool:
        return self.default is _REQUIRED

    def default_json(self) -> str:
        return "" if self.required else json.dumps(self.default)


@runtime_checkable
class Verifier(Protocol):
    """The reward contract as seen from Python (STYLE.md item 6)."""

    name: str
    version: str
    kind: str
    description: str
    params: tuple[Param, ...]
    timeout_s: float | None

    def verify(self, sample: Sample, **params: Any) -> Result: ...


@dataclass(frozen=True)
class FunctionVerifier:
    """A verifier backed by a plain function; made by `@verifier`."""

    fn: Callable[..., Result]
    name: str
    version: str
    kind: str = "rule"
    description: str = ""
    params: tuple[Param, ...] = field(default_factory=tuple)
    timeout_s: float | None = None
    param_check: Callable[..., None] | None = None

    def verify(self, sample: Sample, **params: Any) -> Result:
        return self.fn(sample, **params)

    def check_params(self, params: dict[str, Any]) -> None:
        """Rejects bad param values once per request (ValueError -> INVALID_ARGUMENT)."""
        if self.param_check is not None:
            self.param_check(**params)

    def __call__(self, sample: Sample, **params: Any) -> Result:
        return self.fn(sample, **params)


def verifier(
    *,
    name: str,
    version: str,
    kind: str = "rule",
    description: str | None = None,
    param_docs: Mapping[str, str] | None = None,
    timeout_s: float | None = None,
    check_params: Callable[..., None] | None = None,
) -> Callable[[Callable[..., Result]], FunctionVerifier]:
    """Declares a function ``fn(sample, *, p1=..., p2=...) -> Result`` as a verifier.

    Keyword-only arguments become the accepted params, typed from their annotations
    (bool, int, float, str, list, dict, optionally ``| None``); those without a default
    are required. `description` defaults to the first paragraph of the docstring.
    `check_params(**params)` may raise ValueError for values that are well-typed but
    wrong (a bad regex, min > max): the server calls it once per request and answers
    INVALID_ARGUMENT, instead of failing every sample.
    """
    if not name or not version:
        raise ValueError("a verifier needs a non-empty name and version")

    def wrap(fn: Callable[..., Result]) -> FunctionVerifier:
        doc = description
        if doc is None:
            doc = inspect.cleandoc(fn.__doc__ or "").split("\n\n")[0].replace("\n", " ")
        return FunctionVerifier(
            fn=fn,
            name=name,
            version=str(version),
            kind=kind,
            description=doc,
            params=params_from_signature(fn, param_docs or {}),
            timeout_s=timeout_s,
            param_check=check_params,
        )

    return wrap


def params_from_signature(fn: Callable[..., Any], docs: Mapping[str, str]) -> tuple[Param, ...]:
    """Reads the accepted params from `fn`'s keyword-only arguments."""
    hints = typing.get_type_hints(fn)
    out = []
    for p in inspect.signature(fn).parameters.values():
        if p.kind is not inspect.Parameter.KEYWORD_ONLY:
            continue
        json_type, nullable = _json_type(hints.get(p.name, Any), f"{fn.__qualname__}({p.name})")
        default = _REQUIRED if p.default is inspect.Parameter.empty else p.default
        out.append(Param(p.name, json_type, docs.get(p.name, ""), default, nullable))
    unknown = set(docs) - {p.name for p in out}
    if unknown:
        raise ValueError(f"param_docs names unknown params {sorted(unknown)} of {fn.__qualname__}")
    return tuple(out)


def _json_type(hint: Any, where: str) -> tuple[str, bool]:
    args = typing.get_args(hint)
    if typing.get_origin(hint) in (typing.Union, types.UnionType) and type(None) in args:
        rest = [a for a in args if a is not type(None)]
        if len(rest) == 1:
            return _json_type(rest[0], where)[0], True
    base = typing.get_origin(hint) or hint
    if base in _JSON_TYPES:
        return _JSON_TYPES[base], False
    raise TypeError(f"{where}: annotate it as bool, int, float, str, list or dict, not {hint!r}")


def validate_params(v: Verifier, given: Mapping[str, Any]) -> dict[str, Any]:
    """Checks request params against what `v` accepts and fills in defaults.

    Raises ValueError with a message naming the offending parameter; the server turns
    that into INVALID_ARGUMENT.
    """
    accepted = {p.name: p for p in v.params}
    unknown = sorted(set(given) - set(accepted))
    if unknown:
        names = ", ".join(accepted) or "none"
        raise ValueError(f"reward {v.name!r} does not accept params {unknown}; it accepts: {names}")
    out: dict[str, Any] = {}
    for p in v.params:
        if p.name not in given:
            if p.required:
                raise ValueError(f"reward {v.name!r} needs param {p.name!r} ({p.type})")
            out[p.name] = p.default
            continue
        out[p.name] = _coerce(v.name, p, given[p.name])
    return out


def _coerce(reward: str, p: Param, value: Any) -> Any:
    if value is None and p.nullable:
        return None
    ok: bool
    if p.type == "boolean":
        ok = isinstance(value, bool)
    elif p.type == "integer":
        # protobuf Struct carries every number as a double.
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        ok = ok and float(value).is_integer()
        if ok:
            value = int(value)
    elif p.type == "number":
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        ok = ok and math.isfinite(value)
        if ok:
            value = float(value)
    elif p.type == "string":
        ok = isinstance(value, str)
    elif p.type == "array":
        ok = isinstance(value, (list, tuple))
        if ok:
            value = list(value)
    elif p.type == "object":
        ok = isinstance(value, dict)
    else:
        ok = True
    if not ok:
        raise ValueError(
            f"reward {reward!r} param {p.name!r} must be {p.type}, got {type(value).__name__} {value!r:.80}"
        )
    return value
