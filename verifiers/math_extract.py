"""Finding the final answer in a math completion, and parsing it with math-verify.

`extract_answer` looks for the answer in this order and stops at the first stage that
yields one; the stage is reported, so a reward's `reason` can say what was graded:

1. ``boxed``: the last ``\\boxed{...}`` or ``\\fbox{...}`` (braces balanced, so nesting
   is fine), joined with boxes just before it that are separated by "," / "and" / "or"
   (``\\boxed{2}`` and ``\\boxed{3}`` is the set {2, 3}). If the last box is never closed
   the completion was cut off mid-answer: that is no answer, not the box before it.
2. ``phrase``: the last "answer is X", "Answer: X" or "final answer: X".
3. ``latex``: the last LaTeX math (``$...$``, ``\\(...\\)``, ``\\[...\\]``), located by
   math-verify's own patterns.
4. ``number``: the last number or arithmetic expression, by math-verify's patterns.

math-verify does the parsing into SymPy. The code here only locates answers math-verify
cannot (``\\fbox``, a bare ``x^2+1`` after "Answer:"), turns bare text into LaTeX it
accepts (unicode minus and digits, ``1.5e3``, ``√2``, ``1\\,000``, trailing unit words),
and keeps every stage's work bounded: stages 2-4 only read the last `TAIL_CHARS`
characters, and an answer longer than `MAX_ANSWER_CHARS` is not parsed at all.

Nothing here bounds time by itself (SymPy can be slow on hostile input); the caller runs
these functions under a deadline, which is why math-verify's timeouts are switched off.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from typing import Any

from math_verify import ExprExtractionConfig, LatexExtractionConfig, parse

TAIL_CHARS = 4000
"""Stages 2-4 read only this many characters from the end of the completion."""

MAX_ANSWER_CHARS = 2000
"""A boxed answer or a reference longer than this is not parsed."""

STAGES = ("boxed", "phrase", "latex", "number")

_LATEX = [LatexExtractionConfig(boxed_match_priority=0)]
_LATEX_NO_BOX = [LatexExtractionConfig(boxed_match_priority=-1)]
_EXPR = [ExprExtractionConfig()]

_BOX_OPEN = re.compile(r"\\(?:boxed|fbox)\s*\{")
_BOX_SEPARATOR = re.compile(r"\s*\$?\s*(?:,|;|\band\b|\bor\b)\s*\$?\s*(?:[a-zA-Z]\s*=\s*)?$")
_PHRASE = re.compile(
    r"\b(?:final\s+)?answer\b\s*(?:\*\*|__)?\s*(?:is\b\s*:?|:|=)\s*(?:\*\*|__)?", re.IGNORECASE
)
_ENV = r"(?:\$\$.+?\$\$|\$[^$\n]+\$|\\\(.+?\\\)|\\\[.+?\\\])"
_ENV_CHAIN = re.compile(rf"^{_ENV}(?:\s*(?:,|,?\s*and|,?\s*or)\s*{_ENV})*", re.DOTALL)
_DELIMITED = re.compile(r"(?<![\\\d])\$[^$]+\$|\\\(|\\\[")
_SENTENCE_END = re.compile(
    r"\.(?:\s|$)|;|,\s+(?!(?:and|or)\b)(?=[a-z]{3,})|\s+(?:because|since|which|where|when|as|so|thus|hence|"
    r"therefore|for|if)\b",
    re.IGNORECASE,
)
_MATHY = re.compile(r"[\d\\π∞√]|^[A-Za-z]$|^-?(?:pi|infinity|inf)$", re.IGNORECASE)
_SCIENTIFIC = re.compile(r"(?<![\w.\\])(\d+(?:\.\d+)?)[eE]([+-]?\d+)(?![\w.])")
_LATEX_THOUSANDS = re.compile(r"(?<=\d)(?:\\[,;: ]|\{,\}|[ \u00a0\u202f])(?=\d{3}(?!\d))")
_UNIT_WORDS = re.compile(
    r"(?<=[\d}])(?:\s*\\(?:text|mbox|mathrm)\{[^{}]*\}|\s+(?!pi\b)[A-Za-z]{2,}\.?)"
    r"(?:\^\{?\d\}?)?\s*$"
)
_SQRT = re.compile(r"√\s*(\d+(?:\.\d+)?|[A-Za-z])")
_UNICODE_MATH = {
    "\u2212": "-",  # minus sign
    "\u2012": "-",  # figure dash
    "\u00a0": " ",  # no-break space
    "∞": r"\infty ",
    "°": r"^\circ",
    "≤": r"\le ",
    "≥": r"\ge ",
    "≠": r"\ne ",
}
_UNICODE_TABLE = str.maketrans(_UNICODE_MATH)
_NON_ASCII_DIGIT = re.compile(r"(?![0-9])\d")


@dataclass(frozen=True)
class Answer:
    """What a stage found: `text` as written and math-verify's parse of it.

    `parsed` is math-verify's list: SymPy objects, then possibly the matched string as a
    fallback. An empty `parsed` (or `stage` None) means no answer was found; `note` says
    why.
    """

    stage: str | None
    text: str
    parsed: list[Any]
    note: str = ""

    @property
    def found(self) -> bool:
        return bool(self.parsed)


def normalize_unicode(text: str) -> str:
    """Maps unicode minus, no-break space, ∞, °, ≤ ... and non-ASCII digits to ASCII/LaTeX."""
    if text.isascii():
        return text
    text = text.translate(_UNICODE_TABLE)
    text = _SQRT.sub(r"\\sqrt{\1}", text).replace("√", r"\sqrt")
    return _NON_ASCII_DIGIT.sub(lambda m: str(unicodedata.digit(m.group(), 0)), text)


def boxed_contents(text: str) -> list[str] | None:
    """Contents of the last box and of up to 9 boxes chained before it by "," / "and" / "or".

    None when there is no box; [] when the last box is never closed.
    """
    opens = list(_BOX_OPEN.finditer(text))
    contents: list[str] = []
    start = len(text)
    for m in reversed(opens):
        end = _closing_brace(text, m.end())
        if not contents and end < 0:
            return []
        chained = 0 <= end < start and end >= start - 40
        if contents and not (chained and _BOX_SEPARATOR.match(text, end + 1, start)):
            break
        contents.insert(0, text[m.end() : end])
        start = m.start()
        if len(contents) == 10:
            break
    return contents or None


def _closing_brace(text: str, i: int) -> int:
    """Index of the brace closing the one just before `i`, or -1; skips ``\\{`` ``\\}``."""
    depth = 1
    n = len(text)
    while i < n:
        c = text[i]
        if c == "\\":
            i += 2
            continue
        if c == "{":
            depth += 1
        elif c == "}":
            depth -= 1
            if depth == 0:
                return i
        i += 1
    return -1


def latexify(span: str) -> str:
    """Turns a bare answer ("1.5e3 m", "2√2", "1 000.") into LaTeX math-verify parses."""
    span = span.strip().rstrip(".").strip()
    span = _SCIENTIFIC.sub(r"\1\\times 10^{\2}", span)
    span = _LATEX_THOUSANDS.sub("", span)
    span = re.sub(r"(?<![\\A-Za-z])pi\b", r"\\pi ", span)
    for _ in range(2):
        stripped = _UNIT_WORDS.sub("", span)
        if stripped and stripped != span:
            span = stripped
    return span.replace("%", r"\%").replace(r"\\%", r"\%")


def parse_answer(span: str) -> list[Any]:
    """math-verify's parse of one answer: LaTeX if delimited, else bare text as LaTeX.

    Bare text that math-verify cannot read as LaTeX is tried as a plain expression.
    """
    span = span.strip()
    if not span or len(span) > MAX_ANSWER_CHARS:
        return []
    if _DELIMITED.search(span):
        return _parse(span, _LATEX)
    latex = latexify(span)
    parsed = _parse(f"${latex}$", _LATEX) if latex else []
    if has_math(parsed):
        return parsed
    return _parse(span, _EXPR) or parsed


def has_math(parsed: list[Any]) -> bool:
    """Whether math-verify's list holds a parsed object, not just a fallback string."""
    return any(not isinstance(p, str) for p in parsed)


