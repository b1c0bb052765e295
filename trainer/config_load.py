"""Turning YAML plus `--set key=value` overrides into typed config dataclasses, strictly.

Generic machinery, no knowledge of the trainer's schema (that is `config.py`): the
conversion follows each dataclass's type hints (nested dataclasses, lists and tuples of
them, `X | None`, unions, `Literal`, `dict`, `Any`, and the scalars) and every mistake
becomes a `ConfigError` naming the full dotted key:

- an unknown key lists the valid keys at that level, with a did-you-mean;
- a wrong type names the expected type and the value given;
- a missing required key says what the field is for (its docstring);
- a `__post_init__` check raises `ConfigError(field, why and how to fix)`; the loader
  puts the section path in front (`clip_high` becomes `algorithm.clip_high`).

Scalars are coerced only where nothing can be lost or misread: an int where a float is
wanted, a numeric string where a number is wanted (PyYAML reads ``1e-5`` as a string), an
integral float where an int is wanted. Booleans are strict: ``"yes"``, ``1`` or ``"true"``
in quotes are errors, not guesses.
"""

from __future__ import annotations

import ast
import dataclasses
import difflib
import inspect
import math
import textwrap
import types
import typing
from functools import cache
from pathlib import Path
from typing import Any, Literal, Union

import yaml


class ConfigError(ValueError):
    """A config mistake. `key` is the dotted key at fault; the message says how to fix it."""

    def __init__(self, key: str, detail: str) -> None:
        super().__init__(f"{key}: {detail}" if key else detail)
        self.key = key
        self.detail = detail

    def under(self, prefix: str) -> ConfigError:
        """The same error seen from `prefix`, the section that holds the key."""
        return ConfigError(_join(prefix, self.key), self.detail)


def _join(prefix: str, key: str | int) -> str:
    return f"{prefix}.{key}" if prefix else str(key)


# --- reading ------------------------------------------------------------------------


