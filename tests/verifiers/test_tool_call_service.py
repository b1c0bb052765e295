"""tool_call end to end: `referee serve verifiers` (built-ins) as a real process, then
`referee score --reward tool_call` on JSONL rows in every accepted shape."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from referee.testing import ServerProcess, serve_process

TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "parameters": {
                "type": "object",
                "properties": {
                    "city": {"type": "string"},
                    "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
                    "days": {"type": "integer"},
                },
                "required": ["city"],
            },
        },
    }
]
BFCL = json.dumps([{"get_weather": {"city": ["Paris"], "unit": ["celsius", ""]}}])
PARALLEL = json.dumps([{"get_weather": {"city": ["Paris"]}}, {"get_weather": {"city": ["Oslo"]}}])


def tag(city: str, **more: object) -> str:
    body = {"name": "get_weather", "arguments": {"city": city, **more}}
    return f"<tool_call>\n{json.dumps(body)}\n</tool_call>"


ROWS = [
    {"id": "hermes", "completion": tag("Paris"), "reference": BFCL, "metadata": {"tools": TOOLS}},
    {
        "id": "openai",
        "completion": json.dumps(
            {
                "tool_calls": [
                    {
                        "type": "function",
                        "function": {"name": "get_weather", "arguments": '{"city": "paris"}'},
                    }
                ]
            }
        ),
        "metadata": {
            "tools": TOOLS,
            "ground_truth": [{"get_weather": {"city": ["Paris"], "days": [3, ""]}}],
        },
    },
    {
        "id": "int_days",
        "completion": tag("Paris", days=3),
        "metadata": {
            "tools": TOOLS,
            "ground_truth": [{"get_weather": {"city": ["Paris"], "days": [3]}}],
        },
    },
    {"id": "parallel", "completion": tag("Oslo") + "\n" + tag("Paris"), "reference": PARALLEL},
    {"id": "half", "completion": tag("Oslo"), "reference": PARALLEL},
    {
        "id": "enum",
        "completion": tag("Paris", unit="kelvin"),
        "reference": BFCL,
        "metadata": {"tools": TOOLS},
    },
    {"id": "no_call", "completion": "It is 18 degrees in Paris.", "reference": "[]"},
    {
        "id": "broken",
        "completion": '<tool_call>{"name": "get_weather", "arguments": {',
        "reference": BFCL,
    },
    {"id": "bad_ref", "completion": tag("Paris"), "reference": "get_weather(city='Paris')"},
    {
        "id": "bad_schema",
        "completion": tag("Paris"),
        "reference": BFCL,
        "metadata": {"tools": [{"name": "get_weather", "parameters": {"type": "strng"}}]},
    },
    {
        "id": "deep",
        "completion": '{"name": "get_weather", "arguments": ' + "[" * 50_000 + "]" * 50_000 + "}",
        "reference": BFCL,
    },
    {"id": "none", "reference": BFCL},
]


@pytest.fixture(scope="module")
def server() -> Iterator[ServerProcess]:
    with serve_process(["verifiers", "--workers", "1"]) as srv:
        yield srv


def score(server: ServerProcess, path: Path, params: dict | None = None) -> dict[str, dict]:
    done = subprocess.run(
        [sys.executable, "-m", "referee.cli", "score", "--target", server.address,
         "--reward", "tool_call", "--input", str(path), "--params", json.dumps(params or {})],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    return {s["id"]: s for s in map(json.loads, done.stdout.splitlines())}


def test_score_tool_call_rows(server: ServerProcess, tmp_path: Path) -> None:
    path = tmp_path / "calls.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    scores = score(server, path)
    assert list(scores) == [r["id"] for r in ROWS]
    status = {k: (s["status"], s["value"]) for k, s in scores.items()}
    assert status == {
        "hermes": ("OK", 1.0),
        "openai": ("OK", 1.0),
        "int_days": ("OK", 1.0),  # metadata's 3 arrives as 3.0 through protobuf Struct
        "parallel": ("OK", 1.0),
        "half": ("OK", 0.0),
        "enum": ("OK", 0.0),
        "no_call": ("OK", 1.0),
        "broken": ("OK", 0.0),
        "bad_ref": ("INVALID_INPUT", None),
        "bad_schema": ("INVALID_INPUT", None),
        "deep": ("OK", 0.0),
        "none": ("INVALID_INPUT", None),
    }
    assert scores["hermes"]["components"] == {
        "parsed": 1.0, "count": 1.0, "name": 1.0, "required": 1.0,
        "types": 1.0, "values": 1.0, "matched": 1.0,
    }  # fmt: skip
    assert scores["enum"]["components"]["types"] == 0.0 and "kelvin" in scores["enum"]["reason"]
    assert scores["broken"]["components"]["parsed"] == 0.0
    assert "<tool_call> block 1" in scores["broken"]["reason"]
    assert scores["deep"]["components"]["parsed"] == 0.0
    assert "reference is not JSON" in scores["bad_ref"]["reason"]
    assert "metadata.tools[0].parameters is invalid" in scores["bad_schema"]["reason"]

    # The server kept serving after the hostile rows; params travel with the request.
    again = score(server, path, {"partial_credit": True})
    assert again["half"]["value"] == 0.5 and again["hermes"]["value"] == 1.0


def test_bad_params_fail_the_request(server: ServerProcess, tmp_path: Path) -> None:
    path = tmp_path / "one.jsonl"
    path.write_text(json.dumps(ROWS[0]) + "\n")
    done = subprocess.run(
        [sys.executable, "-m", "referee.cli", "score", "--target", server.address,
         "--reward", "tool_call", "--input", str(path), "--params", '{"max_calls": 99}'],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert done.returncode == 1
    assert "INVALID_ARGUMENT" in done.stderr and "max_calls" in done.stderr
