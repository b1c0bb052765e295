"""choice: letter extraction tiers, ambiguity, option texts, and refused samples."""

from __future__ import annotations

import doctest

import pytest

from referee import InvalidInput, Sample, Status
from referee.verifier import FunctionVerifier, validate_params
from referee.verifiers import choice as choice_module
from referee.verifiers.choice import choice

CAPITALS = ["Rome", "Paris", "Madrid", "Berlin"]


def test_docstring_examples_run():
    runner, finder = doctest.DocTestRunner(), doctest.DocTestFinder()
    objs = [choice_module] + [
        v.fn for v in vars(choice_module).values() if isinstance(v, FunctionVerifier)
    ]
    for obj in objs:
        for test in finder.find(obj, globs=dict(vars(choice_module))):
            runner.run(test)
    results = runner.summarize(verbose=False)
    assert results.failed == 0 and results.attempted >= 3


def score(completion, reference="B", **metadata_and_params):
    params = {
        k: metadata_and_params.pop(k)
        for k in ("letters", "allow_option_text")
        if k in metadata_and_params
    }
    return choice(
        Sample(completion=completion, reference=reference, metadata=metadata_and_params), **params
    )


@pytest.mark.parametrize(
    "completion, how",
    [
        ("So the result is \\boxed{B}.", "boxed"),
        ("$\\boxed{\\text{B}}$", "boxed"),
        ("\\boxed{(B)}", "boxed"),
        ("\\boxed{b}", "boxed"),
        ("\\boxed{B. Paris}", "boxed"),
        ("\\fbox{B}", "boxed"),
        ("The answer is (B).", "answer statement"),
        ("The answer is B", "answer statement"),
        ("Answer: B", "answer statement"),
        ("**Answer:** **B**", "answer statement"),
        ("Final answer: [B]", "answer statement"),
        ("The correct option is B.", "answer statement"),
        ("answer is (b)", "answer statement"),
        ("The answer is option B because it fits.", "answer statement"),
        ("Let me think.\nB", "letter on its own line"),
        ("Thinking...\n(B)\n", "letter on its own line"),
        ("Reasoning.\n> Option B.", "letter on its own line"),
        ("I pick (B) here since it fits", "parenthesised letter"),
        ("It must be B", "last standalone letter"),
    ],
)
def test_extracts_the_letter_in_each_shape(completion, how):
    result = score(completion)
    assert result.status is Status.OK
    assert result.value == 1.0, result.reason
    assert result.components == {"extracted": 1.0, "ambiguous": 0.0, "correct": 1.0}
    assert how in result.reason


@pytest.mark.parametrize(
    "completion, reference, value",
    [
        # Earlier tiers win over later ones, whatever their position.
        ("\\boxed{C}. Some say (B), others B.", "C", 1.0),
        ("The answer is C. (B) is a distractor", "C", 1.0),
        # Within a tier the last occurrence wins: models correct themselves.
        ("The answer is A. Wait, no: the answer is C.", "C", 1.0),
        ("\\boxed{A} ... on reflection \\boxed{C}", "C", 1.0),
        ("(A) fails, (B) fails, so (C).", "C", 1.0),
        # Wrong answers score 0 with extracted=1.
        ("The answer is D.", "C", 0.0),
        ("\\boxed{A}", "C", 0.0),
    ],
)
def test_priority_and_last_occurrence(completion, reference, value):
    result = score(completion, reference)
    assert result.value == value, result.reason
    assert result.components["extracted"] == 1.0


@pytest.mark.parametrize(
    "completion",
    [
        "It is A or B.",
        "The answer is A or B",
        "Answer: A/B",
        "Answer: (A) and (B)",
        "\\boxed{A} or \\boxed{B}",
        "\\boxed{A, B}",
        "\\boxed{A or B}",
        "The answer is B or C",
        "Either A, B, C or D",
        "answer: B & D",
        "B vs. C, hard to say: B vs C",
        "Answer: B and/or C",
    ],
)
def test_hedging_gets_no_credit(completion):
    result = score(completion, "B")
    assert result.status is Status.OK
    assert result.value == 0.0
    assert result.components == {"extracted": 0.0, "ambiguous": 1.0, "correct": 0.0}
    assert "ambiguous" in result.reason


@pytest.mark.parametrize(
    "completion",
    [
        "B or B, definitely B",  # the same letter twice is not a hedge
        "Answer: B, since A is wrong about x",
    ],
)
def test_not_a_hedge(completion):
    assert score(completion, "B").value == 1.0