def read_yaml(path: str | Path) -> dict[str, Any]:
    """The mapping a YAML file holds ({} for an empty file)."""
    p = Path(path)
    try:
        text = p.read_text()
    except OSError as e:
        raise ConfigError("", f"cannot read config {p}: {e.strerror or e}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise ConfigError("", f"{p} is not valid YAML: {e}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError("", f"{p} must hold a mapping of sections, got {_describe(data)}")
    return data


def parse_value(raw: str) -> Any:
    """A `--set` value read as YAML (``8``, ``0.5``, ``[a, b]``, ``null``), else the raw text.

    Text that YAML would read as a mapping without braces (``Answer: 42``) stays text, and
    so does anything YAML cannot parse.
    """
    try:
        value = yaml.safe_load(raw)
    except yaml.YAMLError:
        return raw
    if isinstance(value, dict) and not raw.lstrip().startswith("{"):
        return raw
    return value


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Applies ``a.b.c=value`` overrides in order, in place; a number indexes a list.

    A missing section is created (its keys are checked later, with the rest); an index
    equal to a list's length appends to it.
    """
    for item in overrides:
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep or not key or any(not part for part in key.split(".")):
            raise ConfigError("--set", f"expects KEY=VALUE such as rollout.n=8, got {item!r}")
        parts = key.split(".")
        node: Any = data
        for depth, part in enumerate(parts):
            here = ".".join(parts[:depth])
            last = depth == len(parts) - 1
            value = parse_value(raw) if last else None
            if isinstance(node, list):
                node = _step_list(node, part, here, value, last)
            elif isinstance(node, dict):
                if last:
                    node[part] = value
                else:
                    if node.get(part) is None:
                        node[part] = {}
                    node = node[part]
            else:
                raise ConfigError(here, f"is {node!r}, not a section or a list; cannot set {key}")
    return data


def _step_list(node: list[Any], part: str, here: str, value: Any, last: bool) -> Any:
    if not part.isdigit():
        raise ConfigError(here, f"is a list; index it with a number, not {part!r}")
    i = int(part)
    if i > len(node):
        raise ConfigError(
            here,
            f"has {len(node)} entries; index {i} is out of range (use {len(node)} to append one)",
        )
    if i == len(node):
        node.append(value if last else {})
    elif last:
        node[i] = value
    elif node[i] is None:
        node[i] = {}
    return node[i]


# --- converting ---------------------------------------------------------------------


def from_dict(cls: type[Any], data: Any, key: str = "") -> Any:
    """Builds dataclass `cls` from plain data, checking every key and type on the way."""
    return _convert(cls, data, key, cls)


def _convert(tp: Any, value: Any, key: str, root: type[Any]) -> Any:
    if tp is Any:
        return value
    if dataclasses.is_dataclass(tp):
        return _build(tp, value, key, root)
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (Union, types.UnionType):
        return _convert_union(tp, args, value, key, root)
    if origin is Literal:
        for choice in args:
            if value == choice and type(value) is type(choice):
                return value
        close = difflib.get_close_matches(str(value), [str(a) for a in args], n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise ConfigError(key, f"expected {_type_name(tp)}, got {_describe(value)}{hint}")
    if origin in (list, tuple) or tp in (list, tuple):
        return _convert_sequence(tp, origin or tp, args, value, key, root)
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            raise _type_error(key, tp, value)
        val_tp = args[1] if args else Any
        out = {}
        for k, v in value.items():
            if not isinstance(k, str):
                raise ConfigError(_join(key, k), f"keys must be text, got {_describe(k)}")
            out[k] = _convert(val_tp, v, _join(key, k), root)
        return out
    if tp is type(None):
        if value is None:
            return None
        raise _type_error(key, tp, value)
    if tp in (bool, int, float, str):
        return _convert_scalar(tp, value, key)
    raise TypeError(f"{key}: config type {tp!r} is not supported by the loader")


def _convert_union(tp: Any, args: tuple[Any, ...], value: Any, key: str, root: type) -> Any:
    if value is None:
        if type(None) in args:
            return None
        raise _type_error(key, tp, value)
    errors: list[ConfigError] = []
    for arm in args:
        if arm is type(None):
            continue
        try:
            return _convert(arm, value, key, root)
        except ConfigError as e:
            errors.append(e)
    if len(errors) == 1:  # `X | None`: X's own error (with its did-you-mean)
        raise errors[0]
    # An arm that got past the value's own type failed deeper (a list element, a
    # section's key): its error says more than "expected X or Y".
    deeper = [e for e in errors if e.key != key]
    if deeper:
        raise max(deeper, key=lambda e: len(e.key))
    raise _type_error(key, tp, value)


def _convert_sequence(
    tp: Any, origin: Any, args: tuple[Any, ...], value: Any, key: str, root: type
) -> Any:
    if not isinstance(value, (list, tuple)):
        raise _type_error(key, tp, value)
    if origin is tuple and args and not (len(args) == 2 and args[1] is Ellipsis):
        if len(value) != len(args):
            raise ConfigError(key, f"expected {len(args)} values, got {len(value)}: {value!r}")
        return tuple(
            _convert(a, v, _join(key, i), root)
            for i, (a, v) in enumerate(zip(args, value, strict=True))
        )
    item_tp = args[0] if args else Any
    items = [_convert(item_tp, v, _join(key, i), root) for i, v in enumerate(value)]
    return tuple(items) if origin is tuple else items


def _convert_scalar(tp: type, value: Any, key: str) -> Any:
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(key, f"expected true or false, got {_describe(value)}")
    if tp is str:
        if isinstance(value, str):
            return value
        raise _type_error(key, tp, value)
    if isinstance(value, bool):
        raise _type_error(key, tp, value)
    number: float | int | None = None
    if isinstance(value, (int, float)):
        number = value
    elif isinstance(value, str):
        try:
            number = int(value.strip())
        except ValueError:
            try:
                number = float(value.strip())
            except ValueError:
                number = None
    if number is None or (isinstance(number, float) and math.isnan(number)):
        raise _type_error(key, tp, value)
    if tp is float:
        return float(number)
    if isinstance(number, int):
        return number
    if math.isfinite(number) and number.is_integer():
        return int(number)
    raise _type_error(key, tp, value)


def _build(cls: type[Any], value: Any, key: str, root: type[Any]) -> Any:
    if not isinstance(value, dict):
        raise ConfigError(
            key,
            f"expected a section with keys ({', '.join(_init_fields(cls))}), "
            f"got {_describe(value)}",
        )
    hints = _hints(cls)
    fields = _init_fields(cls)
    kwargs: dict[str, Any] = {}
    for name, item in value.items():
        if name not in fields:
            raise _unknown_key(cls, root, key, name)
        kwargs[name] = _convert(hints[name], item, _join(key, name), root)
    for name, f in fields.items():
        if (
            name not in kwargs
            and f.default is dataclasses.MISSING
            and f.default_factory is dataclasses.MISSING
        ):
            doc = field_docs(cls).get(name, "")
            what = f" ({doc.splitlines()[0]})" if doc else ""
            raise ConfigError(_join(key, name), f"required key is missing{what}")
    try:
        return cls(**kwargs)
    except ConfigError as e:
        raise e.under(key) from None


def _unknown_key(cls: type, root: type, key: str, name: Any) -> ConfigError:
    full = _join(key, name)
    valid = list(_init_fields(cls))
    close = difflib.get_close_matches(str(name), valid, n=1, cutoff=0.6)
    if close:
        hint = f"; did you mean {_join(key, close[0])!r}?"
    else:
        elsewhere = [k for k in _all_keys(root) if k.rsplit(".", 1)[-1] == str(name)]
        hint = f"; did you mean {elsewhere[0]!r}?" if elsewhere else ""
    where = f"under {key}" if key else "at the top level"
    return ConfigError(full, f"unknown key{hint or '.'} Valid keys {where}: {', '.join(valid)}")


# --- introspection ------------------------------------------------------------------


@cache
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _init_fields(cls: type) -> dict[str, dataclasses.Field[Any]]:
    return {f.name: f for f in dataclasses.fields(cls) if f.init}


@cache
def _all_keys(cls: type, prefix: str = "") -> tuple[str, ...]:
    """Every dotted key under `cls` (list entries shown as `.0`), for suggestions."""
    out: list[str] = []
    for name, f in _init_fields(cls).items():
        full = _join(prefix, name)
        out.append(full)
        tp = _hints(cls)[f.name]
        inner = _dataclass_inside(tp)
        if inner is not None:
            sub = full + (".0" if typing.get_origin(tp) in (list, tuple) else "")
            out.extend(_all_keys(inner, sub))
    return tuple(out)


def _dataclass_inside(tp: Any) -> type | None:
    if dataclasses.is_dataclass(tp):
        return tp  # type: ignore[return-value]
    for arg in typing.get_args(tp):
        found = _dataclass_inside(arg)
        if found is not None:
            return found
    return None


@cache
def field_docs(cls: type) -> dict[str, str]:
    """The docstring under each field of dataclass `cls`, read from its source."""
    tree = ast.parse(textwrap.dedent(inspect.getsource(cls)))
    body = tree.body[0].body  # type: ignore[attr-defined]
    docs: dict[str, str] = {}
    for node, nxt in zip(body, body[1:], strict=False):
        if (
            isinstance(node, ast.AnnAssign)
            and isinstance(node.target, ast.Name)
            and isinstance(nxt, ast.Expr)
            and isinstance(nxt.value, ast.Constant)
            and isinstance(nxt.value.value, str)
        ):
            docs[node.target.id] = inspect.cleandoc(nxt.value.value)
    return docs


def _type_name(tp: Any) -> str:
    if tp is Any:
        return "anything"
    if dataclasses.is_dataclass(tp):
        return "a section (mapping)"
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (Union, types.UnionType):
        names = [_type_name(a) for a in args if a is not type(None)]
        text = " or ".join(names)
        return f"{text} or null" if type(None) in args else text
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in args)
    if origin in (list, tuple) or tp in (list, tuple):
        if origin is tuple and args and args[-1] is not Ellipsis:
            return f"a list of {len(args)} ({', '.join(_type_name(a) for a in args)})"
        return f"a list of {_type_name(args[0])}" if args else "a list"
    if origin is dict or tp is dict:
        return f"a mapping of text to {_type_name(args[1])}" if args else "a mapping"
    if tp is type(None):
        return "null"
    return {bool: "true or false", int: "an integer", float: "a number", str: "text"}.get(
        tp, getattr(tp, "__name__", str(tp))
    )


def _describe(value: Any) -> str:
    kind = "null" if value is None else type(value).__name__
    return f"{value!r} ({kind})"


def _type_error(key: str, tp: Any, value: Any) -> ConfigError:
    return ConfigError(key, f"expected {_type_name(tp)}, got {_describe(value)}")


# --- writing ------------------------------------------------------------------------


def to_plain(obj: Any) -> Any:
    """Dataclasses, tuples and containers as the dicts, lists and scalars YAML writes."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_plain(getattr(obj, f.name)) for f in dataclasses.fields(obj) if f.init}
    if isinstance(obj, (list, tuple)):
        return [to_plain(v) for v in obj]
    if isinstance(obj, dict):
        return {k: to_plain(v) for k, v in obj.items()}
    if isinstance(obj, Path):
        return str(obj)
    return obj


def dump_yaml(obj: Any) -> str:
    return yaml.safe_dump(to_plain(obj), sort_keys=False, allow_unicode=True)
