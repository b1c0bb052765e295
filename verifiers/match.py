"""String-matching rewards: exact, normalised and regular-expression matches.

These are the cheapest verifiable rewards: short-answer QA, classification labels,
extraction tasks whose answer is one string. They compare text, nothing more.

What they do not cover:

- Meaning. "4" and "four", "1,000" and "1000", "x+1" and "1+x" do not match; use the
  math verifier or a judge for answers that can be written several ways.
- Answer extraction. The whole completion is compared (or searched, for `regex`); a
  chain of thought before the answer makes `exact` and `normalized_match` fail. Ask
  the policy for a bare answer, or use `regex` / `choice` / `format` to pick it out.
- Hostile regexes. `regex` runs patterns that may come from the dataset, and Python's
  `re` can backtrack exponentially. Nothing here bounds the time a pattern takes; the
  server's worker timeout (which kills the worker process) is what does. `max_chars`
  only bounds the text a pattern sees.
"""

from __future__ import annotations

import re
import unicodedata

from referee.types import InvalidInput, InvalidParams, Result, Sample
from referee.verifier import verifier

_ARTICLES = re.compile(r"\b(?:a|an|the)\b", re.IGNORECASE)

_FLAGS = {
    "IGNORECASE": re.IGNORECASE,
    "I": re.IGNORECASE,
    "MULTILINE": re.MULTILINE,
    "M": re.MULTILINE,
    "DOTALL": re.DOTALL,
    "S": re.DOTALL,
    "VERBOSE": re.VERBOSE,
    "X": re.VERBOSE,
    "ASCII": re.ASCII,
    "A": re.ASCII,
}
_MODES = ("search", "fullmatch")


def completion_of(sample: Sample) -> str:
    """The completion, or InvalidInput when the sample has none (an empty one is fine)."""
    if sample.completion is None:
        raise InvalidInput("completion is missing")
    return sample.completion


def _clip(text: str, n: int = 80) -> str:
    return repr(text) if len(text) <= n else repr(text[:n]) + f"... ({len(text)} chars)"


@verifier(
    name="exact",
    version="1",
    kind="rule",
    param_docs={"strip": "ignore whitespace around the completion and the reference"},
)
def exact(sample: Sample, *, strip: bool = True) -> Result:
    """1.0 when the completion equals the reference, character for character.

    >>> exact(Sample(completion=" Paris\\n", reference="Paris")).value
    1.0
    >>> exact(Sample(completion="paris", reference="Paris")).value
    0.0
    """
    completion = completion_of(sample)
    reference = sample.reference
    if strip:
        completion, reference = completion.strip(), reference.strip()
    if not reference:
        raise InvalidInput("reference is empty; exact needs the expected answer")
    if completion == reference:
        return Result.ok(1.0, reason="completion equals the reference")
    return Result.ok(0.0, reason=f"completion {_clip(completion)} != reference {_clip(reference)}")


def normalize(
    text: str,
    *,
    case_sensitive: bool = False,
    collapse_whitespace: bool = True,
    strip_punctuation: bool = True,
    unicode_normalize: bool = True,
    strip_articles: bool = False,
) -> str:
    """The text as `normalized_match` compares it. Surrounding whitespace always goes.

    Steps, in order: NFKC, case folding, dropping Unicode punctuation (categories P*,
    so "¿", "—" and "«" go too, but symbols such as "$", "+" and "%" stay), dropping
    English articles, collapsing whitespace runs to one space.

    >>> normalize("  The  Eiffel-Tower! ", strip_articles=True)
    'eiffeltower'
    >>> normalize("Ｆｕｌｌｗｉｄｔｈ，  text")
    'fullwidth text'
    """
    if unicode_normalize:
        text = unicodedata.normalize("NFKC", text)
    if not case_sensitive:
        text = text.casefold()
    if strip_punctuation:
        text = "".join(ch for ch in text if not unicodedata.category(ch).startswith("P"))
    if strip_articles:
        text = _ARTICLES.sub(" ", text)
    if collapse_whitespace:
        text = " ".join(text.split())
    return text.strip()


def references_of(sample: Sample) -> list[tuple[str, str]]:
    """(where, text) for `reference` and each of `metadata.references`, if any."""
    refs = [("reference", sample.reference)] if sample.reference.strip() else []
    extra = sample.metadata.get("references")
    if extra is not None:
        if not isinstance(extra, list) or not all(isinstance(r, str) for r in extra):
            raise InvalidInput(
                f"metadata.references must be a list of strings, got {_clip(repr(extra))}"
            )
        refs += [(f"metadata.references[{i}]", r) for i, r in enumerate(extra)]
    if not refs:
        raise InvalidInput("reference is empty and metadata.references gives no alternative")
    return refs


