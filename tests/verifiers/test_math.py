"""The math verifier: a table of answers it must grade right, then its contract.

Every row is (gold, completion, expected). Rows marked "math-verify:" record a choice
made by math-verify that we keep on purpose; the module docstring of
`referee.verifiers.math_answer` says what the equivalence covers.
"""

from __future__ import annotations

import doctest
import signal
import threading
import time

import pytest

from referee.convert import sample_to_proto
from referee.rewardsvc.pool import WorkerPool
from referee.types import InvalidInput, InvalidParams, Sample, Status
from referee.verifier import validate_params
from referee.verifiers import math_answer
from referee.verifiers.math_answer import math_reward

PMATRIX = r"\begin{pmatrix} 1 & 2 \\ 3 & 4 \end{pmatrix}"
BMATRIX = r"\begin{bmatrix} 1 & 2 \\ 3 & 4 \end{bmatrix}"
PMATRIX_OFF = r"\begin{pmatrix} 1 & 2 \\ 3 & 5 \end{pmatrix}"

CASES: list[tuple[str, str, bool]] = [
    # --- boxed: the last \boxed / \fbox wins, braces may nest
    ("42", r"Thus the answer is \boxed{42}.", True),
    ("42", r"\boxed{41} is wrong; the final result is \boxed{42}", True),
    ("41", r"\boxed{41} is wrong; the final result is \boxed{42}", False),
    (r"\frac{1}{2}", r"$\boxed{\frac{1}{2}}$", True),
    (r"\frac{\sqrt{3}}{2}", r"\boxed{\dfrac{\sqrt{3}}{2}}", True),
    ("5", r"so \fbox{5}", True),
    ("5", r"\boxed {5}", True),
    (r"\{1,2\}", r"\boxed{\{2, 1\}}", True),
    ("42", r"\boxed{\boxed{42}}", True),
    ("12", r"The answer is \boxed{12", False),  # cut off mid-box: no answer
    ("12", r"\boxed{12} wait, let me recompute: \boxed{13", False),  # not the earlier box
    ("x^2", r"\boxed{x^{2}}", True),
    ("3", r"$x = \boxed{3}$", True),
    ("3", r"The answer is \boxed{3}. As a check, 17 - 14 = 3 and 17", True),
    (r"\boxed{42}", "The answer is 42", True),
    ("7", r"\boxed{}", False),
    ("10", r"\boxed{\text{10}}", True),
    ("10", r"\boxed{10\text{ cm}}", True),
    ("6", r"\boxed{\frac{12}{2}}", True),
    ("7", r"\boxed{\frac{12}{2}}", False),
    # --- "answer is X" / "Answer: X" phrases, the last one
    ("42", "The answer is 42.", True),
    ("42", "Answer: 42", True),
    ("42", "Final answer: 42", True),
    ("42", "**Final Answer:** 42", True),
    ("42", "The final answer is $42$. I hope it is correct.", True),
    ("42", "At first the answer is 40. After checking, the answer is 42.", True),
    ("40", "At first the answer is 40. After checking, the answer is 42.", False),
    ("x^2+1", "Answer: x^2+1", True),
    ("x^2+1", "Answer: x^2 + 2", False),
    (r"\frac{\sqrt{3}}{2}", r"The answer is \frac{\sqrt{3}}{2}.", True),
    ("12", "The answer is 12, which is even.", True),
    ("8", "The answer is 12, which is 8 more than 4.", False),
    ("5", "The answer is: $5$ because $2+3=5$", True),
    ("3", "The answer is $x = 3$ (since $y=4$)", True),
    ("4", "The answer is $x = 3$ (since $y=4$)", False),
    ("7", "Answer:\n7", True),
    ("5", "The answer is five.", False),  # prose is no answer
    ("(0,1]", "**Final Answer:** (0, 1]", True),
    ("42", "The answer is: **42**", True),
    ("42", "**Answer:** **42**", True),
    ("24", "**Answer:** **42**", False),
    ("42", "Natalia sold 48/2 = 24 clips in May.\n#### 42", True),  # GSM8K style
    # --- LaTeX math, the last one (before any bare number)
    ("5", "We find that $x = 5$.", True),
    ("5", r"Therefore \(x=5\).", True),
    ("5", r"Therefore \[ x = 5 \]", True),
    ("5", "$$\\frac{10}{2}$$", True),
    ("6", "First $3$ then $6$", True),
    ("3", "First $3$ then $6$", False),
    ("6", "We get $6$ apples and 7 oranges", True),
    ("7", "We get $6$ apples and 7 oranges", False),
    # --- the last number
    ("18", "She sells 3 eggs for 6 dollars each, so she makes 18", True),
    ("18", "She sells 3 eggs for 6 dollars each, so she makes 18 dollars.", True),
    ("17", "She sells 3 eggs for 6 dollars each, so she makes 18", False),
    ("72", "48 + 24 = 72", True),
    ("4", "There are 4", True),
    ("1000", "She earns 1,000 dollars", True),
    ("1234567", "Total: 1,234,567", True),
    ("-3", "The temperature drops to -3", True),
    ("3", "The temperature drops to -3", False),
    ("0.5", "The probability is 0.5", True),
    # --- no answer at all
    ("2", "I have no idea", False),
    ("2", "", False),
    ("2", "   \n  ", False),
    ("2", "The answer is unknown.", False),
    # --- fractions
    (r"\frac{1}{2}", "1/2", True),
    (r"\frac{1}{2}", r"$\dfrac{1}{2}$", True),
    (r"\frac{1}{2}", r"$\tfrac12$", True),
    (r"\frac{1}{2}", "0.5", True),
    (r"\frac{1}{2}", r"$\frac{2}{4}$", True),
    (r"\frac{1}{2}", r"$\frac{1}{3}$", False),
    (r"\frac{1}{3}", "0.333", False),  # float_rounding=6: 0.333 != 0.333333
    (r"\frac{1}{3}", "0.333333", True),
    (r"\frac{1}{3}", "0.3333333333", True),
    (r"\frac{2}{3}", "0.666667", True),
    (r"\frac{2}{3}", "0.666666", False),  # rounds to 0.666666, 2/3 to 0.666667
    (r"-\frac{1}{2}", "-1/2", True),
    (r"-\frac{1}{2}", "1/2", False),
    ("3/4", r"\boxed{\frac34}", True),
    (r"\frac{7}{2}", "3.5", True),
    (r"\frac{7}{2}", "3.4", False),
    # --- decimals
    ("0.25", r"$\frac{1}{4}$", True),
    ("2.50", "2.5", True),
    ("3.14", "3.14159", False),
    ("1.0", "1", True),
    ("0.1", "0.10000001", True),
    ("0.1", "0.100001", False),
    (".5", "0.5", True),
    # --- percentages: 50% equals 50 and 0.5 (math-verify's choice); 50 != 0.5
    (r"50\%", "50%", True),
    (r"50\%", "0.5", True),
    (r"50\%", "50", True),
    ("50", r"$50\%$", True),
    ("0.5", "50%", True),
    ("50", "0.5", False),
    (r"50\%", "5%", False),
    (r"25\%", "25 percent", True),
    (r"12.5\%", "0.125", True),
    ("50%", "60%", False),
    # --- units, currency, degrees are stripped
    ("5", "5 cm", True),
    ("5", r"\boxed{5 \text{ cm}}", True),
    ("5", r"\boxed{5\,\mathrm{cm}}", True),
    ("5", "The total is $5.", True),
    ("5", r"\boxed{\$5}", True),
    ("30", r"\boxed{30^\circ}", True),
    ("30", r"$30^{\circ}$", True),
    (r"30^\circ", "The angle is 30°", True),
    ("12", "The answer is 12 inches.", True),
    ("12", "Answer: 12 feet", True),
    ("6", "Answer: 5 cm", False),
    ("5", r"\boxed{5\text{ dollars}}", True),
    ("25", r"\boxed{25 \text{ m}^2}", True),
    (r"\frac{\pi}{6}", r"\boxed{30^\circ}", False),  # degrees are not converted
    # --- sets: order does not matter, members do
    (r"\{1,2\}", r"\boxed{\{2,1\}}", True),
    (r"\{1,2\}", r"\boxed{\{1,2,3\}}", False),
    (r"\{1,2\}", r"\boxed{\{1,3\}}", False),
    (r"\{-1, 1\}", r"$\boxed{\pm 1}$", True),
    ("1, 2", "The solutions are $x=1$ and $x=2$", True),
    ("1, 2", r"\boxed{2, 1}", True),
    ("1, 2, 3", r"\boxed{1, 2}", False),
    (r"\emptyset", r"\boxed{\emptyset}", True),
    (r"\emptyset", r"\boxed{\{0\}}", False),
    ("2, 3", "Answer: 2 and 3", True),
    ("2, 3", "Answer: 2 and 4", False),
    # --- intervals: open and closed ends matter
    ("(0,1]", r"\boxed{(0,1]}", True),
    ("(0,1]", r"\boxed{(0,1)}", False),
    ("(0,1]", r"\boxed{[0,1]}", False),
    ("[0,1)", r"\boxed{[0, 1)}", True),
    ("(0,1]", r"\boxed{0 < x \le 1}", True),
    ("(0,1]", r"\boxed{0 \le x \le 1}", False),
    (r"(-\infty, 2)", r"\boxed{(-\infty, 2)}", True),
    (r"(-\infty, 2)", r"\boxed{x < 2}", True),
    (r"(-\infty, 2]", r"\boxed{x < 2}", False),
    (r"(-\infty, 0) \cup (1, \infty)", r"\boxed{(-\infty,0)\cup(1,\infty)}", True),
    (r"(-\infty, 0) \cup (1, \infty)", r"\boxed{(-\infty,0]\cup(1,\infty)}", False),
    ("[2, 5]", r"\boxed{\left[2, 5\right]}", True),
    ("(1,2)", r"\boxed{\left( 1, 2 \right)}", True),
    # --- tuples: order matters
    ("(1, 2)", r"\boxed{(1,2)}", True),
    ("(1, 2)", r"\boxed{(2,1)}", False),
    ("(1, 2, 3)", r"\boxed{(1, 2, 3)}", True),
    ("(1, 2, 3)", r"\boxed{(3, 2, 1)}", False),
    ("(3, -4)", "The point is $(3, -4)$.", True),
    ("(3, -4)", "The point is $(3, 4)$.", False),
    # --- symbolic equality
    ("x^2+2x+1", r"\boxed{(x+1)^2}", True),
    ("x^2+2x+1", r"\boxed{(x-1)^2}", False),
    ("2x+2", r"\boxed{2(x+1)}", True),
    ("x+1", r"\boxed{y+1}", False),  # strict: variable names matter
    (r"\frac{x}{2}", r"\boxed{0.5x}", True),
    ("1", r"\boxed{\sin^2 x + \cos^2 x}", True),
    ("a^2 - b^2", r"\boxed{(a-b)(a+b)}", True),
    ("a^2 - b^2", r"\boxed{(a-b)^2}", False),
    (r"\frac{1}{x}", r"\boxed{x^{-1}}", True),
    ("3x", r"\boxed{3y}", False),
    (r"\ln 8", r"\boxed{3\ln 2}", True),
    ("3+4i", r"\boxed{4i+3}", True),
    ("3+4i", r"\boxed{3-4i}", False),
    # --- square roots
    (r"2\sqrt{2}", r"\boxed{\sqrt{8}}", True),
    (r"\sqrt{8}", r"\boxed{2\sqrt2}", True),
    (r"\sqrt{2}", r"\boxed{1.41421356}", True),
    (r"\sqrt{2}", r"\boxed{1.414}", False),
    (r"\sqrt{2}", r"\boxed{2}", False),
    (r"\frac{\sqrt{2}}{2}", r"\boxed{\frac{1}{\sqrt{2}}}", True),
    (r"3\sqrt{3}", r"\boxed{\sqrt{27}}", True),
    (r"3\sqrt{3}", r"\boxed{\sqrt{18}}", False),
    (r"2\sqrt{2}", "Answer: 2√2", True),
    (r"2\sqrt{2}", "Answer: √8", True),
    # --- pi, e, infinity
    (r"\pi", r"\boxed{\pi}", True),
    (r"2\pi", r"\boxed{6.283185307}", True),
    (r"\pi", r"\boxed{3.14}", False),
    (r"\frac{\pi}{2}", r"\boxed{\pi/2}", True),
    (r"\frac{\pi}{2}", "Answer: π/2", True),
    (r"\frac{\pi}{2}", "Answer: pi/2", True),
    (r"\frac{\pi}{2}", r"\boxed{\frac{\pi}{3}}", False),
    ("e", r"\boxed{e}", True),
    ("e^2", r"\boxed{e^{2}}", True),
    ("e^2", r"\boxed{7.389056}", True),
    (r"\infty", r"\boxed{\infty}", True),
    (r"\infty", r"\boxed{-\infty}", False),
    (r"\infty", "Answer: ∞", True),
    (r"-\infty", r"\boxed{-\infty}", True),
    (r"\pi", r"\boxed{e}", False),
    # --- negative numbers, unicode minus and digits
    ("-5", r"\boxed{-5}", True),
    ("-5", r"\boxed{5}", False),
    ("-5", "The answer is \u22125", True),
    ("5", "The answer is \u22125", False),
    ("-2.5", r"\boxed{-\frac{5}{2}}", True),
    ("-7", "the value is -7.", True),
    ("5", "The answer is \u0665", True),  # Arabic-Indic five
    ("42", "\u7b54\u6848\u662f \uff14\uff12", True),  # fullwidth 42
    ("43", "\u7b54\u6848\u662f \uff14\uff12", False),
    # --- scientific notation
    ("1500", r"\boxed{1.5 \times 10^{3}}", True),
    ("1500", "Answer: 1.5e3", True),
    ("1500", "The answer is 1.5 \u00d7 10^3", True),
    ("0.001", r"\boxed{10^{-3}}", True),
    ("0.001", "so it is 1e-3", True),
    (r"6.02 \times 10^{23}", r"\boxed{6.02e23}", True),
    (r"6.02 \times 10^{23}", r"\boxed{6.02 \times 10^{22}}", False),
    ("1500", r"\boxed{1.5 \times 10^{4}}", False),
    # --- equations
    ("5", r"\boxed{x = 5}", True),
    ("x = 5", r"\boxed{5}", True),
    ("x = 5", r"\boxed{x=5}", True),
    ("x = 5", r"\boxed{x = 6}", False),
    ("x = 5", r"\boxed{y = 5}", False),
    ("y = 2x + 1", r"\boxed{y = 1 + 2x}", True),
    ("y = 2x + 1", r"\boxed{y = 2x - 1}", False),
    ("x = 2, y = 3", r"\boxed{x = 2, y = 3}", True),
    ("x = 2, y = 3", r"\boxed{x = 3, y = 2}", False),
    # --- thousands separators
    ("1000", r"\boxed{1,000}", True),
    ("1000", r"\boxed{1{,}000}", True),
    ("1000", r"\boxed{1\,000}", True),
    ("10000", "The answer is 10,000.", True),
    ("1000000", "Answer: 1,000,000", True),
    ("1000", r"\boxed{1,001}", False),
    ("1,000", "1000", True),
    ("1234.5", r"\boxed{1,234.5}", True),
    # --- several answers
    ("2, -2", r"\boxed{\pm 2}", True),
    ("1, 2", "Answer: x = 1 or x = 2", True),
    ("1, 2", r"\boxed{1} and \boxed{2}", True),
    ("1, 2", r"\boxed{1} and \boxed{3}", False),
    # --- matrices
    (PMATRIX, f"$\\boxed{{{BMATRIX}}}$", True),
    (PMATRIX, f"$\\boxed{{{PMATRIX_OFF}}}$", False),
    # --- the gold may be LaTeX, boxed, or a whole solution
    (r"$\frac{1}{2}$", "0.5", True),
    (r"so the answer is $\boxed{7}$", "7", True),
    ("  42  ", "42", True),
    (r"\boxed{7}", "8", False),
]


