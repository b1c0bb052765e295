"""The gateway's YAML config: named upstream services, and the rewards built from them.

    health: {interval_s: 5, timeout_s: 2}
    upstreams:
      verifiers: {address: 127.0.0.1:50051, timeout_s: 30}
      rm: {address: [10.0.0.5:50061, 10.0.0.6:50061], token_env: RM_TOKEN}
    rewards:
      math: {upstream: verifiers}                         # a route: passed through
      fmt: {upstream: verifiers, reward: format, params: {strict: false}}
      math_with_format:                                   # a composite
        components:
          - {name: math, upstream: verifiers, weight: 0.9}
          - {name: format, upstream: verifiers, weight: 0.1}
        gates: [{component: format, min: 1.0, else_value: 0.0}]
        on_failure: fail                                  # or fallback (+ fallback_value)

Every upstream speaks `referee.v1.RewardService` (verifiers, a reward model, a judge,
another gateway), so adding a new kind of reward service is adding an upstream.
Mistakes raise `GatewayConfigError` naming the dotted key (``rewards.x.components.1.weight``)
and saying how to fix it; unknown keys list the valid ones.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from referee.rewardsvc.config_reader import MISSING, KeyedConfigError, Section, read_yaml_file
from referee.rewardsvc.replicas import split_targets


class GatewayConfigError(KeyedConfigError):
    """A gateway config mistake; `key` is the dotted key at fault."""


@dataclass(frozen=True)
class Upstream:
    """One RewardService the gateway calls (one or more replicas of it)."""

    name: str
    """The name rewards use to refer to it (its key under `upstreams`)."""

    targets: tuple[str, ...]
    """host:port of each replica; calls go to the least busy one and fail over."""

    token: str | None = None
    """Bearer token to send (from `token`, or the environment variable `token_env`)."""

    tls: bool = False
    """Speak TLS to the upstream (system roots unless `tls_ca` is set)."""

    tls_ca: Path | None = None
    """CA certificate (PEM) to trust; implies TLS. Relative paths are from the config file."""

    timeout_s: float = 30.0
    """Deadline of one call to this upstream, retries across replicas included."""

    max_concurrent_calls: int = 64
    """Calls (chunks of samples) in flight to this upstream at once, across all requests."""

    required: bool = True
    """Whether the gateway reports NOT_SERVING while this upstream's health check fails."""


@dataclass(frozen=True)
class Route:
    """A reward served by passing requests through to one upstream reward unchanged."""

    name: str
    """The name callers ask for."""

    upstream: str
    """The upstream that scores it."""

    reward: str
    """The reward's name on the upstream (default: the route's own name)."""

    params: dict[str, Any] = field(default_factory=dict)
    """Default params; the request's params are merged over them."""

    description: str = ""
    """Shown by ListRewards."""


@dataclass(frozen=True)
class Component:
    """One part of a composite reward: an upstream reward and its weight."""

    name: str
    """Key of its value in the composite's `components` (its own parts are `name.part`)."""

    upstream: str
    """The upstream that scores it."""

    reward: str
    """The reward's name on the upstream (default: the component's name)."""

    params: dict[str, Any] = field(default_factory=dict)
    """Params sent with every call; a request may override them per component."""

    weight: float = 1.0
    """Factor of this component's value in the weighted sum (0: a gate only)."""


@dataclass(frozen=True)
class Gate:
    """A condition on one component: below `min`, the composite's value is `else_value`."""

    component: str
    """The component whose value is tested."""

    min: float
    """Lowest value that passes (inclusive)."""

    else_value: float = 0.0
    """The composite's value when the gate fails."""


@dataclass(frozen=True)
class Composite:
    """A reward combined from components scored concurrently on their upstreams."""

    name: str
    """The name callers ask for."""

    components: tuple[Component, ...]
    """The parts, in the order they are reported and combined."""

    combine: Literal["weighted_sum"] = "weighted_sum"
    """How component values combine: `weighted_sum` (sum of weight * value)."""

    gates: tuple[Gate, ...] = ()
    """Checked in order after combining; the first that fails sets the value."""

    on_failure: Literal["fail", "fallback"] = "fail"
    """A failed component (any non-OK status) fails the sample with that status (`fail`),
    or gives it `fallback_value` with the failure in `reason` (`fallback`)."""

    fallback_value: float | None = None
    """The value used with `on_failure: fallback`."""

    description: str = ""
    """Shown by ListRewards (default: a summary of the components and gates)."""

    version: str = ""
    """Reported version: the configured `version` plus a digest of the definition, so that
    changing a weight or gate changes the version (and any cache key built on it)."""


@dataclass(frozen=True)
class HealthConfig:
    """How the gateway watches its upstreams."""

    interval_s: float = 5.0
    """Seconds between rounds of health checks."""

    timeout_s: float = 2.0
    """Deadline of one upstream health check."""


@dataclass(frozen=True)
class GatewayConfig:
    upstreams: dict[str, Upstream]
    """Upstream services by name."""

    rewards: dict[str, Route | Composite]
    """Rewards the gateway offers, by name."""

    health: HealthConfig = HealthConfig()
    """Upstream health checking."""


def load_gateway_config(path: str | Path) -> GatewayConfig:
    """Reads and validates a gateway YAML file."""
    p = Path(path)
    return parse_gateway_config(read_yaml_file(p, GatewayConfigError, "gateway config "), base_dir=p.parent)


