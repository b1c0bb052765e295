"""ifeval_text: the offline sentence splitter, word and capital-word counts, loose
variants, and linear time on adversarial text."""

from __future__ import annotations

import time

import pytest

from referee.verifiers import ifeval_checks
from referee.verifiers.ifeval_text import (
    capital_words,
    detect_language,
    loose_variants,
    split_sentences,
    words,
)


@pytest.mark.parametrize(
    "text, sentences",
    [
        (
            "Hello world. This is a test! Is it? Yes.",
            ["Hello world.", "This is a test!", "Is it?", "Yes."],
        ),
        ("No punctuation at all", ["No punctuation at all"]),
        ("", []),
        ("... !!! ???", []),
        (
            "Mr. and Mrs. Smith went home. They slept.",
            ["Mr. and Mrs. Smith went home.", "They slept."],
        ),
        ("J. R. R. Tolkien wrote it. Done.", ["J. R. R. Tolkien wrote it.", "Done."]),
        ("See e.g. the docs. Or not.", ["See e.g. the docs.", "Or not."]),
        ("Apples, pears, etc. and more.", ["Apples, pears, etc. and more."]),
        ("Apples, pears, etc. Then more.", ["Apples, pears, etc.", "Then more."]),
        ("Prices rose 3.5% in 2020. Then fell.", ["Prices rose 3.5% in 2020.", "Then fell."]),
        ("1. First item\n2. Second item.", ["1. First item\n2. Second item."]),
        ("Wait... what? OK.", ["Wait... what?", "OK."]),
        ("Wait\u2026 What? OK.", ["Wait\u2026", "What?", "OK."]),
        ('"Why?" she asked. "Stop!" He left.', ['"Why?" she asked.', '"Stop!"', "He left."]),
        ("He said (quietly.) Then left.", ["He said (quietly.)", "Then left."]),
        ("**Done.** Next one.", ["**Done.**", "Next one."]),
        ("Visit example.com. Thanks.", ["Visit example.com.", "Thanks."]),
        ("Line one\nLine two. Line three.", ["Line one\nLine two.", "Line three."]),
    ],
)
def test_split_sentences(text, sentences):
    assert split_sentences(text) == sentences


def test_words_are_runs_of_word_characters():
    assert words("Don't stop -- it's 9:30!") == ["Don", "t", "stop", "it", "s", "9", "30"]
    assert words("naïve café") == ["naïve", "café"]


@pytest.mark.parametrize(
    "text, caps",
    [
        ("I LOVE the U.S. and COVID-19", ["I", "LOVE", "U.S", "COVID-19"]),
        ("DON'T STOP", ["DON", "T", "STOP"]),
        ("WELL-KNOWN facts", ["WELL-KNOWN"]),
        ("2024 A1 x", ["A1"]),
        ("ÉCOLE école", ["ÉCOLE"]),
        ("Mixed Case words", []),
    ],
)
def test_capital_words(text, caps):
    assert capital_words(text) == caps


def test_loose_variants_are_ifevals_eight_without_duplicates():
    text = "Sure!\n**Body**\nBye"
    assert loose_variants(text) == [
        text,
        "Sure!\nBody\nBye",
        "**Body**\nBye",
        "Sure!\n**Body**",
        "**Body**",
        "Body\nBye",
        "Sure!\nBody",
        "Body",
    ]
    assert loose_variants("one line") == ["one line", ""]


def test_language_detection_needs_no_letters_to_be_none():
    assert detect_language("") is None
    assert detect_language("42 + 17 = 59 !!!") is None
    assert detect_language("Dies ist ein Satz auf Deutsch, ganz ohne Zweifel.") == "de"


ADVERSARIAL = [
    "." * 200_000 + "x",
    "1. " * 70_000,
    "a" * 200_000 + ".",
    "[" * 200_000,
    "<<" * 100_000,
    "*" * 200_000,
    "Dr. " * 50_000,
]


@pytest.mark.parametrize("text", ADVERSARIAL, ids=lambda t: repr(t[:6]))
def test_adversarial_text_is_checked_in_linear_time(text):
    start = time.perf_counter()
    split_sentences(text)
    capital_words(text)
    ifeval_checks.number_placeholders(text, num_placeholders=1)
    ifeval_checks.title(text)
    ifeval_checks.number_highlighted_sections(text, num_highlights=1)
    ifeval_checks.number_bullet_lists(text, num_bullets=1)
    ifeval_checks.number_paragraphs(text, num_paragraphs=1)
    ifeval_checks.json_format(text)
    assert time.perf_counter() - start < 2.0
