"""End to end through the real command line: `referee serve verifiers` (built-ins),
then `referee score`, `referee list` and `referee health` against it."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
from service_kit import CliServer, run_cli

BUILTINS = ["math", "exact", "normalized_match", "regex", "choice", "format", "json", "length"]

ROWS = [
    {"id": "right", "completion": "Paris", "reference": "Paris"},
    {"id": "case", "completion": "paris", "reference": "Paris"},
    {"id": "spaces", "prompt": "6*7?", "completion": " 42\n", "reference": "42"},
    {"id": "none", "prompt": [{"role": "user", "content": "hi"}], "reference": "x"},
    {"id": "noref", "completion": "x", "reference": ""},
    {"id": 7, "completion": "Bonn", "reference": "Berlin"},
]


@pytest.fixture(scope="module")
def server(cli_servers: Callable[..., CliServer]) -> CliServer:
    return cli_servers(["--workers", "2"])


def test_serve_announces_the_builtins(server: CliServer) -> None:
    announced = server.wait_line(r"^serving rewards: (.*)$").group(1).split(", ")
    assert set(BUILTINS) <= set(announced)
    assert server.address.startswith("127.0.0.1:")


def test_score_jsonl(server: CliServer, tmp_path: Path) -> None:
    path = tmp_path / "samples.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in ROWS) + "\n")  # a trailing blank line
    done = run_cli(["score", "--target", server.address, "--reward", "exact", "--input", str(path)])
    assert done.returncode == 0, done.stderr
    rows = [json.loads(line) for line in done.stdout.splitlines()]
    assert [r["id"] for r in rows] == ["right", "case", "spaces", "none", "noref", "7"]
    assert [r["status"] for r in rows] == ["OK", "OK", "OK", "INVALID_INPUT", "INVALID_INPUT", "OK"]
    assert [r["value"] for r in rows] == [1.0, 0.0, 1.0, None, None, 0.0]
    assert rows[3]["reason"] == "sample 3 (id 'none') has no completion"
    assert "reference is empty" in rows[4]["reason"]
    assert "'Bonn' != reference 'Berlin'" in rows[5]["reason"]
    assert all(
        set(r) == {"id", "status", "value", "components", "reason", "cost_s", "cached"}
        for r in rows
    )
    assert "scored 6 samples: INVALID_INPUT 2, OK 4" in done.stderr


def test_score_from_stdin_with_params_to_a_file(server: CliServer, tmp_path: Path) -> None:
    out = tmp_path / "scores.jsonl"
    stdin = json.dumps({"id": "s", "completion": " 42 ", "reference": "42"}) + "\n"
    strict = run_cli(
        [
            "score",
            "--target",
            server.address,
            "--reward",
            "exact",
            "--params",
            '{"strip": false}',
            "--output",
            str(out),
        ],
        input=stdin,
    )
    assert strict.returncode == 0, strict.stderr
    assert strict.stdout == ""
    [row] = [json.loads(line) for line in out.read_text().splitlines()]
    assert (row["id"], row["status"], row["value"]) == ("s", "OK", 0.0)


def test_score_errors_are_reported(server: CliServer, tmp_path: Path) -> None:
    path = tmp_path / "one.jsonl"
    path.write_text(json.dumps(ROWS[0]) + "\n")
    unknown = run_cli(
        ["score", "--target", server.address, "--reward", "nope", "--input", str(path)]
    )
    assert unknown.returncode == 1
    assert "INVALID_ARGUMENT" in unknown.stderr and "unknown reward 'nope'" in unknown.stderr
    bad_param = run_cli(
        [
            "score",
            "--target",
            server.address,
            "--reward",
            "exact",
            "--params",
            '{"strp": true}',
            "--input",
            str(path),
        ]
    )
    assert bad_param.returncode == 1
    assert "'strp'" in bad_param.stderr
    path.write_text('{"id": "x", "completion": 5}\n')
    bad_row = run_cli(
        ["score", "--target", server.address, "--reward", "exact", "--input", str(path)]
    )
    assert bad_row.returncode == 2
    assert "line 1: completion must be a string" in bad_row.stderr


def test_list(server: CliServer) -> None:
    done = run_cli(["list", "--target", server.address])
    assert done.returncode == 0, done.stderr
    listed = {
        line.split()[0] for line in done.stdout.splitlines() if line and not line[0].isspace()
    }
    assert set(BUILTINS) <= listed
    as_json = run_cli(["list", "--target", server.address, "--json"])
    assert as_json.returncode == 0, as_json.stderr
    by_name = {r["name"]: r for r in json.loads(as_json.stdout)}
    assert [p["name"] for p in by_name["exact"]["params"]] == ["strip"]
    assert by_name["exact"]["kind"] == "rule"


def test_health(server: CliServer) -> None:
    done = run_cli(["health", "--target", server.address])
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "SERVING"
    unknown = run_cli(["health", "--target", server.address, "--service", "no.such.Service"])
    assert unknown.returncode == 1
    assert "NOT_FOUND" in unknown.stderr
