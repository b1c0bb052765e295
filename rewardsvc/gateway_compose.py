"""Combining a composite reward's component scores into one score per sample.

Pure functions, no network: the gateway fans a batch out to the components' upstreams
and hands each sample's component scores (in component order) to `combine`.

The rules, in order:

1. A component that failed (any non-OK status) fails the sample with that status and a
   reason naming the component, or, with ``on_failure: fallback``, gives it the fallback
   value and says so in `reason`. Never a silent 0.
2. Otherwise the value is the weighted sum of the component values.
3. Gates are then checked in order; the first whose component is below its `min` sets
   the value to its `else_value`.

`components` holds every component that scored, by name, and each of its own parts as
``name.part``; it is filled on failures too, for logging.

>>> from referee.rewardsvc.gateway_config import Component, Composite, Gate
>>> c = Composite("r", (Component("math", "up", "math", weight=0.9),
...                     Component("format", "up", "format", weight=0.1)),
...               gates=(Gate("format", 1.0, 0.0),))
>>> round(combine(c, "s", [Score("s", Status.OK, 1.0), Score("s", Status.OK, 1.0)]).value, 6)
1.0
>>> combine(c, "s", [Score("s", Status.OK, 1.0), Score("s", Status.OK, 0.0)]).value
0.0
>>> s = combine(c, "s", [Score("s", Status.UNAVAILABLE, None, reason="down"),
...                      Score("s", Status.OK, 1.0)])
>>> s.status, s.value, s.reason
(<Status.UNAVAILABLE: 'UNAVAILABLE'>, None, 'component math (up/math) UNAVAILABLE: down')
"""

from __future__ import annotations

from collections.abc import Sequence

from referee.rewardsvc.gateway_config import Component, Composite
from referee.types import Score, Status


def combine(c: Composite, sample_id: str, parts: Sequence[Score]) -> Score:
    """One composite score from the sample's component scores (in `c.components` order)."""
    if len(parts) != len(c.components):
        raise ValueError(f"{c.name}: {len(c.components)} components, {len(parts)} scores")
    values: dict[str, float] = {}
    components: dict[str, float] = {}
    failed: list[tuple[Component, Score]] = []
    for comp, s in zip(c.components, parts, strict=True):
        if s.status is not Status.OK or s.value is None:
            failed.append((comp, s))
            continue
        values[comp.name] = s.value
        components[comp.name] = s.value
        for part, v in s.components.items():
            components[f"{comp.name}.{part}"] = v
    cost = sum(s.cost_s for s in parts)
    cached = all(s.cached for s in parts)

    if failed:
        why = "; ".join(_failure(comp, s) for comp, s in failed)
        if c.on_failure == "fallback" and c.fallback_value is not None:
            return Score(sample_id, Status.OK, c.fallback_value, components,
                         f"fallback value {c.fallback_value:g}: {why}", cost, cached)
        status = failed[0][1].status
        if status is Status.OK:  # OK without a value: the upstream broke the contract
            status = Status.ERROR
        return Score(sample_id, status, None, components, why, cost, cached)

    total = sum(comp.weight * values[comp.name] for comp in c.components)
    reason = ", ".join(f"{comp.name}={values[comp.name]:g}" for comp in c.components)
    for g in c.gates:
        if values[g.component] < g.min:
            total = g.else_value
            reason = (f"gate failed: {g.component}={values[g.component]:g} < {g.min:g}, "
                      f"value {g.else_value:g} ({reason})")
            break
    return Score(sample_id, Status.OK, float(total), components, reason, cost, cached)


def _failure(comp: Component, s: Score) -> str:
    status = s.status.value if s.status is not Status.OK else "OK without a value"
    return f"component {comp.name} ({comp.upstream}/{comp.reward}) {status}: {s.reason}"
