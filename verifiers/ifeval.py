"""IFEval reward: Google's verifiable instruction checks (Zhou et al., 2023), all 25.

Instruction-following RLVR (Tulu 3 trained on this set) needs a reward that checks
"answer in under 100 words, no commas, end with 'Any other questions?'" exactly as the
benchmark does. The sample's ``metadata`` carries IFEval's own fields unchanged, so an
IFEval row is a sample's metadata with no glue::

    {"instruction_id_list": ["punctuation:no_comma", "length_constraints:number_words"],
     "kwargs": [{}, {"relation": "less than", "num_words": 100}]}

`kwargs` pairs with `instruction_id_list` by position. Keys whose value is null are
ignored (the Hugging Face copy of IFEval gives every row every key, null where unused);
a missing `kwargs` means every instruction gets none. Integers may arrive as integral
floats (protobuf Struct carries every number as a double).

Modes, as in IFEval's evaluation: "strict" checks the response as it is; "loose" also
tries the response without its first line, without its last line, without both, and
each of those (and the response) with every "*" removed, and counts an instruction as
followed when any of them follows it (so "Sure! Here it is:" before the answer, or
markdown bold around it, is forgiven). An empty response follows nothing.

Refused as INVALID_INPUT, never scored: an unknown instruction id (named, with the
nearest known one), a missing or malformed `instruction_id_list`, `kwargs` of another
length, a kwarg missing, of the wrong type or out of range, or a non-null kwarg that the
instruction does not take (a misspelt name must not pass silently).

The checks, and where they depart from the reference code, are in `ifeval_checks`; the
word, sentence and language helpers (offline: rule-based sentences, `langdetect` with
its bundled profiles) in `ifeval_text`.
"""

from __future__ import annotations

import difflib
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from referee.types import InvalidInput, InvalidParams, Result, Sample
from referee.verifier import verifier
from referee.verifiers.ifeval_checks import INSTRUCTIONS, RELATIONS
from referee.verifiers.ifeval_text import detectable_languages, loose_variants

MODES = ("strict", "loose")
LEVELS = ("instruction", "prompt")
_REASON_IDS = 6


@dataclass(frozen=True)
class Task:
    """One instruction of a sample, ready to check: `key` names its component."""

    key: str
    instruction_id: str
    check: Callable[..., bool]
    kwargs: dict[str, Any]

    def followed_by(self, variants: list[str]) -> bool:
        return any(v.strip() and self.check(v, **self.kwargs) for v in variants)


def _integer(value: Any, where: str, least: int) -> int:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    if not ok or not float(value).is_integer():
        raise InvalidInput(f"{where} must be an integer, got {value!r:.60}")
    if value < least:
        raise InvalidInput(f"{where} must be at least {least}, got {int(value)}")
    return int(value)


