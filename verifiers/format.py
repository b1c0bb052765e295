"""Format reward: does the completion have the structure the prompt asked for?

R1-style training asks for ``<think>...</think><answer>...</answer>`` and pays a small
reward for keeping that shape, so that answer extraction stays reliable. This verifier
checks tag structure only, never what the tags contain (beyond being non-empty).

The tag scan is one linear pass with a literal-alternation regex, so hostile inputs
(megabytes of text, thousands of stray tags, unclosed or nested tags) cost time
proportional to their length. The checks, each reported as a component:

- ``tag:<name>``: exactly one ``<name>`` and one ``</name>``, opening first. A second
  ``<answer>`` block fails this: several answers are a way to hedge.
- ``order``: the blocks come in the order of `tags` and do not overlap or nest
  (only when there are two or more tags).
- ``nonempty``: every block holds something besides whitespace.
- ``no_extra_text`` (only when `strict`): nothing but whitespace outside the blocks.

Checks after ``tag:*`` need every tag well formed and fail otherwise. With
`partial_credit` the value is the fraction of checks passed, else 1.0 or 0.0.

Not covered: tag attributes (``<think id=1>`` is not an opening tag), case variants
(``<THINK>``), and whether the text inside makes sense. A custom `pattern` is an
operator-supplied regex run with ``re.fullmatch`` and ``re.DOTALL``; its running time
is the operator's responsibility (the server's worker timeout is the backstop).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from itertools import pairwise

from referee.types import InvalidInput, InvalidParams, Result, Sample
from referee.verifier import verifier

DEFAULT_TAGS = ("think", "answer")
_TAG_NAME = re.compile(r"[A-Za-z_][\w.:-]*")


@dataclass(frozen=True)
class _Block:
    open_start: int
    open_end: int
    close_start: int
    close_end: int


def _check_tags(tags: list | None) -> tuple[str, ...]:
    if tags is None:
        return DEFAULT_TAGS
    if not tags:
        raise InvalidParams("param tags is empty; give at least one tag name")
    for t in tags:
        if not isinstance(t, str) or not _TAG_NAME.fullmatch(t):
            raise InvalidParams(f"param tags: {t!r} is not a tag name like 'think'")
    if len(set(tags)) != len(tags):
        raise InvalidParams(f"param tags names a tag twice: {tags}")
    return tuple(tags)


def _blocks(text: str, tags: tuple[str, ...]) -> dict[str, _Block | None]:
    """Each tag's single well-formed block, or None when it is missing or repeated."""
    scan = re.compile("<(/?)(" + "|".join(re.escape(t) for t in tags) + ")>")
    opens: dict[str, list[re.Match[str]]] = {t: [] for t in tags}
    closes: dict[str, list[re.Match[str]]] = {t: [] for t in tags}
    for m in scan.finditer(text):
        (closes if m.group(1) else opens)[m.group(2)].append(m)
    out: dict[str, _Block | None] = {}
    for t in tags:
        ok = len(opens[t]) == 1 and len(closes[t]) == 1
        if ok and opens[t][0].end() <= closes[t][0].start():
            o, c = opens[t][0], closes[t][0]
            out[t] = _Block(o.start(), o.end(), c.start(), c.end())
        else:
            out[t] = None
    return out


def tag_checks(text: str, tags: tuple[str, ...], strict: bool) -> dict[str, bool]:
    """Every check `format_reward` makes, by component name, in a fixed order.

    >>> tag_checks("<think>hm</think> <answer>4</answer>", ("think", "answer"), True)
    {'tag:think': True, 'tag:answer': True, 'order': True, 'nonempty': True, 'no_extra_text': True}
    """
    blocks = _blocks(text, tags)
    checks = {f"tag:{t}": blocks[t] is not None for t in tags}
    found = [b for b in blocks.values() if b is not None]
    complete = len(found) == len(tags)
    in_order = complete and all(a.close_end <= b.open_start for a, b in pairwise(found))
    if len(tags) > 1:
        checks["order"] = in_order
    checks["nonempty"] = complete and all(text[b.open_end : b.close_start].strip() for b in found)
    if strict:
        edges = [0] + [i for b in found for i in (b.open_start, b.close_end)] + [len(text)]
        gaps = (text[edges[i] : edges[i + 1]] for i in range(0, len(edges), 2))
        checks["no_extra_text"] = in_order and not any(g.strip() for g in gaps)
    return checks


@verifier(
    name="format",
    version="1",
    kind="rule",
    param_docs={
        "tags": "tag names that must each appear once, in this order (default ['think', 'answer'])",
        "strict": "also require nothing but whitespace outside the tags",
        "partial_credit": "value is the fraction of checks passed instead of all-or-nothing",
        "pattern": "a regex the whole completion must match (re.DOTALL), instead of tags",
    },
)
def format_reward(
    sample: Sample,
    *,
    tags: list | None = None,
    strict: bool = True,
    partial_credit: bool = False,
    pattern: str | None = None,
) -> Result:
    """1.0 when the completion has the required tag structure.

    >>> format_reward(Sample(completion="<think>2+2</think>\\n<answer>4</answer>")).value
    1.0
    >>> r = format_reward(Sample(completion="<think>2+2</think> so 4"), partial_credit=True)
    >>> r.value, r.components["tag:answer"]
    (0.2, 0.0)
    """
    if pattern is not None:
        if tags is not None:
            raise InvalidParams("give param pattern or param tags, not both")
        try:
            compiled = re.compile(pattern, re.DOTALL)
        except re.error as e:
            raise InvalidParams(f"param pattern is not a valid regex: {e}") from None
    names = _check_tags(tags)
    if sample.completion is None:
        raise InvalidInput("completion is missing")
    if pattern is not None:
        hit = compiled.fullmatch(sample.completion) is not None
        reason = "matches pattern" if hit else "does not match pattern"
        return Result.ok(float(hit), reason=reason, components={"pattern": float(hit)})
    checks = tag_checks(sample.completion, names, strict)
    failed = [name for name, ok in checks.items() if not ok]
    if partial_credit:
        value = (len(checks) - len(failed)) / len(checks)
    else:
        value = 0.0 if failed else 1.0
    reason = f"failed: {', '.join(failed)}" if failed else f"all {len(checks)} checks pass"
    return Result.ok(value, reason=reason, components={k: float(v) for k, v in checks.items()})
