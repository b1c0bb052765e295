"""The 25 IFEval instruction checks as pure functions, and the table of them by id.

Each check is ``check(response, **kwargs) -> bool`` with kwargs named as in IFEval's
input data, already validated (`referee.verifiers.ifeval` does that from the kinds in
`INSTRUCTIONS`). The semantics are those of Google's reference implementation
(google-research ``instruction_following_eval/instructions.py``), re-implemented;
where they differ it is on purpose, and the differences are listed here:

- keywords, the frequency keyword, forbidden words, postscript markers and section
  splitters are matched literally (the reference passes them to `re` unescaped, so a
  keyword like "C++" is a broken pattern there);
- language: a response with nothing langdetect can read (no letters) is in no
  language, so it does not follow ``response_language`` (the reference counts it as
  followed); "zh" accepts langdetect's "zh-cn" and "zh-tw";
- sentences are split by rules instead of NLTK's punkt (see `ifeval_text`);
- ``nth_paragraph_first_word`` counts the nth non-empty paragraph (the reference
  indexes the raw split, so an empty piece between two blank-line pairs shifts it).

Comparisons follow IFEval's two relations: "less than" is ``n < threshold`` and
"at least" is ``n >= threshold``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from referee.verifiers.ifeval_text import capital_words, detect_language, split_sentences, words

RELATIONS = ("less than", "at least")
CONSTRAINED_RESPONSES = ("My answer is yes.", "My answer is no.", "My answer is maybe.")


def _compare(n: int, relation: str, threshold: int) -> bool:
    return n < threshold if relation == "less than" else n >= threshold


# keywords:*


def keywords_existence(text: str, *, keywords: list[str]) -> bool:
    """Every keyword appears, ignoring case, anywhere (also inside a longer word)."""
    return all(re.search(re.escape(k), text, flags=re.IGNORECASE) for k in keywords)


def keywords_frequency(text: str, *, keyword: str, frequency: int, relation: str) -> bool:
    """Non-overlapping case-insensitive occurrences of `keyword` compared to `frequency`."""
    n = len(re.findall(re.escape(keyword), text, flags=re.IGNORECASE))
    return _compare(n, relation, frequency)


def forbidden_words(text: str, *, forbidden_words: list[str]) -> bool:
    """None of the words appears as a whole word, ignoring case."""
    return not any(
        re.search(r"\b" + re.escape(w) + r"\b", text, flags=re.IGNORECASE) for w in forbidden_words
    )


def letter_frequency(text: str, *, letter: str, let_frequency: int, let_relation: str) -> bool:
    """Occurrences of one character (any case) compared to `let_frequency`."""
    return _compare(text.lower().count(letter.lower()), let_relation, let_frequency)


# language:*


def response_language(text: str, *, language: str) -> bool:
    """langdetect reads the whole response as `language` (an ISO 639-1 code)."""
    found = detect_language(text)
    if found is None:
        return False
    return found == language or (language == "zh" and found in ("zh-cn", "zh-tw"))


# length_constraints:*


def number_sentences(text: str, *, num_sentences: int, relation: str) -> bool:
    return _compare(len(split_sentences(text)), relation, num_sentences)


def number_paragraphs(text: str, *, num_paragraphs: int) -> bool:
    """Exactly `num_paragraphs` paragraphs separated by "***" dividers.

    An empty piece before the first or after the last divider is not a paragraph; an
    empty one between two dividers fails the check.
    """
    pieces = re.split(r"\s?\*\*\*\s?", text)
    count = len(pieces)
    for i, piece in enumerate(pieces):
        if not piece.strip():
            if 0 < i < len(pieces) - 1:
                return False
            count -= 1
    return count == num_paragraphs


def number_words(text: str, *, num_words: int, relation: str) -> bool:
    return _compare(len(words(text)), relation, num_words)


def nth_paragraph_first_word(
    text: str, *, num_paragraphs: int, nth_paragraph: int, first_word: str
) -> bool:
    """Exactly `num_paragraphs` blank-line-separated paragraphs, the nth starting with
    `first_word` (case-insensitive; leading quotes and the punctuation after the
    word are ignored)."""
    paragraphs = [p.strip() for p in text.split("\n\n") if p.strip()]
    if len(paragraphs) != num_paragraphs or nth_paragraph > len(paragraphs):
        return False
    first = paragraphs[nth_paragraph - 1].split()[0].lstrip("'\"")
    first = re.split(r"[.,?!'\"]", first, maxsplit=1)[0]
    return first.lower() == first_word.lower()


# detectable_content:*


def postscript(text: str, *, postscript_marker: str) -> bool:
    """The marker appears (case-insensitive); "P.S." and "P.P.S" allow spaces inside."""
    if postscript_marker == "P.P.S":
        pattern = r"p\.\s?p\.\s?s"
    elif postscript_marker == "P.S.":
        pattern = r"p\.\s?s\."
    else:
        pattern = re.escape(postscript_marker.lower())
    return re.search(pattern, text.lower()) is not None


def number_placeholders(text: str, *, num_placeholders: int) -> bool:
    """At least `num_placeholders` square-bracket placeholders like "[name]" on one line."""
    return _bracket_pairs(text) >= num_placeholders


def _bracket_pairs(text: str) -> int:
    """Matches of IFEval's ``\\[.*?\\]`` (a "[" closed on its own line), in linear time."""
    count = 0
    for line in text.split("\n"):
        pos = line.find("[")
        while pos >= 0:
            close = line.find("]", pos + 1)
            if close < 0:
                break
            count += 1
            pos = line.find("[", close + 1)
    return count