def parse_gateway_config(data: Any, base_dir: Path | None = None) -> GatewayConfig:
    """Validates a config mapping (what the YAML holds)."""
    top = Section(data, "", GatewayConfigError)
    upstreams = {
        name: _upstream(name, sec, base_dir or Path.cwd())
        for name, sec in top.sections("upstreams", required=True)
    }
    rewards: dict[str, Route | Composite] = {}
    for name, sec in top.sections("rewards", required=True):
        rewards[name] = _reward(name, sec, upstreams)
    hsec = top.section("health")
    health = HealthConfig(
        interval_s=hsec.number("interval_s", 5.0, low=0.05),
        timeout_s=hsec.number("timeout_s", 2.0, low=0.05),
    )
    hsec.done()
    top.done()
    return GatewayConfig(upstreams, rewards, health)


# --- sections -----------------------------------------------------------------------


def _upstream(name: str, sec: Section, base_dir: Path) -> Upstream:
    raw = sec.get("address", MISSING)
    if raw is MISSING:
        sec.fail("address", "is required: host:port of the service, or a list of replicas")
    if isinstance(raw, str) or (isinstance(raw, list) and all(isinstance(a, str) for a in raw)):
        targets = tuple(split_targets(raw))
    else:
        targets = ()
    if not targets:
        sec.fail("address", f"must be host:port or a list of them, got {raw!r}")
    token = sec.text("token", None)
    env = sec.text("token_env", None)
    if token is not None and env is not None:
        sec.fail("token_env", "give token or token_env, not both")
    if env is not None:
        token = os.environ.get(env)
        if not token:
            sec.fail("token_env", f"environment variable {env} is not set (or empty)")
    ca = sec.text("tls_ca", None)
    tls_ca = None if ca is None else (base_dir / ca if not Path(ca).is_absolute() else Path(ca))
    up = Upstream(
        name=name,
        targets=targets,
        token=token,
        tls=sec.boolean("tls", False),
        tls_ca=tls_ca,
        timeout_s=sec.number("timeout_s", 30.0, low=0.01),
        max_concurrent_calls=int(sec.number("max_concurrent_calls", 64, low=1, integer=True)),
        required=sec.boolean("required", True),
    )
    sec.done()
    return up


def _reward(name: str, sec: Section, upstreams: dict[str, Upstream]) -> Route | Composite:
    if "components" in sec.data:
        if "upstream" in sec.data or "reward" in sec.data:
            sec.fail("components", "a reward is a route (upstream, reward) or a composite "
                     "(components), not both")
        return _composite(name, sec, upstreams)
    if "upstream" not in sec.data:
        sec.fail("", "needs `upstream` (a route to one upstream reward) or `components` "
                 "(a composite)")
    route = Route(
        name=name,
        upstream=_upstream_ref(sec, upstreams),
        reward=sec.text("reward", name),
        params=sec.mapping("params"),
        description=sec.text("description", ""),
    )
    sec.done()
    return route


def _composite(name: str, sec: Section, upstreams: dict[str, Upstream]) -> Composite:
    components: list[Component] = []
    for csec in sec.list_of_sections("components"):
        cname = csec.text("name", MISSING)
        if not cname or "." in cname:
            csec.fail("name", f"must be a non-empty name without dots, got {cname!r}")
        if any(c.name == cname for c in components):
            csec.fail("name", f"{cname!r} is used by an earlier component; names must be unique")
        components.append(Component(
            name=cname,
            upstream=_upstream_ref(csec, upstreams),
            reward=csec.text("reward", cname),
            params=csec.mapping("params"),
            weight=csec.number("weight", 1.0),
        ))
        csec.done()
    if not components:
        sec.fail("components", "needs at least one component")
    combine = sec.choice("combine", ("weighted_sum",), "weighted_sum")
    names = [c.name for c in components]
    gates: list[Gate] = []
    for gsec in sec.list_of_sections("gates", required=False):
        comp = gsec.text("component", MISSING)
        if comp not in names:
            gsec.fail("component", f"{comp!r} is not a component of {name}; components: {names}")
        gates.append(Gate(comp, gsec.number("min", MISSING), gsec.number("else_value", 0.0)))
        gsec.done()
    on_failure = sec.choice("on_failure", ("fail", "fallback"), "fail")
    fallback = sec.number("fallback_value", None)
    if on_failure == "fallback" and fallback is None:
        sec.fail("fallback_value", "is required with on_failure: fallback (the value a sample "
                 "gets when a component fails)")
    if on_failure == "fail" and fallback is not None:
        sec.fail("fallback_value", "is used only with on_failure: fallback; remove it or set "
                 "on_failure: fallback")
    description = sec.text("description", "") or _summary(components, gates)
    definition = json.dumps([[c.__dict__ for c in components], combine,
                             [g.__dict__ for g in gates], on_failure, fallback],
                            sort_keys=True, default=str)
    digest = hashlib.sha256(definition.encode()).hexdigest()[:8]
    version = f"{sec.text('version', '1')}+{digest}"
    sec.done()
    return Composite(name, tuple(components), combine, tuple(gates), on_failure, fallback,
                     description, version)


def _upstream_ref(sec: Section, upstreams: dict[str, Upstream]) -> str:
    up = sec.text("upstream", MISSING)
    if up not in upstreams:
        hint = difflib.get_close_matches(up, list(upstreams), n=1)
        also = f" (did you mean {hint[0]!r}?)" if hint else ""
        sec.fail("upstream", f"{up!r} is not under upstreams{also}; configured: {sorted(upstreams)}")
    return up


def _summary(components: list[Component], gates: list[Gate]) -> str:
    parts = " + ".join(f"{c.weight:g}*{c.name}" for c in components)
    out = f"weighted sum {parts}"
    for g in gates:
        out += f"; {g.else_value:g} unless {g.component} >= {g.min:g}"
    return out