def _grade(gold: str, completion: str, **params: object):
    return math_reward(Sample(completion=completion, reference=gold), **params)


def test_table_is_large_and_balanced() -> None:
    assert len(CASES) >= 170
    assert sum(not expected for _, _, expected in CASES) >= 50


@pytest.mark.parametrize(("gold", "completion", "expected"), CASES)
def test_table(gold: str, completion: str, expected: bool) -> None:
    r = _grade(gold, completion)
    assert r.status is Status.OK, r.reason
    assert r.value == float(expected), r.reason
    assert r.components["correct"] == float(expected)


# --- the contract around the table: statuses, components, reasons, params, time


def test_missing_completion_is_invalid_input() -> None:
    with pytest.raises(InvalidInput, match="completion is missing"):
        math_reward(Sample(completion=None, reference="42"))


@pytest.mark.parametrize("reference", ["", "   \n", "???", r"\frac{", "}{", "$$", r"\boxed{}"])
def test_unparseable_reference_is_invalid_input(reference: str) -> None:
    with pytest.raises(InvalidInput, match="reference"):
        _grade(reference, r"\boxed{42}")


def test_unclosed_boxed_reference_is_invalid_input() -> None:
    with pytest.raises(InvalidInput, match="unclosed"):
        _grade(r"\boxed{42", "42")


