"""ifeval: metadata parsing, refused samples, several instructions, params, real rows."""

from __future__ import annotations

import doctest
import json

import pytest

from referee import InvalidInput, InvalidParams, Sample, Status
from referee.convert import sample_from_json, sample_from_proto, sample_to_proto
from referee.verifier import FunctionVerifier, validate_params
from referee.verifiers import builtin_verifiers, ifeval_text
from referee.verifiers import ifeval as ifeval_module
from referee.verifiers.ifeval import ifeval

# A row of IFEval's input_data.jsonl, as Google publishes it.
IFEVAL_ROW = {
    "key": 1001,
    "prompt": "Write a 300+ word summary of the wikipedia page on Raymond III. Do not use any "
    "commas and highlight at least 3 sections, for example *highlighted section part 1*.",
    "instruction_id_list": [
        "punctuation:no_comma",
        "detectable_format:number_highlighted_sections",
        "length_constraints:number_words",
    ],
    "kwargs": [{}, {"num_highlights": 3}, {"relation": "at least", "num_words": 300}],
}

# The same row as the Hugging Face copy gives it: every kwarg key in every dict, null
# where the instruction does not use it.
_HF_KEYS = [
    "num_highlights", "relation", "num_words", "num_placeholders", "prompt_to_repeat",
    "num_bullets", "section_spliter", "num_sections", "capital_relation",
    "capital_frequency", "keywords", "num_paragraphs", "language", "let_relation",
    "letter", "let_frequency", "end_phrase", "forbidden_words", "keyword", "frequency",
    "num_sentences", "postscript_marker", "first_word", "nth_paragraph",
]  # fmt: skip
HF_ROW = {
    **IFEVAL_ROW,
    "kwargs": [{k: kw.get(k) for k in _HF_KEYS} for kw in IFEVAL_ROW["kwargs"]],
}

GOOD_ANSWER = (
    "*Early life* Raymond was born in 1140. " + "He ruled Tripoli well. " * 80 + "\n"
    "*Regency* He served as regent twice.\n*Legacy* Historians still debate him."
)


def meta(ids, kwargs=None):
    out = {"instruction_id_list": ids}
    if kwargs is not None:
        out["kwargs"] = kwargs
    return out


def score(completion, metadata, **params):
    return ifeval(Sample(completion=completion, metadata=metadata), **params)


def test_docstring_examples_run():
    runner, finder = doctest.DocTestRunner(), doctest.DocTestFinder()
    for module, objs in ((ifeval_module, [ifeval_module, ifeval.fn]), (ifeval_text, [ifeval_text])):
        for obj in objs:
            for test in finder.find(obj, globs=dict(vars(module))):
                runner.run(test)
    results = runner.summarize(verbose=False)
    assert results.failed == 0 and results.attempted >= 10


def test_registered_as_a_builtin():
    [v] = [v for v in builtin_verifiers() if v.name == "ifeval"]
    assert v is ifeval and v.kind == "rule"
    assert [p.name for p in v.params] == ["mode", "level"]


# --- real rows map onto samples without glue -------------------------------------------


@pytest.mark.parametrize("row", [IFEVAL_ROW, HF_ROW], ids=["google", "huggingface"])
def test_an_ifeval_row_is_the_metadata(row):
    sample = Sample(completion=GOOD_ANSWER, prompt=row["prompt"], id=str(row["key"]), metadata=row)
    result = ifeval(sample)
    assert result.status is Status.OK and result.value == 1.0, result.reason
    assert result.components == {
        "punctuation:no_comma": 1.0,
        "detectable_format:number_highlighted_sections": 1.0,
        "length_constraints:number_words": 1.0,
        "instruction_level": 1.0,
        "prompt_level": 1.0,
    }
    short = ifeval(Sample(completion="*a*, *b*, *c*", metadata=row))
    assert short.value == pytest.approx(1 / 3)
    assert "not followed: punctuation:no_comma, length_constraints:number_words" in short.reason


def test_a_jsonl_row_survives_the_wire():
    # protobuf Struct carries 300 as 300.0 and keeps the nulls: both are accepted.
    row = {"id": "1001", "completion": GOOD_ANSWER, "metadata": json.loads(json.dumps(HF_ROW))}
    sample = sample_from_proto(sample_to_proto(sample_from_json(row, "line 1")))
    assert sample.metadata["kwargs"][2]["num_words"] == 300.0
    assert sample.metadata["kwargs"][2]["keywords"] is None
    assert ifeval(sample).value == 1.0