@pytest.mark.parametrize(
    "completion",
    [
        "",
        "I don't know.",
        "A fine question; I think it needs more data.",  # "A" and "I" as English words
        "The U.S. and e.g. the E.U. are unions",  # abbreviations are not answers
        "Answer: 42",
        "\\boxed{42}",
        "The answer is Z",  # not a valid letter
        "Answer: AB",
    ],
)
def test_no_extraction_scores_zero_with_extracted_zero(completion):
    result = score(completion, "B", letters="ABCD")
    assert result.status is Status.OK
    assert result.value == 0.0
    assert result.components == {"extracted": 0.0, "ambiguous": 0.0, "correct": 0.0}


def test_pronoun_i_is_not_read_as_option_i():
    assert score("Answer: I think it is C.", "C").value == 1.0
    assert score("Answer: I", "I").value == 1.0


@pytest.mark.parametrize("reference", ["B", "b", "(B)", " B. ", "[b]", "B)", "Paris", " paris "])
def test_reference_forms(reference):
    result = score("The answer is (B).", reference, choices=CAPITALS)
    assert result.value == 1.0, result.reason


@pytest.mark.parametrize(
    "completion, value",
    [
        ("Answer: Paris", 1.0),
        ("The answer is paris.", 1.0),
        ("Paris", 1.0),
        ("  PARIS.\n", 1.0),
        ("\\boxed{Paris}", 1.0),
        ("\\boxed{\\text{Madrid}}", 0.0),
        ("Answer: Paris, I think", 0.0),  # the option text must be stated exactly
    ],
)
def test_option_text_instead_of_letter(completion, value):
    result = score(completion, "B", choices=CAPITALS)
    assert result.value == value, result.reason


def test_option_text_can_be_turned_off():
    result = score("Answer: Paris", "B", choices=CAPITALS, allow_option_text=False)
    assert result.components["extracted"] == 0.0


def test_choices_restrict_the_valid_letters():
    assert score("The answer is E", "B", choices=CAPITALS).components["extracted"] == 0.0
    assert score("The answer is E", "E").value == 1.0  # default letters A-J


def test_duplicate_option_texts_are_ambiguous():
    result = score("Answer: Paris", "A", choices=["Paris", "paris", "Rome"])
    assert result.components["ambiguous"] == 1.0
    with pytest.raises(InvalidInput, match="matches several"):
        score("B", "Paris", choices=["Paris", "paris", "Rome"])


def test_defaults():
    assert validate_params(choice, {}) == {"letters": "ABCDEFGHIJ", "allow_option_text": True}


def test_custom_letters():
    assert score("Answer: K", "K", letters="ABCDEFGHIJK").value == 1.0
    assert score("Answer: K", "B").components["extracted"] == 0.0


@pytest.mark.parametrize("letters", ["", "abc", "AAB", "A B", "1234"])
def test_bad_letters_param_is_a_request_error(letters):
    with pytest.raises(ValueError, match="param letters") as info:
        score("B", "B", letters=letters)
    assert not isinstance(info.value, InvalidInput)


@pytest.mark.parametrize(
    "reference, metadata, message",
    [
        ("", {}, "reference is empty"),
        ("   ", {}, "reference is empty"),
        ("K", {}, "reference 'K' is not one of the letters"),
        ("E", {"choices": CAPITALS}, "reference 'E' is not one of the letters 'ABCD'"),
        ("Lisbon", {"choices": CAPITALS}, "nor the text of one of metadata.choices"),
        ("2", {}, "not one of the letters"),
        ("B", {"choices": "Rome, Paris"}, "metadata.choices must be a list of strings"),
        ("B", {"choices": ["Rome", 2.0]}, "metadata.choices must be a list of strings"),
        ("B", {"choices": []}, "metadata.choices has 0 options"),
        ("B", {"choices": [str(i) for i in range(11)]}, "metadata.choices has 11 options"),
        ("B", {"choices": ["Rome", " "]}, r"metadata.choices\[1\] is empty"),
    ],
)
def test_invalid_samples(reference, metadata, message):
    with pytest.raises(InvalidInput, match=message):
        choice(Sample(completion="B", reference=reference, metadata=metadata))


def test_missing_completion_is_invalid():
    with pytest.raises(InvalidInput, match="completion is missing"):
        choice(Sample(completion=None, reference="B"))


def test_unicode_around_the_answer():
    assert score("答案是 (B)。", "B").value == 1.0
    assert score("Réponse : B", "B").value == 1.0
    assert score("Ответ: \\boxed{B}", "B").value == 1.0


@pytest.mark.timeout(30)
@pytest.mark.parametrize(
    "completion",
    [
        "word " * 1_000_000 + "Answer: B",
        "(" * 1_000_000 + "B",
        "\\boxed{" * 200_000 + "B}",
        "answer " * 300_000 + "is B",
        " " * 1_000_000 + "Answer:" + " " * 1_000_000 + "B",
        "A or " * 200_000 + "B",
        "\n" * 1_000_000 + "B",
    ],
)
def test_huge_hostile_inputs_finish(completion):
    result = score(completion, "B")
    assert result.status is Status.OK