# detectable_format:*


def _is_bullet(line: str) -> bool:
    stripped = line.lstrip()
    return stripped.startswith("-") or (
        stripped.startswith("*") and len(stripped) > 1 and stripped[1] != "*"
    )


def number_bullet_lists(text: str, *, num_bullets: int) -> bool:
    """Exactly `num_bullets` lines starting with "* " or "-" (markdown bullets)."""
    return sum(_is_bullet(line) for line in text.split("\n")) == num_bullets


def constrained_response(text: str) -> bool:
    """Contains one of "My answer is yes.", "My answer is no.", "My answer is maybe."."""
    return any(option in text for option in CONSTRAINED_RESPONSES)


def number_highlighted_sections(text: str, *, num_highlights: int) -> bool:
    """At least `num_highlights` non-empty "*italic*" or "**bold**" spans within a line."""
    single = [h for h in re.findall(r"\*[^\n*]*\*", text) if h.strip("*").strip()]
    double = [h for h in re.findall(r"\*\*[^\n*]*\*\*", text) if h[2:-2].strip()]
    return len(single) + len(double) >= num_highlights


def multiple_sections(text: str, *, section_spliter: str, num_sections: int) -> bool:
    """At least `num_sections` headers "<spliter> <number>" (case-sensitive, e.g. "SECTION 1")."""
    headers = re.findall(re.escape(section_spliter) + r"\s?\d+", text)
    return len(headers) >= num_sections


def json_format(text: str) -> bool:
    """The whole response is JSON, optionally inside one ``` (or ```json) fence."""
    body = text.strip()
    body = re.sub(r"^```(?:json)?", "", body, count=1, flags=re.IGNORECASE)
    body = body.removesuffix("```").strip()
    try:
        json.loads(body)
    except (ValueError, RecursionError):  # RecursionError: nesting deeper than the stack
        return False
    return True


def title(text: str) -> bool:
    """A non-empty title in double angular brackets on one line: "<<poem of joy>>"."""
    # IFEval's pattern is <<[^\n]+>>: on each line, the greedy match runs from the first
    # "<<" to the last ">>"; found this way it stays linear on lines full of "<<".
    for line in text.split("\n"):
        start, end = line.find("<<"), line.rfind(">>")
        if start >= 0 and end >= start + 3 and line[start : end + 2].strip("<>").strip():
            return True
    return False


# combination:*


def repeat_prompt(text: str, *, prompt_to_repeat: str) -> bool:
    """The response starts with the request, repeated word for word (case aside)."""
    return text.strip().lower().startswith(prompt_to_repeat.strip().lower())


def two_responses(text: str) -> bool:
    """Exactly two different non-empty responses separated by "******"."""
    pieces = text.split("******")
    kept = []
    for i, piece in enumerate(pieces):
        if piece.strip():
            kept.append(piece.strip())
        elif 0 < i < len(pieces) - 1:
            return False
    return len(kept) == 2 and kept[0] != kept[1]


# startend:*


def end_checker(text: str, *, end_phrase: str) -> bool:
    """The response ends with `end_phrase` (case-insensitive; outer quotes ignored)."""
    return text.strip().strip('"').lower().endswith(end_phrase.strip().lower())