# --- several instructions ---------------------------------------------------------------


def test_fraction_followed_and_prompt_level():
    m = meta(
        [
            "punctuation:no_comma",
            "startend:quotation",
            "keywords:existence",
            "detectable_format:title",
        ],
        [{}, {}, {"keywords": ["moon"]}, {}],
    )
    result = score('"The moon is bright tonight"', m)
    assert result.value == 0.75
    assert result.components["prompt_level"] == 0.0
    assert result.components["instruction_level"] == 0.75
    assert result.components["detectable_format:title"] == 0.0
    assert (
        result.reason
        == "3 of 4 instructions followed (strict); not followed: detectable_format:title"
    )
    assert score('"The moon is bright tonight"', m, level="prompt").value == 0.0
    assert score('"<<Moon>> The moon is bright"', m, level="prompt").value == 1.0


def test_a_repeated_id_gets_numbered_components():
    m = meta(
        [
            "change_case:capital_word_frequency",
            "change_case:capital_word_frequency",
            "startend:quotation",
        ],
        [
            {"capital_relation": "less than", "capital_frequency": 10},
            {"capital_relation": "at least", "capital_frequency": 1},
            {},
        ],
    )
    result = score('"A resume with KEY skills"', m)
    assert result.components == {
        "change_case:capital_word_frequency#1": 1.0,
        "change_case:capital_word_frequency#2": 1.0,
        "startend:quotation": 1.0,
        "instruction_level": 1.0,
        "prompt_level": 1.0,
    }
    assert (
        score('"a resume with key skills"', m).components["change_case:capital_word_frequency#2"]
        == 0.0
    )


def test_loose_is_per_instruction_each_may_use_another_variant():
    m = meta(["startend:quotation", "punctuation:no_comma"], [{}, {}])
    text = 'Sure, here:\n"No commas inside"\nHope it helps, bye'
    assert score(text, m).value == 0.0
    assert score(text, m, mode="loose").value == 1.0


def test_empty_completion_follows_nothing_but_none_is_refused():
    m = meta(["punctuation:no_comma"], [{}])
    assert score("", m).value == 0.0
    with pytest.raises(InvalidInput, match="completion is missing"):
        score(None, m)


def test_missing_kwargs_means_none_for_every_instruction():
    assert score("no commas", meta(["punctuation:no_comma"])).value == 1.0
    with pytest.raises(InvalidInput, match=r"metadata.kwargs\[0\].num_words is missing"):
        score("x", meta(["length_constraints:number_words"]))


def test_none_valued_kwargs_are_ignored():
    m = meta(["detectable_format:title"], [{"num_words": None, "keywords": None}])
    assert score("<<T>>", m).value == 1.0
    m = meta(["punctuation:no_comma"], [None])
    assert score("a b", m).value == 1.0


# --- refused samples --------------------------------------------------------------------


