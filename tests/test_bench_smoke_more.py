"""The sandbox, trainer, rollout and reward-model benchmarks run end to end (smoke runs) and print one JSON
object with their figures. Targets are the benchmarks' business, not the tests'."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


def run_bench(name: str) -> dict:
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / name), "--quick"],
                          capture_output=True, text=True, timeout=400, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.timeout(420)
@pytest.mark.skipif(shutil.which("bwrap") is None, reason="no bubblewrap")
def test_sandbox_bench() -> None:
    out = run_bench("sandbox.py")
    assert out["bench"] == "sandbox" and out["pass"]["all_programs_ok"]
    assert out["overhead"]["overhead_ms"]["p50"] > 0
    for kind in ("typical", "trivial"):
        assert out["throughput"][kind]["service"]["programs"] == 30
        assert out["throughput"][kind]["service_vs_bare"] > 0


@pytest.mark.timeout(420)
def test_trainer_bench() -> None:
    out = run_bench("trainer.py")
    assert out["bench"] == "trainer"
    assert out["overlap"]["sequential"]["reward_s"] > 0  # the cache must not answer the baseline
    assert out["overlap"]["hidden_fraction"] is not None
    assert out["step_breakdown"]["steps_measured"] >= 1 and out["step_breakdown"]["generate_s"] > 0


@pytest.mark.timeout(420)
def test_rollout_bench() -> None:
    out = run_bench("rollout.py")
    assert out["bench"] == "rollout"
    assert set(out["modes"]) == {"hf", "sglang", "sglang_off"}
    for mode in out["modes"].values():
        assert mode["steps_measured"] >= 1 and mode["step_s"] > 0 and mode["generate_s"] > 0
    assert out["modes"]["sglang"]["sync_s"] > 0 and out["modes"]["sglang"]["staleness_max"] == 0
    assert out["modes"]["sglang_off"]["staleness_max"] > 0  # it really ran off-policy
    assert out["speedup_off_policy_vs_sync"] is not None


@pytest.mark.timeout(420)
def test_reward_model_bench() -> None:
    out = run_bench("reward_model.py")
    assert out["bench"] == "reward_model" and out["target"] == ">= 3x"
    assert out["checks"]["all_ok"] and out["checks"]["scores_match"]
    assert out["batched"]["samples_per_s"] > 0 and out["one_forward_per_request"]["samples_per_s"] > 0
    assert out["batched"]["mean_forward_size"] > 1  # it really batched
    assert out["ratio_batched_vs_single"] > 0
