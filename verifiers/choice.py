"""Multiple-choice reward: pull the chosen letter out of a free-form completion.

Why a dedicated verifier: models answer multiple-choice questions in a dozen shapes
("\\boxed{B}", "The answer is (B).", "**B**", a letter alone on the last line), and a
reward that misses the shape the policy happens to use teaches it nothing.

Extraction tries these tiers in order; the first tier that finds anything decides:

1. ``\\boxed{B}`` (or ``\\fbox``), also ``\\boxed{\\text{B}}`` and ``\\boxed{(B) Paris}``;
2. an answer statement: "answer is (B)", "Answer: B", "final answer: B",
   "correct option is B"; with `allow_option_text`, "answer: Paris" too;
3. with `allow_option_text`, a completion that is nothing but one option's text;
4. a line holding only a letter ("B", "(B)", "B.", "Option B");
5. a parenthesised letter "(B)" or "[B]" anywhere;
6. the last standalone capital letter among the valid ones.

Within a tier the **last** occurrence counts, so "the answer is A... no, the answer is
B" is read as B. Markdown emphasis (``*``) is removed first.

Ambiguity gets no credit. When the chosen letter is joined to another valid letter by
"or", "and", "and/or", "vs", "/", "," or "&" (on either side: "A or B", "(A)/(B)",
"\\boxed{A} or \\boxed{B}"), or a box or statement holds several letters ("\\boxed{A, C}"),
the result is OK 0.0 with ``ambiguous=1``. Listing every option therefore never pays,
and neither does a bare guess beyond chance, since only one letter is ever read.

Not covered: multi-select questions (several correct letters), numeric references
("2" for the third option), options numbered 1-4 or lettered in lower case outside
parentheses or boxes, and negation ("not A" in tiers 5-6 still reads as A). The
bare-letter tier 6 skips "A" and "I" when a lower-case word follows, since those are
the English article and pronoun; in tier 2 only "I" is skipped that way ("Answer: I
think...").
"""

from __future__ import annotations

import functools
import re
import unicodedata
from dataclasses import dataclass

from referee.types import InvalidInput, InvalidParams, Result, Sample
from referee.verifier import verifier

_LETTER_FORM = re.compile(r"[\(\[]?\s{0,2}([A-Za-z])\s{0,2}[\)\]]?[.:]?")
_BOXED = re.compile(r"\\(?:boxed|fbox)\{((?:[^{}]|\{[^{}]{0,100}\}){0,200})\}")
_TEXT_WRAPPER = re.compile(r"\\(?:text|textbf|mathrm|mathbf|mathtt)\{([^{}]*)\}")
_STATEMENT = re.compile(
    r"(?i:\b(?:final\s{1,3}answer|correct\s{1,3}(?:answer|option|choice)|answer)\b"
    r"(?:\s{1,3}(?:is|would\s{1,3}be|should\s{1,3}be|must\s{1,3}be))?\s{0,3}[:=]?)"
)
_CONNECTOR = r"(?:(?i:and/or|or|and|vs\.?|versus)|[/,&])"
_WORD_AFTER = re.compile(r"\s{1,3}[a-z]")


@dataclass(frozen=True)
class _Pick:
    """One answer found in the text; `letter` None means it named several options."""

    letter: str | None
    start: int
    end: int
    how: str


@dataclass(frozen=True)
class _Ctx:
    valid: str
    options: tuple[str, ...] | None  # normalised option texts, when allowed and given


@functools.lru_cache(maxsize=64)
def _patterns(valid: str) -> dict[str, re.Pattern[str]]:
    up, low = f"[{valid}]", f"[{valid.lower()}]"
    token = rf"(?:\(({up}|{low})\)|\[({up}|{low})\]|({up})(?![\w'])(?!\.\w))"
    return {
        "statement_letter": re.compile(rf"\s{{0,3}}(?:(?i:option|choice)\s{{1,3}})?{token}"),
        "lone_line": re.compile(
            rf"(?m)^[ \t>#-]{{0,10}}(?:(?i:option|choice)[ \t]{{1,3}})?"
            rf"(?:\(({up})\)|\[({up})\]|({up}))[.:]?[ \t]*$"
        ),
        "paren": re.compile(rf"\(({up})\)|\[({up})\]"),
        "bare": re.compile(rf"(?<![\w\\'])({up})(?![\w'])(?!\.\w)"),
        "lead": re.compile(rf"[\(\[]?({up})(?:[\)\]][.:]?|[.:])(?:\s|$)"),
        "hedge_after": re.compile(
            rf"[\)\]}}]{{0,3}}\s{{0,3}}{_CONNECTOR}\s{{0,3}}(?:(?i:option|choice)\s{{1,3}})?"
            rf"(?:\\boxed\{{)?[\(\[]?({up})(?![\w'])"
        ),
        "hedge_before": re.compile(
            rf"(?<![\w'])[\(\[]?({up})[\)\]}}]{{0,3}}\s{{0,3}}{_CONNECTOR}\s{{0,3}}"
            rf"(?:(?i:option|choice)\s{{1,3}})?[\(\[]?$"
        ),
    }


