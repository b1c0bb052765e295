"""A code sample's metadata: dataset field names, and every malformed field named."""

from __future__ import annotations

import pytest

from referee import InvalidInput
from referee.verifiers.code_spec import Case, parse_spec

HUMANEVAL_ROW = {
    "task_id": "HumanEval/0",
    "prompt": 'def add(a, b):\n    """Adds."""\n',
    "entry_point": "add",
    "test": "METADATA = {}\n\n\ndef check(candidate):\n    assert candidate(1, 2) == 3\n",
}
MBPP_ROW = {
    "task_id": 11,
    "text": "Write a python function to remove first and last occurrence of a given character from the string.",
    "test_setup_code": "",
    "test_list": [
        'assert remove_Occ("hello","l") == "heo"',
        'assert remove_Occ("abcda","a") == "bcd"',
    ],
    "challenge_test_list": [],
}
SANITIZED_MBPP_ROW = {"test_imports": ["import math"], "test_list": ["assert f(1) == 1"]}


def parse(md: dict, time_limit_s: float = 5.0, memory_mb: int = 512):
    return parse_spec(md, time_limit_s, memory_mb)


def test_dataset_rows_map_without_glue() -> None:
    he = parse(HUMANEVAL_ROW)
    assert he.language.name == "python" and he.tests == (HUMANEVAL_ROW["test"],)
    assert he.entry_point == "add" and he.call_check and he.count == 1
    mbpp = parse(MBPP_ROW)
    assert mbpp.tests == tuple(MBPP_ROW["test_list"]) and not mbpp.call_check and mbpp.count == 2
    assert parse(SANITIZED_MBPP_ROW).setup == "import math"
    lcb = parse(
        {
            "language": "C++",
            "cases": [{"input": "1 2", "output": "3"}],
            "time_limit_s": 2,
            "memory_mb": 256,
        }
    )
    assert lcb.language.name == "cpp" and lcb.cases == (Case("1 2", "3"),)
    assert (lcb.time_limit_s, lcb.memory_mb) == (2.0, 256)
    assert parse({"cases": [{"stdout": "hi"}]}).cases == (Case("", "hi"),)


def test_aliases_and_setup() -> None:
    both = parse({"tests": ["assert True"], "test_list": ["assert False"], "test": "assert 0"})
    assert both.tests == ("assert True",)
    assert parse({"tests": [], "test_list": ["assert 1"]}).tests == ("assert 1",)
    spec = parse({"tests": "assert x == 1", "setup": "x = 0", "test_setup_code": "x = 1"})
    assert spec.setup == "x = 0\nx = 1" and spec.tests == ("assert x == 1",) and not spec.call_check
    assert parse({"tests": "def check(candidate):\n    pass\n", "entry_point": "f"}).call_check
    assert not parse(
        {"tests": ["def check(candidate):\n    pass\n"], "entry_point": "f"}
    ).call_check


@pytest.mark.parametrize(
    ("metadata", "message"),
    [
        ({}, "metadata needs tests"),
        ({"entry_point": "f"}, "metadata needs tests"),
        (
            {"tests": "assert 1", "cases": [{"stdin": "", "stdout": ""}]},
            "metadata.tests and metadata.cases are both given",
        ),
        ({"language": "cobol", "tests": "assert 1"}, "metadata.language: unknown language 'cobol'"),
        ({"language": 3, "tests": "assert 1"}, "metadata.language must be a string"),
        (
            {"language": "cpp", "tests": "assert 1"},
            "metadata.tests (assert-style tests) is for python only",
        ),
        ({"tests": 42}, "metadata.tests must be a string or a list of strings, not int"),
        ({"tests": {"a": 1}}, "metadata.tests must be a string or a list of strings, not dict"),
        ({"test_list": ["assert 1", 2]}, "metadata.test_list[1] is int, not a string"),
        ({"tests": []}, "metadata.tests is empty"),
        ({"tests": "   "}, "metadata.tests is empty"),
        ({"test_list": ["assert 1", "assert (1"]}, "metadata.test_list[1] is not valid Python"),
        (
            {"test": "def check(candidate):\n    assert candidate() == 1\n"},
            "metadata.entry_point is missing",
        ),
        (
            {"tests": "assert 1", "entry_point": "not a name"},
            "metadata.entry_point must be a function name",
        ),
        ({"tests": "assert 1", "entry_point": 7}, "metadata.entry_point must be a function name"),
        (
            {
                "tests": "assert 1",
                "setup": "import (",
            },
            "metadata.setup",
        ),
        (
            {"tests": "assert 1", "test_imports": "import math", "setup": 5},
            "metadata.setup must be a string",
        ),
        ({"cases": "1 2 -> 3"}, "metadata.cases must be a non-empty list"),
        ({"cases": []}, "metadata.cases must be a non-empty list"),
        ({"cases": ["1 2"]}, "metadata.cases[0] is str, not a {stdin, stdout} object"),
        ({"cases": [{"stdin": "1"}]}, "metadata.cases[0].stdout is missing"),
        ({"cases": [{"stdin": 1, "stdout": "2"}]}, "metadata.cases[0].stdin is int, not a string"),
        (
            {"cases": [{"stdin": "", "stdout": ["2"]}]},
            "metadata.cases[0].stdout is list, not a string",
        ),
        ({"cases": [{"stdin": "", "stdout": "x" * (5 << 20)}]}, "metadata.cases[0].stdout is over"),
        ({"tests": "assert 1", "time_limit_s": "5"}, "metadata.time_limit_s must be a number"),
        ({"tests": "assert 1", "time_limit_s": True}, "metadata.time_limit_s must be a number"),
        ({"tests": "assert 1", "time_limit_s": 0}, "metadata.time_limit_s must be in (0, 30]"),
        ({"tests": "assert 1", "time_limit_s": 120}, "metadata.time_limit_s must be in (0, 30]"),
        ({"tests": "assert 1", "memory_mb": 1.5e9}, "metadata.memory_mb must be a whole number"),
        ({"tests": "assert 1", "memory_mb": 100.5}, "metadata.memory_mb must be a whole number"),
    ],
)
def test_malformed_metadata_names_the_field(metadata: dict, message: str) -> None:
    with pytest.raises(InvalidInput) as err:
        parse(metadata)
    assert message in str(err.value)


def test_limits_from_params_apply_when_metadata_has_none() -> None:
    spec = parse({"cases": [{"stdin": "", "stdout": ""}]}, time_limit_s=1.5, memory_mb=64)
    assert (spec.time_limit_s, spec.memory_mb) == (1.5, 64)
    assert isinstance(
        parse({"tests": "assert 1", "memory_mb": 256.0}).memory_mb, int
    )  # Struct numbers are floats
