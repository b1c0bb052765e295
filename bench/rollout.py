"""Benchmark: a GRPO step with the in-process `hf` engine against the `sglang` engine and a
local `referee serve rollout`, synchronous against one-step off-policy.

Three runs of the quickstart (`examples/configs/grpo_tiny.yaml`, tiny:small, the
quickstart data from `examples/quickstart/make_data.py`, a local `math` verifiers
service), a few steps each:

  hf          rollouts in the trainer's process, from the policy module itself;
  sglang      rollouts from a `referee serve rollout` started for the run, a disk
              weight sync after every batch (rollout.engine=sglang, urls [local]);
  sglang_off  the same with rollout.off_policy_steps=1: batch k+1 is generated and
              scored by the server while the trainer trains on batch k.

Read back from each run's metrics.jsonl, warm-up steps skipped: the mean step time and
its split. `generate_s` and `reward_s` are the batch's own generation and scoring time
(off-policy, spent in the background); `rollout_wait_s` is the time the trainer waited
for a batch (all of it when synchronous); `logprobs_s` the fresh pi_old pass, `train_s`
the optimiser steps, `sync_s` the weight sync. `tokens_per_s` is sampled tokens per
second of step time (end to end); `rollout_tokens_per_s` per second of generation.
On CPU the server and the trainer each run one torch thread, so overlap needs two free
cores; `env.loadavg_1m` tells how busy the machine was.

Prints one JSON object. Target (issue 5): sglang_off faster than sglang (speedup > 1).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent

MODES = {
    "hf": [],
    "sglang": ["rollout.engine=sglang", "rollout.sglang.urls=[local]"],
    "sglang_off": [
        "rollout.engine=sglang",
        "rollout.sglang.urls=[local]",
        "rollout.off_policy_steps=1",
    ],
}


def run_mode(
    work: Path, data: tuple[Path, Path], extra: list[str], steps: int, warmup: int, prompts: int
) -> dict:
    from referee.trainer.config import load_config
    from referee.trainer.recipes import train

    train_path, eval_path = data
    cfg = load_config(
        ROOT / "examples" / "configs" / "grpo_tiny.yaml",
        [
            "model.path=tiny:small",
            f"data.train_path={train_path}",
            f"data.eval_path={eval_path}",
            f"optim.steps={steps}",
            f"rollout.prompts_per_step={prompts}",
            "eval.enabled=false",
            f"logging.run_dir={work / 'run'}",
            "logging.tensorboard=false",
            f"checkpoint.dir={work / 'ckpt'}",
            "checkpoint.every_steps=0",
            "checkpoint.export_final=false",
            *extra,
        ],
    )
    t0 = time.perf_counter()
    train(cfg)
    wall = time.perf_counter() - t0
    rows = [json.loads(x) for x in (work / "run" / "metrics.jsonl").read_text().splitlines()]
    rows = [r for r in rows if r.get("step", 0) > warmup and "time/step_s" in r]

    def mean(key: str) -> float | None:
        vals = [r[key] for r in rows if r.get(key) is not None]
        return round(statistics.fmean(vals), 4) if vals else None

    completions = cfg.rollout.batch_completions
    e2e = [r["response_length/mean"] * completions / r["time/step_s"] for r in rows]
    return {
        "steps_measured": len(rows),
        "step_s": mean("time/step_s"),
        "generate_s": mean("time/generate_s"),
        "reward_s": mean("time/reward_s"),
        "rollout_wait_s": mean("time/rollout_s"),
        "logprobs_s": mean("time/logprobs_s"),
        "train_s": mean("time/train_s"),
        "sync_s": mean("time/sync_s") or 0.0,
        "tokens_per_s": round(statistics.fmean(e2e), 1) if e2e else None,
        "rollout_tokens_per_s": mean("tokens_per_s"),
        "staleness_max": max((r.get("rollout/staleness_max", 0) for r in rows), default=None),
        "run_wall_s": round(wall, 2),
    }


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--steps", type=int, default=12, help="GRPO steps per mode")
    p.add_argument("--warmup", type=int, default=2, help="first steps left out of the means")
    p.add_argument("--prompts", type=int, default=16, help="rollout.prompts_per_step (x n=8)")
    p.add_argument(
        "--modes", default=",".join(MODES), help="comma-separated subset of " + ",".join(MODES)
    )
    p.add_argument("--quick", action="store_true", help="smoke run: 3 steps, 1 warm-up, 8 prompts")
    a = p.parse_args()
    if a.quick:
        a.steps, a.warmup, a.prompts = 3, 1, 8
    modes = [m for m in a.modes.split(",") if m]
    unknown = sorted(set(modes) - set(MODES))
    if unknown:
        p.error(f"unknown modes {unknown}; choose from {', '.join(MODES)}")
    torch.set_num_threads(1)
    os.environ.setdefault("DS_ACCELERATOR", "cpu")
    sys.path.insert(0, str(ROOT / "examples" / "quickstart"))
    from make_data import make

    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        data = make(work / "data", 2000, 50, 2, 0)
        for mode in modes:
            results[mode] = run_mode(work / mode, data, MODES[mode], a.steps, a.warmup, a.prompts)

    def ratio(slow: str, fast: str) -> float | None:
        if slow in results and fast in results and results[fast]["step_s"]:
            return round(results[slow]["step_s"] / results[fast]["step_s"], 3)
        return None

    speedup = ratio("sglang", "sglang_off")
    print(
        json.dumps(
            {
                "bench": "rollout",
                "model": "tiny:small (quickstart, grpo_tiny.yaml)",
                "batch": {"prompts_per_step": a.prompts, "n": 8, "max_new_tokens": 40},
                "steps": a.steps,
                "warmup_steps": a.warmup,
                "modes": results,
                "speedup_off_policy_vs_sync": speedup,
                "sglang_vs_hf_step_ratio": ratio("sglang", "hf"),
                "targets": {"speedup_off_policy_vs_sync": "> 1"},
                "pass": {"speedup_off_policy_vs_sync": speedup is not None and speedup > 1},
                "env": {
                    "python": platform.python_version(),
                    "torch": torch.__version__,
                    "cpu_count": os.cpu_count(),
                    "quick": a.quick,
                    "loadavg_1m": round(os.getloadavg()[0], 2),
                },
            }
        )
    )


if __name__ == "__main__":
    main()
