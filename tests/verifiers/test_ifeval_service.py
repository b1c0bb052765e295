"""`referee score --reward ifeval` against a real `referee serve verifiers` process, on
JSONL rows whose metadata is IFEval's own fields."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from referee.testing import serve_process

pytestmark = pytest.mark.slow

NO_COMMA_QUOTED = {
    "instruction_id_list": ["punctuation:no_comma", "startend:quotation"],
    "kwargs": [{}, {}],
}
ROWS = [
    {"id": "both", "completion": '"No commas at all"', "metadata": NO_COMMA_QUOTED},
    {"id": "half", "completion": '"Yes, a comma"', "metadata": NO_COMMA_QUOTED},
    {"id": "preamble", "completion": 'Sure thing:\n"Wrapped"', "metadata": NO_COMMA_QUOTED},
    {
        "id": 1012,
        "prompt": "Write an email to my boss telling him that I am quitting.",
        "completion": "Write an email to my boss.\n<<Resignation>>\nDear boss, I quit.",
        "metadata": {
            "key": 1012,
            "instruction_id_list": ["combination:repeat_prompt", "detectable_format:title"],
            "kwargs": [
                {"prompt_to_repeat": "Write an email to my boss.", "num_words": None},
                {"prompt_to_repeat": None},
            ],
        },
    },
    {
        "id": "unknown",
        "completion": "fine",
        "metadata": {"instruction_id_list": ["punctuation:no_semicolon"], "kwargs": [{}]},
    },
    {
        "id": "badkw",
        "completion": "fine",
        "metadata": {
            "instruction_id_list": ["length_constraints:number_words"],
            "kwargs": [{"num_words": "many", "relation": "less than"}],
        },
    },
    {"id": "nocompletion", "metadata": NO_COMMA_QUOTED},
]


def _score(address: str, path: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "referee.cli", "score", "--target", address,
         "--reward", "ifeval", "--input", str(path), *extra],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip


def test_ifeval_through_the_service(tmp_path: Path) -> None:
    samples = tmp_path / "ifeval.jsonl"
    samples.write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    with serve_process(["verifiers", "--workers", "1"]) as server:
        strict = _score(server.address, samples)
        loose = _score(server.address, samples, "--params", '{"mode": "loose", "level": "prompt"}')
        bad_param = _score(server.address, samples, "--params", '{"mode": "lenient"}')
        again = _score(server.address, samples)  # still serving after the refusals
    assert strict.returncode == 0, strict.stderr
    rows = {r["id"]: r for r in map(json.loads, strict.stdout.splitlines())}
    assert list(rows) == ["both", "half", "preamble", "1012", "unknown", "badkw", "nocompletion"]
    assert (rows["both"]["status"], rows["both"]["value"]) == ("OK", 1.0)
    assert rows["both"]["components"] == {
        "punctuation:no_comma": 1.0,
        "startend:quotation": 1.0,
        "instruction_level": 1.0,
        "prompt_level": 1.0,
    }
    assert rows["half"]["value"] == 0.5 and rows["half"]["components"]["prompt_level"] == 0.0
    assert rows["preamble"]["value"] == 0.5
    assert rows["1012"]["value"] == 1.0
    assert rows["unknown"]["status"] == "INVALID_INPUT" and rows["unknown"]["value"] is None
    assert "'punctuation:no_semicolon'" in rows["unknown"]["reason"]
    assert rows["badkw"]["status"] == "INVALID_INPUT"
    assert "metadata.kwargs[0].num_words must be an integer" in rows["badkw"]["reason"]
    assert rows["nocompletion"]["status"] == "INVALID_INPUT"

    assert loose.returncode == 0, loose.stderr
    values = [r["value"] for r in map(json.loads, loose.stdout.splitlines())]
    assert values == [1.0, 0.0, 1.0, 1.0, None, None, None]

    assert bad_param.returncode == 1
    assert "INVALID_ARGUMENT" in bad_param.stderr and "param mode" in bad_param.stderr
    assert again.returncode == 0, again.stderr
    outcome = [
        (r["id"], r["status"], r["value"]) for r in map(json.loads, again.stdout.splitlines())
    ]
    assert outcome == [(r["id"], r["status"], r["value"]) for r in rows.values()]
