"""Finding verifiers: the built-ins, `--load module:attr` specs, and installed plugins.

A server is described by a list of *specs*, and worker processes rebuild exactly the
same set from that list (verifier objects themselves never cross a process boundary):

- ``builtin``: the rule-based verifiers shipped in `referee.verifiers`;
- ``entrypoints``: every object published under the ``referee.verifiers`` entry-point
  group by an installed distribution;
- ``package.module:attr``: one object from an importable module.

An object may be a verifier instance (anything with name, version and ``verify``), a
class to instantiate with no arguments, a list/tuple of those, or a plain function
``verify(sample, **params) -> Result``, which is served under its own name with
version "0" (decorate it with `@referee.verifier` to set a name, version and docs).
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Iterable
from importlib.metadata import entry_points
from typing import Any

from referee.verifier import FunctionVerifier, Verifier, params_from_signature

ENTRY_POINT_GROUP = "referee.verifiers"
BUILTIN = "builtin"
ENTRYPOINTS = "entrypoints"


class LoadError(RuntimeError):
    """A spec could not be turned into verifiers; the message says which and why."""


def load_specs(specs: Iterable[str]) -> dict[str, Verifier]:
    """Resolves every spec, in order, into one name -> verifier table."""
    table: dict[str, Verifier] = {}
    origin: dict[str, str] = {}
    for spec in specs:
        for v in _resolve(spec):
            if v.name in table:
                raise LoadError(
                    f"reward name {v.name!r} from {spec!r} is already taken by {origin[v.name]!r}"
                )
            table[v.name] = v
            origin[v.name] = spec
    return table


def _resolve(spec: str) -> list[Verifier]:
    if spec == BUILTIN:
        from referee.verifiers import builtin_verifiers

        return list(builtin_verifiers())
    if spec == ENTRYPOINTS:
        found: list[Verifier] = []
        for ep in entry_points(group=ENTRY_POINT_GROUP):
            try:
                obj = ep.load()
            except Exception as e:  # a broken plugin must name itself, not crash anonymously
                raise LoadError(f"entry point {ep.name!r} ({ep.value}) failed to load: {e!r}") from e
            found.extend(as_verifiers(obj, f"entry point {ep.name!r} ({ep.value})"))
        return found
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise LoadError(f"cannot load {spec!r}: write it as package.module:name")
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise LoadError(f"cannot load {spec!r}: {e}") from e
    obj: Any = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise LoadError(f"cannot load {spec!r}: {module_name} has no attribute {attr!r}")
        obj = getattr(obj, part)
    return as_verifiers(obj, spec)


def as_verifiers(obj: Any, where: str) -> list[Verifier]:
    """Turns one loaded object into verifiers, or says why it is not one."""
    if isinstance(obj, (list, tuple)):
        return [v for item in obj for v in as_verifiers(item, where)]
    if inspect.isclass(obj):
        try:
            obj = obj()
        except TypeError as e:
            raise LoadError(f"{where}: class {obj.__name__} must be constructible with no arguments: {e}") from e
    if isinstance(obj, Verifier):
        _check(obj, where)
        return [obj]
    if inspect.isfunction(obj):
        return [
            FunctionVerifier(
                fn=obj,
                name=obj.__name__,
                version="0",
                kind="custom",
                description=inspect.cleandoc(obj.__doc__ or "").split("\n\n")[0],
                params=params_from_signature(obj, {}),
            )
        ]
    raise LoadError(
        f"{where}: {type(obj).__name__} is not a verifier; expected an object with name, version,"
        " kind, description, params, timeout_s and verify(sample, **params), or a function"
    )


def _check(v: Verifier, where: str) -> None:
    if not isinstance(v.name, str) or not v.name.strip():
        raise LoadError(f"{where}: verifier has an empty name")
    if not isinstance(v.version, str) or not v.version:
        raise LoadError(f"{where}: verifier {v.name!r} needs a non-empty string version")