def test_correct_answer_components_and_reason() -> None:
    r = _grade("0.5", r"so $x = \boxed{\frac{1}{2}}$")
    assert (r.status, r.value) == (Status.OK, 1.0)
    assert r.components == {"extracted": 1.0, "correct": 1.0}
    assert r.reason.startswith("boxed answer '\\\\frac{1}{2}' (parsed 1/2) equals gold '0.5'")


def test_wrong_answer_names_both_sides() -> None:
    r = _grade("7", "The answer is 8.")
    assert (r.value, r.components) == (0.0, {"extracted": 1.0, "correct": 0.0})
    assert "phrase answer '8'" in r.reason and "gold '7'" in r.reason


def test_no_answer_is_a_zero_with_extracted_zero() -> None:
    r = _grade("7", "I could not solve this one.")
    assert (r.status, r.value) == (Status.OK, 0.0)
    assert r.components == {"extracted": 0.0, "correct": 0.0}
    assert r.reason.startswith("no answer extracted") and "gold 7" in r.reason


def test_reason_is_clipped() -> None:
    r = _grade("1", r"\boxed{" + "+".join(["x"] * 500) + "}")
    assert r.value == 0.0
    assert len(r.reason) < 700


@pytest.mark.parametrize(
    ("extract_from", "completion", "extracted"),
    [
        ("boxed", r"\boxed{42}", 1.0),
        ("boxed", "The answer is 42.", 0.0),
        ("boxed", "$42$", 0.0),
        ("anchored", "The answer is 42.", 1.0),
        ("anchored", "so we get $42$", 0.0),
        ("anchored", "so we get 42", 0.0),
        ("auto", "so we get 42", 1.0),
    ],
)
def test_extract_from(extract_from: str, completion: str, extracted: float) -> None:
    r = _grade("42", completion, extract_from=extract_from)
    assert r.components == {"extracted": extracted, "correct": extracted}