@verifier(
    name="normalized_match",
    version="1",
    kind="rule",
    param_docs={
        "case_sensitive": "compare case as written (default: case-folded)",
        "collapse_whitespace": "treat every whitespace run as one space",
        "strip_punctuation": "drop Unicode punctuation (categories P*); symbols stay",
        "unicode_normalize": "apply NFKC first (full-width forms, ligatures, ...)",
        "strip_articles": "drop English a/an/the, as SQuAD's evaluation does",
    },
)
def normalized_match(
    sample: Sample,
    *,
    case_sensitive: bool = False,
    collapse_whitespace: bool = True,
    strip_punctuation: bool = True,
    unicode_normalize: bool = True,
    strip_articles: bool = False,
) -> Result:
    """1.0 when the normalised completion equals a normalised acceptable answer.

    The acceptable answers are `reference` and, when given, each string of
    ``metadata.references``. An answer that normalises to nothing ("?!" with the
    default options) is refused as InvalidInput: it would match an empty completion.
    Note that "-" is punctuation, so "-5" matches "5" unless `strip_punctuation` is off.

    >>> normalized_match(Sample(completion="the Beatles.", reference="The Beatles")).value
    1.0
    >>> s = Sample(completion="NYC", reference="New York", metadata={"references": ["nyc"]})
    >>> normalized_match(s).reason
    'matches metadata.references[0]'
    """
    options = dict(
        case_sensitive=case_sensitive,
        collapse_whitespace=collapse_whitespace,
        strip_punctuation=strip_punctuation,
        unicode_normalize=unicode_normalize,
        strip_articles=strip_articles,
    )
    completion = completion_of(sample)
    refs = references_of(sample)
    got = normalize(completion, **options)
    for where, ref in refs:
        want = normalize(ref, **options)
        if not want:
            raise InvalidInput(f"{where} {_clip(ref)} normalises to an empty string")
        if got == want:
            return Result.ok(1.0, reason=f"matches {where}")
    return Result.ok(0.0, reason=f"normalised completion {_clip(got)} matches no reference")


def _compile_flags(flags: list | None) -> int:
    out = 0
    for name in flags or []:
        if not isinstance(name, str) or name.upper() not in _FLAGS:
            raise InvalidParams(
                f"param flags: unknown flag {name!r}; use any of {sorted(set(_FLAGS))}"
            )
        out |= _FLAGS[name.upper()]
    return out


def _pattern_for(sample: Sample, pattern: str | None, flags: int) -> re.Pattern[str]:
    if pattern is not None:
        if not pattern:
            raise InvalidParams("param pattern is empty; it would match anything")
        try:
            return re.compile(pattern, flags)
        except re.error as e:
            raise InvalidParams(f"param pattern is not a valid regex: {e}") from None
    given = sample.metadata.get("pattern")
    if given is None:
        raise InvalidInput("metadata.pattern is missing and the request gives no pattern param")
    if not isinstance(given, str) or not given:
        raise InvalidInput(f"metadata.pattern must be a non-empty string, got {given!r:.80}")
    try:
        return re.compile(given, flags)
    except re.error as e:
        raise InvalidInput(f"metadata.pattern is not a valid regex: {e}") from None


@verifier(
    name="regex",
    version="1",
    kind="rule",
    param_docs={
        "pattern": "the regex; when absent each sample's metadata.pattern is used",
        "mode": "'search' (anywhere in the completion) or 'fullmatch' (all of it)",
        "flags": "re flag names, e.g. ['IGNORECASE', 'MULTILINE', 'DOTALL']",
        "max_chars": "longer completions are refused as INVALID_INPUT, not matched",
    },
)
def regex(
    sample: Sample,
    *,
    pattern: str | None = None,
    mode: str = "search",
    flags: list | None = None,
    max_chars: int = 100_000,
) -> Result:
    """1.0 when the regex matches the completion (searched, or matched in full).

    A completion longer than `max_chars` is refused as INVALID_INPUT rather than
    scored 0.0: it was never tested, and an untested sample is not a failed one. Use
    the `length` verifier to penalise long completions.

    >>> regex(Sample(completion="The answer is 42."), pattern=r"\\b42\\b").value
    1.0
    >>> s = Sample(completion="YES", metadata={"pattern": "yes"})
    >>> regex(s, mode="fullmatch", flags=["IGNORECASE"]).value
    1.0
    """
    if mode not in _MODES:
        raise InvalidParams(f"param mode must be one of {list(_MODES)}, got {mode!r}")
    if max_chars <= 0:
        raise InvalidParams(f"param max_chars must be positive, got {max_chars}")
    compiled = _pattern_for(sample, pattern, _compile_flags(flags))
    completion = completion_of(sample)
    if len(completion) > max_chars:
        raise InvalidInput(
            f"completion is {len(completion)} chars, over max_chars={max_chars}; not matched"
        )
    found = compiled.search(completion) if mode == "search" else compiled.fullmatch(completion)
    if found is None:
        return Result.ok(0.0, reason=f"no {mode} match for {_clip(compiled.pattern)}")
    return Result.ok(1.0, reason=f"{mode} match at [{found.start()}:{found.end()}]")
