"""The judge's prompts: templates from files, checked overrides, and nonce fences.

A template is plain text with ``{{name}}`` placeholders; the shipped ones live in
`judge_templates/<mode>.txt` and a request may send its own text instead (the `template`
param), which must contain the mode's required placeholders and no unknown ones.
Substitution is one pass over the template, so a completion that contains
``{{reference}}`` is inserted as that literal text, never expanded.

Every text that comes from the sample (prompt, completion, reference) is inserted
fenced::

    <<<COMPLETION 9f2c41d0a7b3e815>>>
    ...the completion, verbatim...
    <<<END COMPLETION 9f2c41d0a7b3e815>>>

The marker's nonce is a keyed hash (a secret drawn once per process) of everything
fenced, so a completion cannot know it in advance and so cannot close its own fence and
write text that looks like the grader's; and it is the same for the same inputs within
a process, which keeps rendered prompts (and so the judge-reply cache) deterministic.
The templates tell the judge that text inside the markers is data and that instructions
there are to be ignored.

No line of a shipped template is itself a valid verdict (the formats are shown inline
or with a placeholder, ``VERDICT: <n>``), so a judge that echoes the prompt cannot have
the echo read as its verdict; keep it so in overriding templates.

What this does not protect against: a judge model that obeys injected text anyway. The
fence makes the boundary unambiguous; it cannot make the judge respect it. The score is
read only from the judge's final verdict line (`judge_parse`), which a judge that follows
the injection could still write.
"""

from __future__ import annotations

import hashlib
import os
import re
from importlib import resources

MODES = ("pointwise", "pairwise", "reference_match")

_SECRET = os.urandom(32)
_PLACEHOLDER = re.compile(r"\{\{\s*([A-Za-z_][A-Za-z0-9_]*)\s*\}\}")

REQUIRED: dict[str, frozenset[str]] = {
    "pointwise": frozenset({"prompt", "completion", "rubric", "scale_min", "scale_max"}),
    "pairwise": frozenset({"prompt", "answer_a", "answer_b"}),
    "reference_match": frozenset({"prompt", "completion", "reference"}),
}
"""Placeholders each mode's template must contain."""

OPTIONAL: dict[str, frozenset[str]] = {
    "pointwise": frozenset({"reference", "nonce"}),
    "pairwise": frozenset({"nonce"}),
    "reference_match": frozenset({"nonce"}),
}
"""Placeholders a template may also use."""

FENCED = frozenset({"prompt", "completion", "reference", "answer_a", "answer_b"})
"""Placeholders whose values come from the sample, and so are fenced."""

_LABELS = {
    "prompt": "TASK",
    "completion": "RESPONSE",
    "reference": "REFERENCE",
    "answer_a": "RESPONSE A",
    "answer_b": "RESPONSE B",
}

MAX_TEMPLATE_CHARS = 64_000


def default_template(mode: str) -> str:
    """The shipped template for `mode` (read from the package's judge_templates/)."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
    return _read_template(mode)


_TEMPLATES: dict[str, str] = {}


def _read_template(mode: str) -> str:
    if mode not in _TEMPLATES:
        path = resources.files("referee.rewardsvc").joinpath("judge_templates", f"{mode}.txt")
        _TEMPLATES[mode] = path.read_text(encoding="utf-8")
    return _TEMPLATES[mode]


def check_template(mode: str, text: str) -> None:
    """Raises ValueError naming what is missing or unknown in a template for `mode`."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
    if len(text) > MAX_TEMPLATE_CHARS:
        raise ValueError(f"template is {len(text)} characters; at most {MAX_TEMPLATE_CHARS}")
    found = set(_PLACEHOLDER.findall(text))
    missing = sorted(REQUIRED[mode] - found)
    unknown = sorted(found - REQUIRED[mode] - OPTIONAL[mode])
    problems = []
    if missing:
        problems.append(f"lacks {_names(missing)}")
    if unknown:
        allowed = sorted(REQUIRED[mode] | OPTIONAL[mode])
        problems.append(f"has unknown placeholders {_names(unknown)} (allowed: {_names(allowed)})")
    if problems:
        raise ValueError(f"template for mode {mode!r} " + " and ".join(problems))


def _names(names: list[str]) -> str:
    return ", ".join("{{" + n + "}}" for n in names)


def make_nonce(values: dict[str, str]) -> str:
    """A 16-hex-digit marker no fenced value contains, keyed by this process's secret."""
    h = hashlib.blake2b(key=_SECRET, digest_size=16)
    for name in sorted(values):
        for part in (name.encode(), values[name].encode("utf-8", "surrogatepass")):
            h.update(len(part).to_bytes(8, "little"))
            h.update(part)
    for counter in range(100):
        nonce = hashlib.blake2b(h.digest() + counter.to_bytes(2, "little"), digest_size=8).hexdigest()
        if not any(nonce in v for v in values.values()):
            return nonce
    raise RuntimeError("no fence nonce absent from the fenced texts")  # 2^-64 per try


def fence(label: str, text: str, nonce: str) -> str:
    """`text` between a begin and an end marker carrying `nonce`."""
    return f"<<<{label} {nonce}>>>\n{text}\n<<<END {label} {nonce}>>>"


def render(template: str, values: dict[str, str]) -> str:
    """Fills `template` in one pass: sample texts fenced, the rest inserted as they are.

    `values` holds every placeholder the template may use (the fenced ones as raw text);
    `nonce` is added here.
    """
    fenced = {k: v for k, v in values.items() if k in FENCED}
    nonce = make_nonce(fenced)
    filled = dict(values, nonce=nonce)
    for k, v in fenced.items():
        filled[k] = fence(_LABELS[k], v, nonce)

    def sub(m: re.Match[str]) -> str:
        name = m.group(1)
        if name not in filled:
            raise ValueError(f"template placeholder {{{{{name}}}}} has no value")
        return filled[name]

    return _PLACEHOLDER.sub(sub, template)


def prompt_text(prompt: str | list[dict[str, str]]) -> str:
    """The sample's prompt as text: chat messages become ``role: content`` paragraphs."""
    if isinstance(prompt, str):
        return prompt
    return "\n\n".join(f"{m.get('role', 'user')}: {m.get('content', '')}" for m in prompt)