def test_float_rounding_param() -> None:
    assert _grade(r"\frac{1}{3}", "0.33").value == 0.0
    assert _grade(r"\frac{1}{3}", "0.33", float_rounding=2).value == 1.0
    assert _grade(r"\frac{1}{3}", "0.3", float_rounding=2).value == 0.0


def test_strict_param() -> None:
    assert _grade("x+1", r"\boxed{y+1}").value == 0.0
    assert _grade("x+1", r"\boxed{y+1}", strict=False).value == 1.0


@pytest.mark.parametrize(
    ("params", "name"),
    [
        ({"float_rounding": -1}, "float_rounding"),
        ({"float_rounding": 16}, "float_rounding"),
        ({"float_rounding": 2.5}, "float_rounding"),
        ({"float_rounding": True}, "float_rounding"),
        ({"strict": "yes"}, "strict"),
        ({"extract_from": "last_number"}, "extract_from"),
    ],
)
def test_bad_params_are_invalid_params_naming_them(params: dict, name: str) -> None:
    with pytest.raises(InvalidParams, match=f"param {name} "):
        _grade("1", "1", **params)  # a bad request, not a bad sample
    with pytest.raises(ValueError, match=f"param {name} "):  # the server's hook, before work
        math_reward.check_params(validate_params(math_reward, {}) | params)


