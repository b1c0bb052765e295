"""The quickstart: its data teaches what the README says, and `examples/quickstart/run.py`
(the README's first command) runs end to end, here shrunk to a few steps per stage."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

from referee.types import Sample
from referee.verifiers.math_answer import math_reward

ROOT = Path(__file__).resolve().parents[2]
QUICKSTART = ROOT / "examples" / "quickstart"


def load_make_data():
    spec = importlib.util.spec_from_file_location("quickstart_make_data_hedge", QUICKSTART / "make_data.py")
    module = importlib.util.module_from_spec(spec)
    assert spec.loader is not None
    spec.loader.exec_module(module)
    return module


def rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_teacher_hedges_only_on_carries_and_a_hedge_is_never_right(tmp_path):
    md = load_make_data()
    train, _ = md.make(tmp_path, 2000, 10, 2, 0, hedge_fraction=0.8)
    data = rows(train)
    hedged = [r for r in data if " or maybe " in r["completion"]]
    carries = [r for r in data if md.has_carry(*map(int, r["prompt"][:-2].split("+")))]
    assert all(r in carries for r in hedged)
    assert 0.7 < len(hedged) / len(carries) <= 0.8  # palindromic sums cannot be hedged
    for r in hedged[:50]:
        hedge = math_reward.verify(Sample(completion=r["completion"], reference=r["reference"]))
        first = r["completion"].split(" or maybe ")[0]
        plain = math_reward.verify(Sample(completion=first, reference=r["reference"]))
        assert (hedge.value, plain.value) == (0.0, 1.0), r


def test_no_hedge_fraction_is_the_plain_teacher(tmp_path):
    md = load_make_data()
    train, held_out = md.make(tmp_path, 300, 20, 2, 0)
    data = rows(train) + rows(held_out)
    assert all(r["completion"] == f"\\boxed{{{r['reference']}}}" for r in data)
    assert not {r["prompt"] for r in rows(train)} & {r["prompt"] for r in rows(held_out)}


def test_carry_detection():
    md = load_make_data()
    assert md.has_carry(57, 68) and md.has_carry(48, 71) and md.has_carry(5, 95)
    assert not md.has_carry(15, 43) and not md.has_carry(3, 6) and not md.has_carry(100, 899)


@pytest.mark.slow
@pytest.mark.parametrize("engine", ["hf", "sglang"])
def test_quickstart_runs_end_to_end(tmp_path, engine):
    tiny_sft = ["optim.steps=3", "optim.warmup_steps=1", "checkpoint.every_steps=0",
                "logging.tensorboard=false", "logging.progress_bar=false"]
    tiny_grpo = ["optim.steps=2", "optim.warmup_steps=0", "rollout.prompts_per_step=2", "rollout.n=2",
                 "rollout.max_new_tokens=8", "algorithm.mini_batches=1", "optim.micro_batch_size=4",
                 "eval.num_samples=4", "eval.every_steps=0", "checkpoint.every_steps=0",
                 "logging.tensorboard=false", "logging.progress_bar=false"]
    done = subprocess.run(
        [sys.executable, str(QUICKSTART / "run.py"), "--engine", engine,
         "--sft-set", *tiny_sft, "--grpo-set", *tiny_grpo],
        cwd=tmp_path, capture_output=True, text=True, timeout=600,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "held-out accuracy" in done.stdout and "after GRPO" in done.stdout
    run = tmp_path / "runs" / ("quickstart-grpo" if engine == "hf" else "quickstart-grpo-sglang")
    summary = json.loads((run / "summary.json").read_text())
    assert summary["steps"] == 2 and summary["eval_before"]["accuracy"] is not None
    assert (run / "curves.png").stat().st_size > 0
    assert (tmp_path / "runs" / "quickstart-sft" / "final" / "config.json").is_file()