def _text(value: Any, where: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise InvalidInput(f"{where} must be a non-empty string, got {value!r:.60}")
    return value.strip()


def _phrases(value: Any, where: str) -> list[str]:
    if not isinstance(value, list) or not value:
        raise InvalidInput(f"{where} must be a non-empty list of strings, got {value!r:.60}")
    for i, v in enumerate(value):
        if not isinstance(v, str) or not v.strip():
            raise InvalidInput(f"{where}[{i}] must be a non-empty string, got {v!r:.60}")
    return list(value)


def _kwarg(kind: str, value: Any, where: str) -> Any:
    """`value` checked and normalised for a kwarg of `kind` (see ifeval_checks.Instruction)."""
    if kind in ("count", "positive"):
        return _integer(value, where, 0 if kind == "count" else 1)
    if kind == "relation":
        if value not in RELATIONS:
            raise InvalidInput(f"{where} must be 'less than' or 'at least', got {value!r:.60}")
        return value
    if kind == "text":
        return _text(value, where)
    if kind == "phrases":
        return _phrases(value, where)
    if kind == "char":
        if not isinstance(value, str) or len(value) != 1 or value.isspace():
            raise InvalidInput(f"{where} must be a single character, got {value!r:.60}")
        return value
    if kind == "language":
        if not isinstance(value, str) or value not in detectable_languages() | {"zh"}:
            raise InvalidInput(
                f"{where} must be a language code langdetect knows (ISO 639-1, e.g. 'fr'), "
                f"got {value!r:.60}"
            )
        return value
    raise AssertionError(f"unknown kwarg kind {kind!r}")


def _instruction_ids(metadata: Mapping[str, Any]) -> list[str]:
    ids = metadata.get("instruction_id_list")
    if ids is None:
        raise InvalidInput("metadata.instruction_id_list is missing; ifeval needs IFEval's fields")
    if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
        raise InvalidInput(
            f"metadata.instruction_id_list must be a list of strings, got {ids!r:.80}"
        )
    if not ids:
        raise InvalidInput("metadata.instruction_id_list is empty")
    for i, iid in enumerate(ids):
        if iid not in INSTRUCTIONS:
            near = difflib.get_close_matches(iid, INSTRUCTIONS, n=1)
            hint = f"; did you mean {near[0]!r}?" if near else ""
            raise InvalidInput(
                f"metadata.instruction_id_list[{i}] is unknown instruction id {iid!r:.80}{hint}"
            )
    return ids


def _kwargs_list(metadata: Mapping[str, Any], n: int) -> list[dict[str, Any]]:
    given = metadata.get("kwargs")
    if given is None:
        return [{} for _ in range(n)]
    if not isinstance(given, list):
        raise InvalidInput(f"metadata.kwargs must be a list of objects, got {type(given).__name__}")
    if len(given) != n:
        raise InvalidInput(
            f"metadata.kwargs has {len(given)} entries but metadata.instruction_id_list has "
            f"{n}; they pair up by position"
        )
    out = []
    for i, kw in enumerate(given):
        if kw is not None and not isinstance(kw, dict):
            raise InvalidInput(f"metadata.kwargs[{i}] must be an object, got {type(kw).__name__}")
        out.append({k: v for k, v in (kw or {}).items() if v is not None})
    return out


def parse_tasks(metadata: Mapping[str, Any]) -> list[Task]:
    """The instructions of a sample's metadata, validated; InvalidInput naming the field."""
    ids = _instruction_ids(metadata)
    kwargs_list = _kwargs_list(metadata, len(ids))
    counts: Counter[str] = Counter(ids)
    seen: Counter[str] = Counter()
    tasks = []
    for i, (iid, given) in enumerate(zip(ids, kwargs_list, strict=True)):
        spec = INSTRUCTIONS[iid]
        extra = sorted(set(given) - set(spec.kwargs))
        if extra:
            takes = ", ".join(spec.kwargs) or "none"
            raise InvalidInput(
                f"metadata.kwargs[{i}] has {extra[0]!r}, which {iid} does not take (it takes: {takes})"
            )
        missing = [k for k in spec.kwargs if k not in given]
        if missing:
            raise InvalidInput(
                f"metadata.kwargs[{i}].{missing[0]} is missing; {iid} needs {', '.join(spec.kwargs)}"
            )
        kwargs = {
            k: _kwarg(kind, given[k], f"metadata.kwargs[{i}].{k}")
            for k, kind in spec.kwargs.items()
        }
        problem = spec.constraint(kwargs) if spec.constraint else None
        if problem:
            raise InvalidInput(f"metadata.kwargs[{i}]: {problem}")
        seen[iid] += 1
        key = iid if counts[iid] == 1 else f"{iid}#{seen[iid]}"
        tasks.append(Task(key, iid, spec.check, kwargs))
    return tasks


def _check_params(*, mode: str = "strict", level: str = "instruction") -> None:
    """Rejects unknown modes and levels once per request (the server calls this);
    `ifeval` repeats it for direct callers."""
    if mode not in MODES:
        raise InvalidParams(f"param mode must be 'strict' or 'loose', got {mode!r}")
    if level not in LEVELS:
        raise InvalidParams(f"param level must be 'instruction' or 'prompt', got {level!r}")


@verifier(
    name="ifeval",
    version="1",
    kind="rule",
    param_docs={
        "mode": "'strict' (the response as it is) or 'loose' (also without its first/last "
        "line and without markdown '*', as IFEval's loose accuracy)",
        "level": "'instruction': the value is the fraction of instructions followed; "
        "'prompt': 1.0 only when all are followed (IFEval's prompt-level accuracy)",
    },
    check_params=_check_params,
)
def ifeval(sample: Sample, *, mode: str = "strict", level: str = "instruction") -> Result:
    """The fraction of the sample's IFEval instructions the completion follows.

    Components: one per instruction (1.0 followed, 0.0 not), keyed by its id (with
    "#1", "#2", ... when an id repeats), plus `instruction_level` (the fraction) and
    `prompt_level` (1.0 when all are followed).

    >>> meta = {"instruction_id_list": ["punctuation:no_comma", "startend:quotation"],
    ...         "kwargs": [{}, {}]}
    >>> r = ifeval(Sample(completion="Yes, gladly.", metadata=meta))
    >>> r.value, r.components["prompt_level"]
    (0.0, 0.0)
    >>> ifeval(Sample(completion='"Gladly."', metadata=meta)).value
    1.0
    >>> ifeval(Sample(completion='Sure:\\n"Gladly."', metadata=meta), mode="loose").value
    1.0
    """
    _check_params(mode=mode, level=level)
    if sample.completion is None:
        raise InvalidInput("completion is missing")
    tasks = parse_tasks(sample.metadata)
    variants = loose_variants(sample.completion) if mode == "loose" else [sample.completion]
    followed = {t.key: t.followed_by(variants) for t in tasks}
    fraction = sum(followed.values()) / len(followed)
    every = all(followed.values())
    components = {k: float(v) for k, v in followed.items()}
    components |= {"instruction_level": fraction, "prompt_level": float(every)}
    missed = [k for k, v in followed.items() if not v]
    reason = f"{len(tasks) - len(missed)} of {len(tasks)} instructions followed ({mode})"
    if missed:
        more = f" and {len(missed) - _REASON_IDS} more" if len(missed) > _REASON_IDS else ""
        reason += "; not followed: " + ", ".join(missed[:_REASON_IDS]) + more
    return Result.ok(fraction if level == "instruction" else float(every), reason, components)