def test_params_are_declared_for_the_server() -> None:
    declared = {p.name: (p.type, p.default, bool(p.description)) for p in math_reward.params}
    assert declared == {
        "float_rounding": ("integer", 6, True),
        "strict": ("boolean", True, True),
        "extract_from": ("string", "auto", True),
    }
    assert validate_params(math_reward, {"float_rounding": 3.0}) == {
        "float_rounding": 3,
        "strict": True,
        "extract_from": "auto",
    }
    with pytest.raises(ValueError, match="'strict'"):
        validate_params(math_reward, {"strict": 1})
    math_reward.check_params(validate_params(math_reward, {}))
    assert math_reward.name == "math" and math_reward.kind == "rule"
    assert math_reward.timeout_s is not None and math_reward.timeout_s > math_answer.BUDGET_S


def test_docstring_examples_run() -> None:
    runner = doctest.DocTestRunner()
    globs = vars(math_answer).copy()
    for test in doctest.DocTestFinder().find(math_reward.fn, "math_reward", globs=globs):
        runner.run(test)
    failed, tried = runner.summarize(verbose=False)
    assert tried >= 3 and failed == 0


def test_works_off_the_main_thread() -> None:
    out: list = []
    t = threading.Thread(target=lambda: out.append(_grade("0.5", r"\boxed{1/2}")))
    t.start()
    t.join(30)
    assert out and out[0].value == 1.0


