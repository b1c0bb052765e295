"""Text measurements for the IFEval checks: words, sentences, capital words, language.

IFEval's reference code counts sentences with NLTK's punkt model, which NLTK downloads
at run time; a verifier must work offline from what pip installs, so sentences are
split here by a rule-based splitter instead (see `split_sentences` for its rules and
where it can disagree with punkt). Words are IFEval's: runs of ``\\w`` characters.

Language detection uses `langdetect` (the library IFEval itself uses): it ships its
55 language profiles inside the package, so it needs no download. Its detector samples
n-grams at random, so results are only reproducible with a fixed seed; `detect_language`
builds its own seeded factory (profiles loaded in sorted order) instead of relying on
the library's global one, so other users of langdetect in the process are unaffected.
"""

from __future__ import annotations

import functools
import os
import re

from langdetect.detector_factory import PROFILES_DIRECTORY, DetectorFactory
from langdetect.lang_detect_exception import LangDetectException

_WORD = re.compile(r"\w+")

# A run of sentence-ending marks, the closers that may follow it (quotes, brackets,
# markdown emphasis), and then whitespace or the end of the text. The lookbehind makes
# a match start only where a run starts, which keeps long runs of dots linear.
_END = re.compile(r"(?<![.!?\u2026])[.!?\u2026]+[\"'\u201d\u2019)\]*_]*(?=\s|$)")
_OPENERS = "\"'\u201c\u2018([*_"
_ACRONYM = re.compile(r"(?:[a-z]\.)+[a-z]")

# Words that precede a name: a period after them never ends a sentence ("Dr. Smith").
_TITLES = frozenset("mr mrs ms dr prof st mt rev gen sen rep gov capt lt col sgt fr".split())
# Abbreviations that are practically never the last word of a sentence.
_NEVER_FINAL = frozenset("e.g i.e vs cf viz approx ca".split())
# Abbreviations that may end a sentence: a break only when a lower-case word does not follow.
_MAYBE_FINAL = frozenset(
    "etc al jr sr inc ltd co corp dept est fig vol jan feb mar apr jun jul aug sep sept "
    "oct nov dec a.m p.m u.s u.k ph.d".split()
)

# Cap-word tokens: words joined by inner hyphens or periods ("WELL-KNOWN", "U.S.") are
# one token; an apostrophe splits ("DON'T" is two, as NLTK's tokenizer makes it).
_CAP_TOKEN = re.compile(r"\w+(?:[-.]\w+)*")


def words(text: str) -> list[str]:
    """IFEval's words: maximal runs of letters, digits and underscores.

    >>> words("Don't stop -- it's 9:30!")
    ['Don', 't', 'stop', 'it', 's', '9', '30']
    """
    return _WORD.findall(text)


def _next_is_lower(text: str, pos: int) -> bool:
    """Whether the first word after `pos` (past spaces and openers) starts lower-case."""
    rest = text[pos : pos + 40].lstrip().lstrip(_OPENERS)
    return bool(rest) and rest[0].islower()


def _token_before(text: str, end: int) -> tuple[int, str]:
    """The whitespace-delimited token ending at `end`, and where it starts."""
    start = end
    while start > 0 and not text[start - 1].isspace():
        start -= 1
    return start, text[start:end]


def _at_line_start(text: str, pos: int) -> bool:
    while pos > 0 and text[pos - 1] in " \t":
        pos -= 1
    return pos == 0 or text[pos - 1] == "\n"


def _is_break(text: str, m: re.Match[str]) -> bool:
    """Decides whether the end mark matched by `m` ends a sentence."""
    marks = m.group().rstrip("\"'\u201d\u2019)]*_")
    if "!" in marks or "?" in marks:  # '"Why?" she asked.' is one sentence
        quoted = len(marks) < len(m.group())
        return not (quoted and _next_is_lower(text, m.end()))
    if len(marks) > 1 or "\u2026" in marks:  # an ellipsis: "wait... what" goes on
        return not _next_is_lower(text, m.end())
    start, token = _token_before(text, m.start())
    word = token.lstrip(_OPENERS).lower()
    if word in _TITLES or word in _NEVER_FINAL:
        return False
    if len(word) == 1 and word.isalpha():  # an initial: "J. R. R. Tolkien"
        return False
    if word.isdigit() and _at_line_start(text, start):  # "1. First item"
        return False
    if word in _MAYBE_FINAL or _ACRONYM.fullmatch(word):
        return not _next_is_lower(text, m.end())
    return True


