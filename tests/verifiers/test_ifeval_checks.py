"""ifeval: every instruction type, followed and not, in strict and in loose mode.

Each case goes through the verifier with IFEval-shaped metadata, so the kwargs parsing
is exercised along with the check.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Any

import pytest

from referee import Sample, Status
from referee.verifiers.ifeval import ifeval
from referee.verifiers.ifeval_checks import INSTRUCTIONS

DEEP_JSON = "[" * 100_000 + "]" * 100_000  # valid JSON, deeper than Python's stack


@dataclass(frozen=True)
class Case:
    """Responses that follow, and that miss, one instruction with these kwargs (strict)."""

    iid: str
    kwargs: dict[str, Any]
    follows: list[str]
    misses: list[str]


CASES = [
    Case(
        "keywords:existence",
        {"keywords": ["hammock", "sleep"]},
        follows=[
            "Sleeping in a hammock is great.",
            "HAMMOCK naps help you SLEEP.",
            "I got sleepy in the hammocks.",
        ],
        misses=["A hammock is comfy.", "Sleep well tonight.", "Bed rest is good."],
    ),
    Case(  # matched literally, not as a regular expression
        "keywords:existence",
        {"keywords": ["C++"]},
        follows=["I write C++ daily."],
        misses=["I write C daily."],
    ),
    Case(
        "keywords:frequency",
        {"keyword": "war", "frequency": 3, "relation": "at least"},
        follows=["War, war, and more war.", "WAR is war; war never ends."],
        misses=["War is bad.", "There was war and war."],
    ),
    Case(
        "keywords:frequency",
        {"keyword": "peace", "frequency": 2, "relation": "less than"},
        follows=["Peace at last.", "No calm here."],
        misses=["Peace and PEACE."],
    ),
    Case(
        "keywords:forbidden_words",
        {"forbidden_words": ["rock", "roll"]},
        follows=[
            "Music with a steady beat.",
            "The rocky road was long.",
            "Rolling stones gather no moss.",
        ],
        misses=["Let's rock tonight.", "ROCK and ROLL!", "A rock-solid plan."],
    ),
    Case(
        "keywords:letter_frequency",
        {"letter": "t", "let_frequency": 2, "let_relation": "less than"},
        follows=["Hello world.", "A cat."],
        misses=["That is it.", "TT"],
    ),
    Case(
        "keywords:letter_frequency",
        {"letter": "!", "let_frequency": 3, "let_relation": "at least"},
        follows=["Wow!!! Great!"],
        misses=["Wow!"],
    ),
    Case(
        "language:response_language",
        {"language": "fr"},
        follows=[
            "Le chat dort sur le canapé depuis ce matin.",
            "Nous allons à la plage demain avec nos amis.",
        ],
        misses=[
            "The cat has been sleeping on the sofa since this morning.",
            "El gato duerme en el sofá desde esta mañana.",
            "12345 !!! 678",  # nothing to detect: in no language (the reference passes it)
        ],
    ),
    Case(
        "language:response_language",
        {"language": "kn"},
        follows=["ಹ್ಯಾಂಬರ್ಗರ್\u200cಗಳು ಸ್ಯಾಂಡ್\u200cವಿಚ್\u200cಗಳು ಅಲ್ಲ."],
        misses=[],
    ),
    Case(
        "language:response_language",
        {"language": "zh"},
        follows=["今天天气很好。我们去公园散步吧。"],
        misses=[],
    ),
    Case(
        "length_constraints:number_sentences",
        {"num_sentences": 3, "relation": "less than"},
        follows=[
            "One sentence only.",
            "Dr. Smith came at 5 p.m. today. He slept.",
            '"Why?" she asked. Nobody knew.',
        ],
        misses=["One. Two. Three.", "Is it? Yes. No! Maybe."],
    ),
    Case(
        "length_constraints:number_sentences",
        {"num_sentences": 2, "relation": "at least"},
        follows=["First. Second."],
        misses=["Just one here"],
    ),
    Case(
        "length_constraints:number_paragraphs",
        {"num_paragraphs": 3},
        follows=[
            "A\n***\nB\n***\nC",
            "***\nFirst.\n***\nSecond.\n***\nThird.\n***",
            "One *** Two *** Three",
        ],
        misses=["A\n***\nB", "A\n***\n\n***\nB\n***\nC", "A\n\nB\n\nC"],
    ),
    Case(
        "length_constraints:number_words",
        {"num_words": 5, "relation": "less than"},
        follows=["Just four words here.", "It's fine"],
        misses=["This one has five words.", "Don't do that now"],
    ),
    Case(
        "length_constraints:number_words",
        {"num_words": 3, "relation": "at least"},
        follows=["a b c"],
        misses=["a -- b"],
    ),
    Case(
        "length_constraints:nth_paragraph_first_word",
        {"num_paragraphs": 2, "nth_paragraph": 2, "first_word": "however"},
        follows=["Cats are great.\n\nHowever, dogs are loyal.", 'Intro.\n\n"However" is a word.'],
        misses=[
            "Cats are great.\n\nDogs are loyal.",
            "A.\n\nHowever, b.\n\nC.",
            "A.\n\nHoweverish b.",
        ],
    ),
    Case(  # the nth non-empty paragraph, whatever blank pieces come before it
        "length_constraints:nth_paragraph_first_word",
        {"num_paragraphs": 2, "nth_paragraph": 1, "first_word": "Cats"},
        follows=["\n\ncats rule.\n\n\n\nDogs drool."],
        misses=[],
    ),
    Case(
        "detectable_content:postscript",
        {"postscript_marker": "P.S."},
        follows=["Main text.\n\nP.S. Call me.", "Body.\np.s. lowercase works"],
        misses=["Main text only.", "Body.\nPS: no dots"],
    ),
    Case(
        "detectable_content:postscript",
        {"postscript_marker": "P.P.S"},
        follows=["Body.\nP. P. S spaced out"],
        misses=["Body.\nP.S. only one"],
    ),
    Case(
        "detectable_content:number_placeholders",
        {"num_placeholders": 2},
        follows=["Dear [name], at [address].", "[a] [b] [c]", "Call [phone] [[or]] email."],
        misses=["Dear [name],", "No placeholders.", "Broken [name\n] and [x"],
    ),
    Case(
        "detectable_format:number_bullet_lists",
        {"num_bullets": 3},
        follows=["* a\n* b\n* c", "- a\n- b\n- c", "Intro:\n* a\n  - nested\n* c\n**Bold** end"],
        misses=["* a\n* b", "* a\n* b\n* c\n* d", "1. a\n2. b\n3. c"],
    ),
    Case(
        "detectable_format:constrained_response",
        {},
        follows=[
            "My answer is yes.",
            "After thinking: My answer is maybe.",
            "My answer is no. Because reasons.",
        ],
        misses=["Yes.", "my answer is no.", "My answer is probably yes."],
    ),
    Case(
        "detectable_format:number_highlighted_sections",
        {"num_highlights": 2},
        follows=["*one* and *two*", "**bold** then *italic*", "*a*\n*b*\n*c*"],
        misses=["*one* only", "** ** and * *", "*split\nacross* lines"],
    ),
    Case(
        "detectable_format:multiple_sections",
        {"section_spliter": "SECTION", "num_sections": 2},
        follows=["SECTION 1\nA\nSECTION 2\nB", "SECTION 1 a SECTION 2 b SECTION 3 c"],
        misses=["Section 1\nA\nSection 2\nB", "SECTION 1\nonly one", "SECTION A\nSECTION B"],
    ),
    Case(
        "detectable_format:multiple_sections",
        {"section_spliter": "Section", "num_sections": 2},
        follows=["Section1\nx\nSection2\ny"],
        misses=[],
    ),
    Case(
        "detectable_format:json_format",
        {},
        follows=[
            '{"a": 1}',
            '```json\n{"a": [1, 2]}\n```',
            '```JSON\n{"x": null}\n```',
            "  [1, 2, 3]  ",
        ],
        misses=[
            'Here: {"a": 1}',
            '{"a": 1,}',
            '```json\n{"a": 1}\n```\nHope this helps!',
            DEEP_JSON,
        ],
    ),
    Case(
        "detectable_format:title",
        {},
        follows=["<<Ode to Joy>>\nText.", "Text then <<title>> later", "<<<<< A >>"],
        misses=["<<>>", "<<\nsplit>>", "<< >> and <Single>"],
    ),
    Case(
        "combination:repeat_prompt",
        {"prompt_to_repeat": "Write a haiku about rain."},
        follows=["Write a haiku about rain.\nDrops fall.", "write a haiku about rain. Soft rain."],
        misses=[
            "Sure! Write a haiku about rain.",
            "Write a haiku about snow.",
            "Rain falls softly.",
        ],
    ),
    Case(
        "combination:repeat_prompt",
        {"prompt_to_repeat": "Write a haiku about rain.  "},
        follows=["\n  Write a haiku about rain.Rain."],
        misses=[],
    ),
    Case(
        "combination:two_responses",
        {},
        follows=["Answer A\n******\nAnswer B", "******\nA\n******\nB\n******", "God******Allah"],
        misses=[
            "Only one",
            "Same\n******\n Same ",
            "A\n******\n\n******\nB",
            "A\n******\nB\n******\nC",
        ],
    ),
    Case(
        "startend:end_checker",
        {"end_phrase": "Any other questions?"},
        follows=[
            "Here it is. Any other questions?",
            "Done. any other questions?\n",
            '"Text. Any other questions?"',
        ],
        misses=["Any other questions? Thanks.", "Any other questions", "Text."],
    ),
    Case(
        "startend:quotation",
        {},
        follows=['"Hello"', '  "Multi\nline"  \n', '"a" and "b"'],
        misses=["Hello", '"Hello', '"', "'single'"],
    ),
    Case(
        "change_case:capital_word_frequency",
        {"capital_frequency": 3, "capital_relation": "at least"},
        follows=["NASA and the ESA met the UN.", "WELL-KNOWN U.S. COVID-19 facts"],
        misses=["Nasa and Esa.", "2024 and 1999 and 42"],
    ),
    Case(
        "change_case:capital_word_frequency",
        {"capital_frequency": 2, "capital_relation": "less than"},
        follows=["Only ONE here"],
        misses=["I DON'T know"],
    ),
    Case(
        "change_case:english_capital",
        {},
        follows=[
            "THIS IS AN ENGLISH SENTENCE ABOUT THE WEATHER TODAY.",
            "I WILL GO TO THE STORE TOMORROW TO BUY SOME BREAD AND MILK.",
            "THE QUICK BROWN FOX JUMPS OVER THE LAZY DOG. IT IS A SUNNY DAY.",
        ],
        misses=["This is mixed case.", "all lowercase here", "12345"],
    ),
    Case(
        "change_case:english_lowercase",
        {},
        follows=[
            "this is an english sentence about the weather today.",
            "i will go to the store tomorrow to buy some bread.",
            "hello there, how are you doing this fine morning?",
        ],
        misses=[
            "This has a capital.",
            "je pense que c'est une excellente idée pour tout le monde.",
            "12345",
        ],
    ),
    Case(
        "punctuation:no_comma",
        {},
        follows=[
            "No commas here.",
            "Semicolons; colons: fine.",
            "A fullwidth \uff0c is not an ASCII comma",
        ],
        misses=["Yes, this.", "1,000", "a,b"],
    ),
]
STRICT = [(c.iid, c.kwargs, text, True) for c in CASES for text in c.follows] + [
    (c.iid, c.kwargs, text, False) for c in CASES for text in c.misses
]

# (instruction id, kwargs, completion): strict fails, loose (a first or last line
# removed, markdown "*" deleted) passes.
LOOSE_RESCUES = [
    ("keywords:existence", {"keywords": ["keyword"]}, "A **key**word split by bold."),
    (
        "keywords:frequency",
        {"keyword": "war", "frequency": 2, "relation": "less than"},
        "Sure, a poem about war:\nWar never changes.",
    ),
    (
        "keywords:forbidden_words",
        {"forbidden_words": ["rock"]},
        "Here it is, without the word rock:\nStones and pebbles.",
    ),
    (
        "keywords:letter_frequency",
        {"letter": "z", "let_frequency": 1, "let_relation": "less than"},
        "Zero z below:\nHello there.",
    ),
    (
        "language:response_language",
        {"language": "fr"},
        "Sure! Here is my detailed answer to your question, written in the French language exactly as you have requested, with nothing else added to it at all:\nLe chat dort sur le canapé depuis ce matin.",
    ),
    (
        "length_constraints:number_sentences",
        {"num_sentences": 3, "relation": "less than"},
        "Sure. Here you go.\nOne. Two.",
    ),
    (
        "length_constraints:number_paragraphs",
        {"num_paragraphs": 2},
        "Here are 2 paragraphs:\n***\nA\n***\nB",
    ),
    (
        "length_constraints:number_words",
        {"num_words": 4, "relation": "less than"},
        "Here is a short answer:\nJust three words",
    ),
    (
        "length_constraints:nth_paragraph_first_word",
        {"num_paragraphs": 2, "nth_paragraph": 2, "first_word": "however"},
        "Cats.\n\n**However**, dogs.",
    ),
    (
        "detectable_content:postscript",
        {"postscript_marker": "Note:"},
        "Body.\n**Note**: bring snacks.",
    ),
    (
        "detectable_format:number_bullet_lists",
        {"num_bullets": 3},
        "* a\n* b\n* c\n--- Hope this helps!",
    ),
    ("detectable_format:constrained_response", {}, "My answer is **yes**."),
    (
        "detectable_format:multiple_sections",
        {"section_spliter": "SECTION", "num_sections": 2},
        "**SECTION** 1\nA\n**SECTION** 2\nB",
    ),
    ("detectable_format:json_format", {}, 'Here is the JSON:\n```json\n{"a": 1}\n```'),
    ("detectable_format:title", {}, "<*<Ode to Joy>*>\nText."),
    (
        "combination:repeat_prompt",
        {"prompt_to_repeat": "Write a haiku."},
        "Sure, repeating first:\nWrite a haiku. Rain.",
    ),
    ("combination:two_responses", {}, "A\n******\nB\n******\nThanks"),
    (
        "startend:end_checker",
        {"end_phrase": "Any other questions?"},
        "Text. Any other questions?\n(Word count: 4)",
    ),
    ("startend:quotation", {}, 'Here it is:\n"Wrapped text."'),
    (
        "change_case:capital_word_frequency",
        {"capital_frequency": 2, "capital_relation": "less than"},
        "NOTE: ALL CAPS BELOW\nonly ONE here",
    ),
    (
        "change_case:english_capital",
        {},
        "Sure, here it is:\nI WILL GO TO THE STORE TOMORROW TO BUY SOME BREAD AND MILK.",
    ),
    (
        "change_case:english_lowercase",
        {},
        "Here is my answer:\ni will go to the store tomorrow to buy some bread.",
    ),
    ("punctuation:no_comma", {}, "Sure, here you go:\nNo commas in this part."),
]

# Loose mode can only remove text, so it cannot create placeholders or highlights: for
# these, loose agrees with strict. (instruction id, kwargs, completion, followed)
LOOSE_AGREES = [
    (
        "detectable_content:number_placeholders",
        {"num_placeholders": 2},
        "Sure:\nDear [name] at [place].",
        True,
    ),
    (
        "detectable_content:number_placeholders",
        {"num_placeholders": 2},
        "Dear [name]\n*[place*",
        False,
    ),
    (
        "detectable_format:number_highlighted_sections",
        {"num_highlights": 2},
        "Intro\n*one* and **two**\nEnd",
        True,
    ),
    (
        "detectable_format:number_highlighted_sections",
        {"num_highlights": 2},
        "*one\n* two *",
        False,
    ),
]


def _score(iid, kwargs, completion, **params):
    meta = {"instruction_id_list": [iid], "kwargs": [kwargs]}
    return ifeval(Sample(completion=completion, metadata=meta), **params)


def _case_id(case):
    return f"{case[0]}-{case[2][:30]!r}"


@pytest.mark.parametrize("iid, kwargs, completion, followed", STRICT, ids=map(_case_id, STRICT))
def test_strict(iid, kwargs, completion, followed):
    result = _score(iid, kwargs, completion)
    assert result.status is Status.OK, result.reason
    assert result.value == float(followed), result.reason
    assert result.components[iid] == float(followed)


@pytest.mark.parametrize("iid, kwargs, completion", LOOSE_RESCUES, ids=map(_case_id, LOOSE_RESCUES))
def test_loose_rescues_what_strict_fails(iid, kwargs, completion):
    assert _score(iid, kwargs, completion).value == 0.0
    assert _score(iid, kwargs, completion, mode="loose").value == 1.0


@pytest.mark.parametrize(
    "iid, kwargs, completion, followed", LOOSE_AGREES, ids=map(_case_id, LOOSE_AGREES)
)
def test_loose_agrees_where_removing_text_cannot_help(iid, kwargs, completion, followed):
    assert _score(iid, kwargs, completion).value == float(followed)
    assert _score(iid, kwargs, completion, mode="loose").value == float(followed)


@pytest.mark.parametrize("iid, kwargs, completion, followed", STRICT, ids=map(_case_id, STRICT))
def test_loose_passes_whatever_strict_passes(iid, kwargs, completion, followed):
    if followed:
        assert _score(iid, kwargs, completion, mode="loose").value == 1.0


def test_every_instruction_has_three_passing_and_three_failing_cases():
    passing = Counter(iid for iid, _, _, ok in STRICT if ok)
    failing = Counter(iid for iid, _, _, ok in STRICT if not ok)
    assert set(INSTRUCTIONS) == set(passing) == set(failing)
    assert len(INSTRUCTIONS) == 25
    assert min(passing.values()) >= 3 and min(failing.values()) >= 3
    loose = {c[0] for c in LOOSE_RESCUES} | {c[0] for c in LOOSE_AGREES}
    assert loose == set(INSTRUCTIONS)


@pytest.mark.parametrize("iid", sorted(INSTRUCTIONS))
def test_an_empty_or_blank_response_follows_nothing(iid):
    kwargs = next(kw for i, kw, _, _ in STRICT if i == iid)
    for blank in ("", "  \n "):
        for mode in ("strict", "loose"):
            assert _score(iid, kwargs, blank, mode=mode).value == 0.0