def test_an_outer_timer_survives_a_call() -> None:
    fired: list[int] = []
    old = signal.signal(signal.SIGALRM, lambda *_: fired.append(1))
    try:
        signal.setitimer(signal.ITIMER_REAL, 30.0)
        assert _grade("2", r"\boxed{2}").value == 1.0
        left = signal.getitimer(signal.ITIMER_REAL)[0]
        assert 25.0 < left <= 30.0  # re-armed with what it had left, not cancelled
        assert signal.getsignal(signal.SIGALRM) is not old or old is None
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old if old is not None else signal.SIG_DFL)
    assert not fired


HUGE = [
    r"\boxed{9^{9^{9^9}}}",
    "The answer is 9^9^9^9",
    "so it is 9**9**9**9",
    r"\boxed{10^{10^{10}}}",
    r"\boxed{(10^{9})!}",
    "so the answer is 1e999999999",
]


@pytest.mark.timeout(60)
@pytest.mark.parametrize("completion", HUGE)
def test_huge_numbers_end_by_the_deadline(monkeypatch, completion: str) -> None:
    monkeypatch.setattr(math_answer, "BUDGET_S", 0.5)
    t0 = time.monotonic()
    r = _grade("5", completion)
    assert time.monotonic() - t0 < 5.0
    # Either math-verify settles it quickly, or it is a TIMEOUT: never a made-up score.
    assert (r.status, r.value) in {(Status.OK, 0.0), (Status.TIMEOUT, None)}, r.reason