def _norm_option(text: str) -> str:
    text = " ".join(unicodedata.normalize("NFKC", text).casefold().split())
    return text.rstrip(".").strip()


def _option_letter(text: str, ctx: _Ctx) -> str | None | bool:
    """The letter of the one option `text` states; None if several; False if none."""
    if ctx.options is None:
        return False
    want = _norm_option(text)
    hits = [i for i, opt in enumerate(ctx.options) if want and opt == want]
    if not hits:
        return False
    return ctx.valid[hits[0]] if len(hits) == 1 else None


def _letters_in(text: str, ctx: _Ctx) -> set[str]:
    """Standalone valid capitals, not counting "A"/"I" used as English words."""
    found = set()
    for m in _patterns(ctx.valid)["bare"].finditer(text):
        if m.group(1) in "AI" and _WORD_AFTER.match(text, m.end()):
            continue
        found.add(m.group(1))
    return found


def _read_box(content: str, ctx: _Ctx) -> str | None | bool:
    """The letter a box names; None if it names several; False if none."""
    content = _TEXT_WRAPPER.sub(r"\1", content).strip()
    form = _LETTER_FORM.fullmatch(content)
    if form and form.group(1).upper() in ctx.valid:
        return form.group(1).upper()
    letters = _letters_in(content, ctx)
    if len(letters) > 1:
        return None
    lead = _patterns(ctx.valid)["lead"].match(content)
    if lead:
        return lead.group(1)
    return _option_letter(content, ctx)


def _boxed(text: str, ctx: _Ctx) -> list[_Pick]:
    picks = []
    for m in _BOXED.finditer(text):
        letter = _read_box(m.group(1), ctx)
        if letter is not False:
            picks.append(_Pick(letter, m.start(), m.end(), "boxed"))
    return picks


def _statement(text: str, ctx: _Ctx) -> list[_Pick]:
    picks = []
    letter_re = _patterns(ctx.valid)["statement_letter"]
    for m in _STATEMENT.finditer(text):
        tok = letter_re.match(text, m.end())
        if tok:
            letter = next(g for g in tok.groups() if g).upper()
            if not (tok.group(3) == "I" and _WORD_AFTER.match(text, tok.end())):
                picks.append(_Pick(letter, tok.start(), tok.end(), "answer statement"))
                continue
        tail = text[m.end() : m.end() + 300].split("\n", 1)[0]
        letter = _option_letter(tail, ctx)
        if letter is not False:
            picks.append(_Pick(letter, m.end(), m.end() + len(tail), "answer statement"))
    return picks


def _whole_text(text: str, ctx: _Ctx) -> list[_Pick]:
    letter = _option_letter(text, ctx) if len(text) <= 2000 else False
    return [] if letter is False else [_Pick(letter, 0, len(text), "option text")]


def _lone_line(text: str, ctx: _Ctx) -> list[_Pick]:
    return [
        _Pick(next(g for g in m.groups() if g), m.start(), m.end(), "letter on its own line")
        for m in _patterns(ctx.valid)["lone_line"].finditer(text)
    ]


def _parenthesised(text: str, ctx: _Ctx) -> list[_Pick]:
    return [
        _Pick(m.group(1) or m.group(2), m.start(), m.end(), "parenthesised letter")
        for m in _patterns(ctx.valid)["paren"].finditer(text)
    ]


def _bare(text: str, ctx: _Ctx) -> list[_Pick]:
    return [
        _Pick(m.group(1), m.start(), m.end(), "last standalone letter")
        for m in _patterns(ctx.valid)["bare"].finditer(text)
        if not (m.group(1) in "AI" and _WORD_AFTER.match(text, m.end()))
    ]


_TIERS = (_boxed, _statement, _whole_text, _lone_line, _parenthesised, _bare)