def _parse(text: str, config: list[Any]) -> list[Any]:
    # The caller owns the deadline: math-verify's own alarm would cancel it.
    return parse(text, extraction_config=config, parsing_timeout=None)  # type: ignore[arg-type]


def tail(text: str, n: int = TAIL_CHARS) -> str:
    """The last `n` characters, starting at a token boundary (never half a number)."""
    if len(text) <= n:
        return text
    cut = text[-n:]
    if text[-n - 1].isspace():
        return cut
    space = re.search(r"\s", cut)
    return cut[space.end() :] if space else ""


def phrase_span(text: str) -> str | None:
    """The answer after the last "answer is" / "Answer:" phrase, cut at sentence end."""
    matches = list(_PHRASE.finditer(text))
    if not matches:
        return None
    rest = text[matches[-1].end() :].lstrip()
    line = rest.split("\n", 1)[0][:300].strip()
    chain = _ENV_CHAIN.match(line)
    if chain:
        return chain.group(0)
    end = _SENTENCE_END.search(line)
    span = (line[: end.start()] if end else line).strip().strip("*_").strip()
    return span if _MATHY.search(span) else None


def extract_answer(completion: str, stages: tuple[str, ...] = STAGES) -> Answer:
    """The final answer of `completion`, from the first of `stages` that finds one."""
    text = normalize_unicode(completion)
    if "boxed" in stages:
        contents = boxed_contents(text)
        if contents == []:
            return Answer(None, "", [], "the last \\boxed{ is never closed")
        if contents is not None:
            joined = ", ".join(c.strip() for c in contents)
            parsed = parse_answer(joined)
            note = "" if parsed else "the boxed answer is empty or could not be parsed"
            if len(joined) > MAX_ANSWER_CHARS:
                note = f"the boxed answer is over {MAX_ANSWER_CHARS} characters"
            return Answer("boxed", joined, parsed, note)
    end = tail(text)
    if "phrase" in stages:
        span = phrase_span(end)
        parsed = parse_answer(span) if span else []
        if span and parsed:
            return Answer("phrase", span, parsed)
    if "latex" in stages:
        parsed = _parse(end, _LATEX_NO_BOX)
        if has_math(parsed):
            return Answer("latex", _shown(parsed), parsed)
    if "number" in stages:
        plain = _SCIENTIFIC.sub(r"\1*10^\2", end.replace("×", "*").replace("÷", "/"))
        parsed = _parse(plain, _EXPR)
        if has_math(parsed):
            return Answer("number", _shown(parsed), parsed)
    return Answer(None, "", [], "no " + " / ".join(stages) + " answer found")


def _shown(parsed: list[Any]) -> str:
    """The matched text math-verify reports (its fallback string), if any."""
    return next((p for p in reversed(parsed) if isinstance(p, str)), "")