@pytest.mark.parametrize(
    "metadata, message",
    [
        ({}, "metadata.instruction_id_list is missing"),
        (meta("punctuation:no_comma"), "metadata.instruction_id_list must be a list of strings"),
        (meta([1]), "metadata.instruction_id_list must be a list of strings"),
        (meta([]), "metadata.instruction_id_list is empty"),
        (
            meta(["punctuation:no_comma", "keywords:frequencies"], [{}, {}]),
            "metadata.instruction_id_list[1] is unknown instruction id 'keywords:frequencies'; "
            "did you mean 'keywords:frequency'?",
        ),
        (
            meta(["detectable_format:rephrase"]),
            "unknown instruction id 'detectable_format:rephrase'",
        ),
        (meta(["punctuation:no_comma"], {"0": {}}), "metadata.kwargs must be a list of objects"),
        (
            meta(["punctuation:no_comma"], [{}, {}]),
            "metadata.kwargs has 2 entries but metadata.instruction_id_list has 1",
        ),
        (meta(["punctuation:no_comma"], ["x"]), "metadata.kwargs[0] must be an object"),
        (
            meta(["punctuation:no_comma"], [{"num_words": 5}]),
            "metadata.kwargs[0] has 'num_words', which punctuation:no_comma does not take",
        ),
        (
            meta(["length_constraints:number_words"], [{"num_word": 5, "relation": "at least"}]),
            "metadata.kwargs[0] has 'num_word', which length_constraints:number_words does not "
            "take (it takes: num_words, relation)",
        ),
        (
            meta(["length_constraints:number_words"], [{"relation": "at least"}]),
            "metadata.kwargs[0].num_words is missing",
        ),
        (
            meta(
                ["length_constraints:number_words"], [{"num_words": "ten", "relation": "at least"}]
            ),
            "metadata.kwargs[0].num_words must be an integer, got 'ten'",
        ),
        (
            meta(
                ["length_constraints:number_words"], [{"num_words": 10.5, "relation": "at least"}]
            ),
            "metadata.kwargs[0].num_words must be an integer",
        ),
        (
            meta(
                ["length_constraints:number_words"], [{"num_words": True, "relation": "at least"}]
            ),
            "metadata.kwargs[0].num_words must be an integer",
        ),
        (
            meta(["length_constraints:number_words"], [{"num_words": -1, "relation": "at least"}]),
            "metadata.kwargs[0].num_words must be at least 0",
        ),
        (
            meta(["length_constraints:number_words"], [{"num_words": 5, "relation": "at most"}]),
            "metadata.kwargs[0].relation must be 'less than' or 'at least', got 'at most'",
        ),
        (
            meta(["keywords:existence"], [{"keywords": []}]),
            "metadata.kwargs[0].keywords must be a non-empty list",
        ),
        (
            meta(["keywords:existence"], [{"keywords": "moon"}]),
            "metadata.kwargs[0].keywords must be a non-empty list",
        ),
        (
            meta(["keywords:existence"], [{"keywords": ["moon", ""]}]),
            "metadata.kwargs[0].keywords[1] must be a non-empty string",
        ),
        (
            meta(
                ["keywords:letter_frequency"],
                [{"letter": "ab", "let_frequency": 1, "let_relation": "at least"}],
            ),
            "metadata.kwargs[0].letter must be a single character",
        ),
        (
            meta(["language:response_language"], [{"language": "klingon"}]),
            "metadata.kwargs[0].language must be a language code",
        ),
        (
            meta(["startend:end_checker"], [{"end_phrase": "  "}]),
            "metadata.kwargs[0].end_phrase must be a non-empty string",
        ),
        (
            meta(
                ["length_constraints:nth_paragraph_first_word"],
                [{"num_paragraphs": 2, "nth_paragraph": 3, "first_word": "so"}],
            ),
            "metadata.kwargs[0]: nth_paragraph 3 is beyond num_paragraphs 2",
        ),
        (
            meta(
                ["length_constraints:nth_paragraph_first_word"],
                [{"num_paragraphs": 2, "nth_paragraph": 0, "first_word": "so"}],
            ),
            "metadata.kwargs[0].nth_paragraph must be at least 1",
        ),
    ],
)
def test_malformed_metadata_is_invalid_input(metadata, message):
    with pytest.raises(InvalidInput) as e:
        score("Some answer.", metadata)
    assert message in str(e.value)


def test_unknown_id_is_refused_even_when_the_rest_would_pass():
    # A silent pass on an unknown id is the bug this guards against.
    m = meta(["punctuation:no_comma", "made_up:instruction"], [{}, {}])
    with pytest.raises(InvalidInput, match="'made_up:instruction'"):
        score("fine", m)


# --- params -----------------------------------------------------------------------------


def test_params_are_checked_once_and_for_direct_calls():
    assert validate_params(ifeval, {}) == {"mode": "strict", "level": "instruction"}
    assert isinstance(ifeval, FunctionVerifier)
    ifeval.check_params({"mode": "loose", "level": "prompt"})
    with pytest.raises(ValueError, match="param mode must be 'strict' or 'loose'"):
        ifeval.check_params({"mode": "lenient", "level": "instruction"})
    with pytest.raises(ValueError, match="param level must be 'instruction' or 'prompt'"):
        ifeval.check_params({"mode": "strict", "level": "sample"})
    with pytest.raises(InvalidParams):
        score("x", meta(["punctuation:no_comma"]), mode="LOOSE")


def test_language_detection_is_deterministic():
    text = "Das ist ein kurzer Satz. " * 3
    assert {ifeval_text.detect_language(text) for _ in range(20)} == {"de"}