def _hedged(text: str, pick: _Pick, ctx: _Ctx) -> bool:
    pats = _patterns(ctx.valid)
    after = pats["hedge_after"].match(text, pick.end, min(len(text), pick.end + 40))
    before = pats["hedge_before"].search(text, max(0, pick.start - 40), pick.start)
    return any(m is not None and m.group(1) != pick.letter for m in (after, before))


def _extract(text: str, ctx: _Ctx) -> _Pick | None:
    """The answer the completion gives (letter None when ambiguous), or None."""
    text = text.replace("*", "")
    for tier in _TIERS:
        picks = tier(text, ctx)
        if picks:
            pick = picks[-1]
            if pick.letter is not None and _hedged(text, pick, ctx):
                return _Pick(None, pick.start, pick.end, pick.how)
            return pick
    return None


def _options_of(sample: Sample, letters: str) -> list[str] | None:
    choices = sample.metadata.get("choices")
    if choices is None:
        return None
    if not isinstance(choices, list) or not all(isinstance(c, str) for c in choices):
        raise InvalidInput(f"metadata.choices must be a list of strings, got {choices!r:.80}")
    if not 0 < len(choices) <= len(letters):
        raise InvalidInput(
            f"metadata.choices has {len(choices)} options; between 1 and {len(letters)} "
            f"(the number of letters {letters!r}) are supported"
        )
    for i, c in enumerate(choices):
        if not _norm_option(c):
            raise InvalidInput(f"metadata.choices[{i}] is empty")
    return [_norm_option(c) for c in choices]


def _reference_letter(reference: str, valid: str, options: list[str] | None) -> str:
    ref = reference.strip()
    if not ref:
        raise InvalidInput("reference is empty; choice needs the correct letter")
    form = _LETTER_FORM.fullmatch(ref)
    if form and form.group(1).upper() in valid:
        return form.group(1).upper()
    letter = _option_letter(ref, _Ctx(valid, tuple(options) if options else None))
    if isinstance(letter, str):
        return letter
    if letter is None:
        raise InvalidInput(f"reference {ref!r:.80} matches several of metadata.choices")
    raise InvalidInput(
        f"reference {ref!r:.80} is not one of the letters {valid!r}"
        + (" nor the text of one of metadata.choices" if options else "")
    )


@verifier(
    name="choice",
    version="1",
    kind="rule",
    param_docs={
        "letters": "the option letters, in order; metadata.choices keeps the first N",
        "allow_option_text": "accept the text of an option (from metadata.choices) "
        "instead of its letter",
    },
)
def choice(
    sample: Sample, *, letters: str = "ABCDEFGHIJ", allow_option_text: bool = True
) -> Result:
    """1.0 when the letter the completion picks is the reference's.

    The reference may be "B", "b", "(B)", or, when ``metadata.choices`` lists the
    option texts, the text of the correct option. Components: `extracted` (a single
    answer was found), `ambiguous` (the answer hedged between options), `correct`.

    >>> choice(Sample(completion="Both fit, but the answer is (C).", reference="C")).value
    1.0
    >>> choice(Sample(completion="It is A or B.", reference="A")).components["ambiguous"]
    1.0
    >>> s = Sample(completion="Answer: Paris", reference="B", metadata={"choices": ["Rome", "Paris"]})
    >>> choice(s).value
    1.0
    """
    if not re.fullmatch(r"[A-Z]+", letters) or len(set(letters)) != len(letters):
        raise InvalidParams(f"param letters must be distinct capitals A-Z, got {letters!r}")
    if sample.completion is None:
        raise InvalidInput("completion is missing")
    options = _options_of(sample, letters)
    valid = letters[: len(options)] if options else letters
    want = _reference_letter(sample.reference, valid, options)
    ctx = _Ctx(valid, tuple(options) if options and allow_option_text else None)
    pick = _extract(sample.completion, ctx)
    if pick is None:
        comps = {"extracted": 0.0, "ambiguous": 0.0, "correct": 0.0}
        return Result.ok(0.0, reason=f"no answer among {valid!r} found", components=comps)
    if pick.letter is None:
        comps = {"extracted": 0.0, "ambiguous": 1.0, "correct": 0.0}
        where = sample.completion.replace("*", "")[pick.start : pick.end][:60]
        return Result.ok(0.0, reason=f"ambiguous {pick.how} {where!r}", components=comps)
    correct = pick.letter == want
    comps = {"extracted": 1.0, "ambiguous": 0.0, "correct": float(correct)}
    reason = f"{pick.how} gives {pick.letter}; reference is {want}"
    return Result.ok(float(correct), reason=reason, components=comps)