def test_a_timeout_is_not_a_score(monkeypatch) -> None:
    monkeypatch.setattr(math_answer, "BUDGET_S", 0.5)
    r = _grade("5", r"\boxed{9^{9^{9^9}}}")
    assert (r.status, r.value, r.components) == (Status.TIMEOUT, None, {})
    assert "0.5s" in r.reason


MEGABYTE = 1_000_000


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    "completion",
    [
        "word " * (MEGABYTE // 5) + r"\boxed{5}",
        r"\boxed{5}" + " word" * (MEGABYTE // 5),
        "word " * (MEGABYTE // 5) + "The answer is 5.",
    ],
    ids=["box-last", "box-first", "phrase-last"],
)
def test_a_megabyte_completion_is_still_graded(completion: str) -> None:
    t0 = time.monotonic()
    assert _grade("5", completion).value == 1.0
    assert time.monotonic() - t0 < 5.0


HOSTILE = [
    "{" * MEGABYTE,
    "}" * MEGABYTE,
    r"\boxed{" + "{" * 100_000 + "}" * 100_000 + "}",
    r"\boxed{" * 100_000,
    r"\boxed{" + r"\sqrt{" * 250 + "2" + "}" * 250 + "}",
    "$" * MEGABYTE,
    "$x" * (MEGABYTE // 2),
    "answer is " * 100_000,
    "Answer: " + "(" * 100_000,
    "1" * MEGABYTE,
    "1," * (MEGABYTE // 2),
    "1 " * (MEGABYTE // 2),
    r"\frac{" * 10_000 + "}" * 10_000,
    "\\" * MEGABYTE,
    "\u0663" * 100_000,  # Arabic-Indic digits
    "\u2212" * 100_000,  # unicode minus signs
    "\x00\ud800\uffff" * 1000,
    r"\left(" * 10_000,
    "$" + "^{" * 5000 + "2" + "}" * 5000 + "$",
]


@pytest.mark.timeout(120)
@pytest.mark.parametrize("completion", HOSTILE, ids=range(len(HOSTILE)))
def test_hostile_completions_are_graded_in_bounded_time(monkeypatch, completion: str) -> None:
    monkeypatch.setattr(math_answer, "BUDGET_S", 2.0)
    t0 = time.monotonic()
    r = _grade("5", completion)
    assert time.monotonic() - t0 < 10.0
    assert r.status in (Status.OK, Status.TIMEOUT), r.reason
    if r.status is Status.OK:
        assert r.value in (0.0, 1.0)


@pytest.mark.slow
@pytest.mark.timeout(120)
async def test_in_a_real_worker_process() -> None:
    """The deadline works where the server runs verifiers: a TIMEOUT from the verifier
    itself (the worker survives and scores the next sample), not a killed worker."""
    completions = [r"\boxed{5}", r"\boxed{9^{9^{9^9}}}", "The answer is 5."]
    blobs = [
        sample_to_proto(Sample(completion=c, reference="5", id=str(i))).SerializeToString()
        for i, c in enumerate(completions)
    ]
    pool = WorkerPool(["builtin"], workers=1)
    pool.start()
    try:
        params = validate_params(math_reward, {})
        raw = await pool.run("math", params, blobs, timeout_s=math_reward.timeout_s or 10.0)
    finally:
        pool.close()
    assert [(r[1], r[2]) for r in raw] == [("OK", 1.0), ("TIMEOUT", None), ("OK", 1.0)]
    assert f"within {math_answer.BUDGET_S:g}s" in raw[1][3]
