"""Picks a sandbox backend by name: `make_backend("bwrap")`.

"local" runs code with no isolation at all, so it is refused unless the caller says
`allow_unsafe=True` (the CLI's `--i-know-local-is-unsafe`).
"""

from __future__ import annotations

import inspect
from typing import Any

from referee.sandboxes.types import SandboxBackend

BACKENDS = ("bwrap", "docker", "local")


def make_backend(name: str, *, allow_unsafe: bool = False, **options: Any) -> SandboxBackend:
    """A ready backend. ValueError for an unknown name, an option the backend does not
    take, or "local" without `allow_unsafe`; RuntimeError if the backend cannot work on
    this host (it says why: no user namespaces, no bwrap, no Docker engine, ...)."""
    key = name.strip().lower()
    if key == "bwrap":
        from referee.sandboxes.bwrap import BwrapBackend as cls
    elif key == "docker":
        from referee.sandboxes.docker_backend import DockerBackend as cls
    elif key == "local":
        if not allow_unsafe:
            raise ValueError("the local backend runs untrusted code with no isolation at all (the server's user, "
                             "files and network); it is for debugging only: pass --i-know-local-is-unsafe "
                             "(allow_unsafe=True) to use it anyway")
        from referee.sandboxes.local import LocalBackend as cls
    else:
        raise ValueError(f"unknown sandbox backend {name!r}; choose one of: {', '.join(BACKENDS)}")
    params = inspect.signature(cls).parameters
    if not any(p.kind is p.VAR_KEYWORD for p in params.values()):
        unknown = sorted(set(options) - set(params))
        if unknown:
            raise ValueError(f"the {key} backend takes no option {', '.join(unknown)}; it takes: "
                             f"{', '.join(p for p in params if p != 'self') or 'none'}")
    return cls(**options)
