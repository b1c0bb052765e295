"""The reward-service benchmark runs end to end and reports what it promises.

Timing targets belong to the benchmark, not to tests: this only checks that a smoke run
starts the real servers, scores every sample correctly and prints one JSON object with
the expected fields.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench" / "reward_service.py"

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        any(importlib.util.find_spec(m) is None for m in ("fastapi", "uvicorn", "httpx")),
        reason="the HTTP baseline needs the bench extra (fastapi, uvicorn, httpx)",
    ),
]


@pytest.mark.timeout(180)
def test_quick_run_prints_one_json_object() -> None:
    proc = subprocess.run(
        [sys.executable, str(BENCH), "--quick", "--quiet"],
        capture_output=True, text=True, timeout=170, cwd=BENCH.parents[1],
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout)  # the whole of stdout is one JSON object
    assert isinstance(out, dict)

    assert out["bench"] == "reward_service"
    assert out["quick"] is True
    assert {"workers", "callers", "batch_size"} <= out.keys()
    for system in (out["exact"]["grpc"], out["exact"]["http_one_per_request"],
                   out["math"]["grpc"], out["math"]["inprocess_pool"]):
        assert system["samples"] > 0
        assert system["seconds"] > 0
        assert system["samples_per_s"] > 0
    assert out["math"]["grpc"]["samples"] == out["math"]["inprocess_pool"]["samples"]
    for reward in ("ifeval", "tool_call"):  # through the service, in a pool, in a plain loop
        section = out[reward]
        for system in ("grpc", "inprocess_pool", "inprocess_loop"):
            assert section[system]["samples"] > 0, (reward, system)
            assert section[system]["samples_per_s"] > 0, (reward, system)
        assert section["grpc"]["samples"] == section["inprocess_pool"]["samples"]
        assert section["workload"]["samples"] >= section["grpc"]["samples"]
        assert 0 < section["workload"]["mean_expected_value"] < 1  # a mix of right and wrong
        assert {f"{reward}_grpc_time_ratio", f"{reward}_grpc_vs_loop_throughput"} <= set(
            out["informational_ratios"])
        assert out["checks"][f"{reward}_grpc_wrong_values"] == 0, out["checks"]
        assert out["checks"][f"{reward}_loop_wrong_values"] == 0, out["checks"]
        assert out["checks"][f"{reward}_grpc_equals_inprocess"] is True, out["checks"]

    names = {"exact_grpc_vs_http_throughput", "math_grpc_time_ratio"}
    assert set(out["ratios"]) == names
    assert set(out["targets"]) == names
    assert names <= set(out["pass"])
    assert all(isinstance(v, bool) for v in out["pass"].values())
    assert {"python", "grpcio", "cpu_count"} <= out["env"].keys()

    # Correctness, not speed: every sample was answered and answered right.
    assert out["pass"]["results_valid"], out["checks"]
