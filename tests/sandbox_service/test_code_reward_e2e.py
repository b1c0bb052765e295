"""The whole path a trainer uses for code rewards: `referee score` -> `referee serve
verifiers --sandbox` -> `referee serve sandbox` (bwrap), all real processes."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from referee.testing import serve_process

pytestmark = [pytest.mark.slow, pytest.mark.skipif(shutil.which("bwrap") is None, reason="no bubblewrap")]

GOOD = "```python\ndef add(a, b):\n    return a + b\n```"
WRONG = "```python\ndef add(a, b):\n    return a - b\n```"
HACK = "```python\nimport sys\ndef add(a, b):\n    return 0\nsys.exit(0)\n```"
TESTS = ["assert add(1, 2) == 3", "assert add(-1, 1) == 0", "assert add(2, 2) == 4"]
ECHO = "```python\nprint(int(input()) * 2)\n```"
CASES = [{"stdin": "2\n", "stdout": "4\n"}, {"stdin": "5\n", "stdout": "10\n"}]


def test_code_reward_through_both_services(tmp_path: Path) -> None:
    rows = [
        {"id": "good", "completion": GOOD, "metadata": {"tests": TESTS}},
        {"id": "wrong", "completion": WRONG, "metadata": {"tests": TESTS}},
        {"id": "hack", "completion": HACK, "metadata": {"tests": TESTS}},
        {"id": "io", "completion": ECHO, "metadata": {"cases": CASES}},
        {"id": "nocode", "completion": "I cannot do this.", "metadata": {"tests": TESTS}},
        {"id": "badmeta", "completion": GOOD, "metadata": {"tests": 42}},
    ]
    samples = tmp_path / "code.jsonl"
    samples.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with serve_process(["sandbox", "--slots", "2"]) as sandbox, serve_process(
        ["verifiers", "--workers", "1", "--sandbox", sandbox.address]
    ) as verifiers:
        done = subprocess.run(
            [sys.executable, "-m", "referee.cli", "score", "--target", verifiers.address,
             "--reward", "code", "--input", str(samples)],
            capture_output=True, text=True, timeout=300, check=False,
        )
    assert done.returncode == 0, done.stderr
    scores = {s["id"]: s for s in map(json.loads, done.stdout.splitlines())}
    assert list(scores) == [r["id"] for r in rows]
    assert (scores["good"]["status"], scores["good"]["value"]) == ("OK", 1.0)
    assert scores["good"]["components"]["all_passed"] == 1.0
    assert scores["wrong"]["status"] == "OK" and scores["wrong"]["value"] < 1.0
    assert scores["wrong"]["components"]["all_passed"] == 0.0
    assert scores["hack"]["status"] == "OK" and scores["hack"]["value"] == 0.0
    assert (scores["io"]["status"], scores["io"]["value"]) == ("OK", 1.0)
    assert scores["nocode"]["value"] == 0.0 and scores["nocode"]["components"]["extracted"] == 0.0
    assert scores["badmeta"]["status"] == "INVALID_INPUT" and "tests" in scores["badmeta"]["reason"]


def test_code_reward_without_a_sandbox_is_unavailable_not_zero(tmp_path: Path) -> None:
    samples = tmp_path / "one.jsonl"
    samples.write_text(json.dumps({"id": "x", "completion": GOOD, "metadata": {"tests": TESTS}}) + "\n")
    with serve_process(["verifiers", "--workers", "1"], env={"REFEREE_SANDBOX": ""}) as verifiers:
        done = subprocess.run(
            [sys.executable, "-m", "referee.cli", "score", "--target", verifiers.address,
             "--reward", "code", "--input", str(samples)],
            capture_output=True, text=True, timeout=120, check=False,
        )
    (score,) = map(json.loads, done.stdout.splitlines())
    assert score["status"] == "UNAVAILABLE" and score["value"] is None
    assert "--sandbox" in score["reason"]