def quotation(text: str) -> bool:
    """The whole response is wrapped in double quotation marks."""
    body = text.strip()
    return len(body) > 1 and body[0] == '"' and body[-1] == '"'


# change_case:*


def capital_word_frequency(text: str, *, capital_frequency: int, capital_relation: str) -> bool:
    return _compare(len(capital_words(text)), capital_relation, capital_frequency)


def english_capital(text: str) -> bool:
    """All cased characters are capitals and langdetect reads English.

    As in the reference, a text langdetect cannot read counts as English here.
    """
    return text.isupper() and detect_language(text) in ("en", None)


def english_lowercase(text: str) -> bool:
    """All cased characters are lower-case and langdetect reads English (as above)."""
    return text.islower() and detect_language(text) in ("en", None)


# punctuation:*


def no_comma(text: str) -> bool:
    """No ASCII comma anywhere."""
    return "," not in text


@dataclass(frozen=True)
class Instruction:
    """One IFEval instruction: its check and the kwargs it takes, by kind.

    Kinds (validated by the verifier): "count" an integer >= 0, "positive" an integer
    >= 1, "relation" one of `RELATIONS`, "text" a non-empty string (stripped), "char"
    one character, "phrases" a non-empty list of non-empty strings, "language" a code
    langdetect knows (or "zh").
    """

    check: Callable[..., bool]
    kwargs: Mapping[str, str] = field(default_factory=dict)
    # A constraint between kwargs; returns what is wrong, or None.
    constraint: Callable[[Mapping[str, Any]], str | None] | None = None


def _nth_within(kw: Mapping[str, Any]) -> str | None:
    if kw["nth_paragraph"] > kw["num_paragraphs"]:
        return (
            f"nth_paragraph {kw['nth_paragraph']} is beyond num_paragraphs {kw['num_paragraphs']}"
        )
    return None


INSTRUCTIONS: dict[str, Instruction] = {
    "keywords:existence": Instruction(keywords_existence, {"keywords": "phrases"}),
    "keywords:frequency": Instruction(
        keywords_frequency, {"keyword": "text", "frequency": "count", "relation": "relation"}
    ),
    "keywords:forbidden_words": Instruction(forbidden_words, {"forbidden_words": "phrases"}),
    "keywords:letter_frequency": Instruction(
        letter_frequency, {"letter": "char", "let_frequency": "count", "let_relation": "relation"}
    ),
    "language:response_language": Instruction(response_language, {"language": "language"}),
    "length_constraints:number_sentences": Instruction(
        number_sentences, {"num_sentences": "count", "relation": "relation"}
    ),
    "length_constraints:number_paragraphs": Instruction(
        number_paragraphs, {"num_paragraphs": "count"}
    ),
    "length_constraints:number_words": Instruction(
        number_words, {"num_words": "count", "relation": "relation"}
    ),
    "length_constraints:nth_paragraph_first_word": Instruction(
        nth_paragraph_first_word,
        {"num_paragraphs": "positive", "nth_paragraph": "positive", "first_word": "text"},
        _nth_within,
    ),
    "detectable_content:postscript": Instruction(postscript, {"postscript_marker": "text"}),
    "detectable_content:number_placeholders": Instruction(
        number_placeholders, {"num_placeholders": "count"}
    ),
    "detectable_format:number_bullet_lists": Instruction(
        number_bullet_lists, {"num_bullets": "count"}
    ),
    "detectable_format:constrained_response": Instruction(constrained_response),
    "detectable_format:number_highlighted_sections": Instruction(
        number_highlighted_sections, {"num_highlights": "count"}
    ),
    "detectable_format:multiple_sections": Instruction(
        multiple_sections, {"section_spliter": "text", "num_sections": "count"}
    ),
    "detectable_format:json_format": Instruction(json_format),
    "detectable_format:title": Instruction(title),
    "combination:repeat_prompt": Instruction(repeat_prompt, {"prompt_to_repeat": "text"}),
    "combination:two_responses": Instruction(two_responses),
    "startend:end_checker": Instruction(end_checker, {"end_phrase": "text"}),
    "startend:quotation": Instruction(quotation),
    "change_case:capital_word_frequency": Instruction(
        capital_word_frequency, {"capital_frequency": "count", "capital_relation": "relation"}
    ),
    "change_case:english_capital": Instruction(english_capital),
    "change_case:english_lowercase": Instruction(english_lowercase),
    "punctuation:no_comma": Instruction(no_comma),
}
