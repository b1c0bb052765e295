"""Strict reading of a YAML mapping into typed values, with errors naming the dotted key.

A small hand-written alternative to a schema library for service configs: each
`Section` remembers the keys read from it, so `done()` rejects typos (listing the valid
keys, with a did-you-mean) instead of ignoring them. Values that are None count as
absent.
"""

from __future__ import annotations

import difflib
import json
import math
from pathlib import Path
from typing import Any

import yaml

MISSING: Any = object()
"""Default meaning "required": reading an absent key fails."""


class KeyedConfigError(ValueError):
    """A config mistake; `key` is the dotted key at fault, `detail` how to fix it."""

    def __init__(self, key: str, detail: str) -> None:
        super().__init__(f"{key}: {detail}" if key else detail)
        self.key = key
        self.detail = detail


def read_yaml_file(path: Path, error: type[KeyedConfigError], what: str = "") -> Any:
    """The YAML document in `path`; `error` (with no key) when it cannot be read or
    parsed. `what` names the file in the unreadable case ("gateway config ...")."""
    try:
        return yaml.safe_load(path.read_text())
    except OSError as e:
        raise error("", f"cannot read {what}{path}: {e.strerror or e}") from None
    except yaml.YAMLError as e:
        raise error("", f"{path} is not valid YAML: {e}") from None


class Section:
    """A mapping being read; remembers its dotted key and which keys were used."""

    def __init__(self, data: Any, key: str,
                 error: type[KeyedConfigError] = KeyedConfigError) -> None:
        self.error = error
        if data is None:
            data = {}
        if not isinstance(data, dict):
            raise error(key, f"must be a mapping, got {type(data).__name__} {data!r}")
        self.data = data
        self.key = key
        self.used: set[str] = set()

    def sub(self, name: str | int) -> str:
        return f"{self.key}.{name}" if self.key else str(name)

    def fail(self, name: str, detail: str) -> Any:
        raise self.error(self.sub(name) if name else self.key, detail)

    def get(self, name: str, default: Any) -> Any:
        self.used.add(name)
        value = self.data.get(name, MISSING)
        if value is MISSING or value is None:
            if default is MISSING:
                self.fail(name, "is required")
            return default
        return value

    def text(self, name: str, default: Any) -> Any:
        value = self.get(name, default)
        if value is not default and not isinstance(value, str):
            self.fail(name, f"must be a string, got {type(value).__name__} {value!r}")
        return value

    def number(self, name: str, default: Any, low: float | None = None,
               integer: bool = False) -> Any:
        value = self.get(name, default)
        if value is default:
            return value
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            self.fail(name, f"must be a finite number, got {value!r}")
        if integer and value != int(value):
            self.fail(name, f"must be a whole number, got {value!r}")
        if low is not None and value < low:
            self.fail(name, f"must be >= {low:g}, got {value!r}")
        return float(value)

    def boolean(self, name: str, default: bool) -> bool:
        value = self.get(name, default)
        if not isinstance(value, bool):
            self.fail(name, f"must be true or false, got {value!r}")
        return value

    def choice(self, name: str, options: tuple[str, ...], default: str) -> Any:
        value = self.get(name, default)
        if value not in options:
            self.fail(name, f"must be one of {', '.join(options)}; got {value!r}")
        return value

    def mapping(self, name: str) -> dict[str, Any]:
        value = self.get(name, {})
        if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
            self.fail(name, f"must be a mapping of names to values, got {value!r}")
        try:
            json.dumps(value, allow_nan=False)
        except (TypeError, ValueError) as e:
            self.fail(name, f"must hold plain JSON values: {e}")
        return dict(value)

    def section(self, name: str) -> Section:
        return Section(self.get(name, {}), self.sub(name), self.error)

    def sections(self, name: str, required: bool) -> list[tuple[str, Section]]:
        """The entries of a named mapping of mappings (upstreams, rewards)."""
        value = self.get(name, MISSING if required else {})
        if not isinstance(value, dict) or (required and not value):
            self.fail(name, f"must be a non-empty mapping of names to settings, got {value!r}")
        out = []
        for k, v in value.items():
            if not isinstance(k, str) or not k:
                self.fail(name, f"names must be non-empty strings, got {k!r}")
            out.append((k, Section(v, f"{self.sub(name)}.{k}", self.error)))
        return out

    def list_of_sections(self, name: str, required: bool = True) -> list[Section]:
        value = self.get(name, MISSING if required else [])
        if not isinstance(value, list):
            self.fail(name, f"must be a list, got {type(value).__name__} {value!r}")
        return [Section(v, f"{self.sub(name)}.{i}", self.error) for i, v in enumerate(value)]

    def done(self) -> None:
        """Fails on keys that were never read: typos must not be ignored."""
        unknown = [k for k in self.data if k not in self.used]
        if unknown:
            k = unknown[0]
            hint = difflib.get_close_matches(str(k), sorted(self.used), n=1)
            also = f"did you mean {hint[0]!r}? " if hint else ""
            self.fail(str(k), f"unknown key; {also}valid keys here: {sorted(self.used)}")