def split_sentences(text: str) -> list[str]:
    """The sentences of `text`, by punctuation rules (no model, no download).

    A sentence ends at ".", "!", "?" or an ellipsis (with any closing quotes, brackets
    or markdown emphasis after it) followed by whitespace or the end of the text; a
    quoted "!" or "?" followed by a lower-case word does not end one ('"Why?" she said').
    A period does not end one after a title ("Dr."), a single-letter initial, a list
    number at the start of a line ("1."), or "e.g."/"i.e."/"vs."; after "etc.", dotted
    acronyms ("U.S.") and an ellipsis it ends one unless a lower-case word follows.
    Line breaks alone do not end a sentence (as in punkt): an unpunctuated list or
    heading runs into the next sentence. Pieces with no word character are dropped.

    Where punkt differs: punkt learned its abbreviations from a corpus, so it knows
    more of them (and decides some by the case of the next word); rare abbreviations
    here end a sentence.

    >>> split_sentences("Dr. Smith arrived at 5 p.m. today. Was it late? Yes!")
    ['Dr. Smith arrived at 5 p.m. today.', 'Was it late?', 'Yes!']
    >>> len(split_sentences('He said "stop." Then J. R. left... and came back'))
    2
    """
    out, start = [], 0
    for m in _END.finditer(text):
        if _is_break(text, m):
            out.append(text[start : m.end()].strip())
            start = m.end()
    out.append(text[start:].strip())
    return [s for s in out if _WORD.search(s)]


def capital_words(text: str) -> list[str]:
    """Words written all in capitals ("NASA", "U.S.", "COVID-19"; not "I'm" or "2024").

    IFEval tokenises with NLTK's word tokenizer; this regex tokenizer agrees with it on
    hyphenated words, dotted acronyms and contractions ("DON'T" counts two: "DO", "N'T").

    >>> capital_words("I LOVE the U.S. and DON'T mind COVID-19 in 2024")
    ['I', 'LOVE', 'U.S', 'DON', 'T', 'COVID-19']
    """
    return [t for t in _CAP_TOKEN.findall(text) if t.isupper()]


@functools.lru_cache(maxsize=1)
def _factory() -> DetectorFactory:
    factory = DetectorFactory()
    names = sorted(n for n in os.listdir(PROFILES_DIRECTORY) if not n.startswith("."))
    profiles = []
    for name in names:
        with open(os.path.join(PROFILES_DIRECTORY, name), encoding="utf-8") as f:
            profiles.append(f.read())
    factory.load_json_profile(profiles)
    factory.set_seed(0)
    return factory


def detectable_languages() -> frozenset[str]:
    """The codes langdetect can answer (ISO 639-1, plus zh-cn and zh-tw)."""
    return frozenset(_factory().get_lang_list())


def detect_language(text: str) -> str | None:
    """langdetect's language code for `text`, or None when it has no letters to go on.

    >>> detect_language("Le chat dort sur le canapé depuis ce matin.")
    'fr'
    >>> detect_language("12345 !!!") is None
    True
    """
    detector = _factory().create()
    detector.append(text)
    try:
        return detector.detect()
    except LangDetectException:
        return None


def loose_variants(text: str) -> list[str]:
    """IFEval's loose-mode readings of a response, the response itself first.

    The response with its first line, its last line, or both removed, each also with
    every "*" deleted (markdown emphasis), plus the response with "*" deleted;
    duplicates dropped. An instruction counts as followed in loose mode when any
    variant follows it.

    >>> loose_variants("Sure:\\n**Hi**")
    ['Sure:\\n**Hi**', 'Sure:\\nHi', '**Hi**', 'Sure:', '', 'Hi']
    """
    lines = text.split("\n")
    cut = [
        "\n".join(lines[1:]).strip(),
        "\n".join(lines[:-1]).strip(),
        "\n".join(lines[1:-1]).strip(),
    ]
    variants = [text, text.replace("*", ""), *cut, *(c.replace("*", "") for c in cut)]
    return list(dict.fromkeys(variants))
