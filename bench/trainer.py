"""Benchmark: where a GRPO step's time goes, and how much reward latency overlap hides.

1. Step breakdown: a few real steps of the GRPO recipe on the quickstart model and task
   (`referee train examples/configs/grpo_tiny.yaml`, a local `math` verifiers service),
   read back from the run's metrics.jsonl: generation, reward, training seconds, tokens/s.
2. Overlap: the same engine and batch scored two ways against a reward service whose
   scoring takes about as long as generation (a verifier that sleeps a calibrated time
   per sample, one worker): groups sent while later groups are still generated
   (`score_while_generating`, what the trainer does) against scoring after generation
   ends (`score_after_generation`). Hidden fraction = 1 - exposed / sequential scoring
   time, where exposed is the reward time left after generation finishes.

Prints one JSON object. Target (issue 4): >= 80% of reward latency hidden.
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
SLOW_REWARD = '''
import time
from referee import Result, Sample, verifier

@verifier(name="slow_exact", version="1")
def slow_exact(sample: Sample, *, delay_s: float = 0.01) -> Result:
    """exact match after sleeping `delay_s` (a stand-in for a slow reward)."""
    time.sleep(delay_s)
    return Result.ok(float((sample.completion or "").strip() == sample.reference.strip()))
'''


def step_breakdown(work: Path, steps: int) -> dict:
    from referee.trainer.config import load_config
    from referee.trainer.recipes import train

    sys.path.insert(0, str(ROOT / "examples" / "quickstart"))
    from make_data import make

    train_path, eval_path = make(work / "data", 2000, 50, 2, 0)
    cfg = load_config(ROOT / "examples" / "configs" / "grpo_tiny.yaml", [
        "model.path=tiny:small", f"data.train_path={train_path}", f"data.eval_path={eval_path}",
        f"optim.steps={steps}", "eval.enabled=false", f"logging.run_dir={work / 'run'}",
        f"checkpoint.dir={work / 'ckpt'}", "checkpoint.every_steps=0",
    ])
    train(cfg)
    rows = [json.loads(x) for x in (work / "run" / "metrics.jsonl").read_text().splitlines()]
    rows = [r for r in rows if r.get("step", 0) >= 2 and r.get("time/generate_s") is not None]  # skip warm-up

    def mean(key: str) -> float | None:
        vals = [r[key] for r in rows if r.get(key) is not None]
        return round(statistics.fmean(vals), 4) if vals else None

    step_s = mean("time/step_s")
    gen_s, reward_s = mean("time/generate_s"), mean("time/reward_s")
    exposed = mean("time/scoring_exposed_s") or 0.0
    return {
        "steps_measured": len(rows),
        "step_s": step_s,
        "generate_s": gen_s,
        "reward_s": reward_s,
        "reward_exposed_s": exposed,
        "train_s": round(step_s - gen_s - exposed, 4) if step_s and gen_s is not None else None,
        "tokens_per_s": mean("tokens_per_s"),
        "reward_hidden_fraction": mean("reward/hidden_fraction"),
    }


def overlap(work: Path, prompts: int, n: int, rounds: int) -> dict:
    from referee.trainer.config import RewardSourceConfig
    from referee.trainer.data import PromptRow
    from referee.trainer.local_services import start_service
    from referee.trainer.rewards import RewardScorer
    from referee.trainer.rollout.base import SamplingParams
    from referee.trainer.rollout.hf import HFEngine
    from referee.trainer.tiny import build_model, build_tokenizer, encode_chat

    (work / "slow_reward.py").write_text(SLOW_REWARD)
    tok = build_tokenizer()
    model = build_model("small", tokenizer=tok, seed=0)
    engine = HFEngine(model, tok, micro_batch_prompts=1)  # groups finish one by one
    rows = [PromptRow(id=f"p{i}", prompt=f"{i}+{i + 1}=?", reference=str(2 * i + 1)) for i in range(prompts)]
    ids = [encode_chat(tok, [{"role": "user", "content": r.prompt}]) for r in rows]
    params = SamplingParams(n=n, temperature=1.0, max_new_tokens=16, seed=0)

    engine.generate(ids[:1], params)  # warm
    t0 = time.perf_counter()
    engine.generate(ids, params)
    gen_s = time.perf_counter() - t0
    delay = gen_s / (prompts * n)  # one worker: sequential scoring takes about gen_s

    service = start_service("verifiers", ["--no-builtins", "--no-entrypoints", "--cache-size", "0", "--load", "slow_reward:slow_exact"],
                            workers=1, env={"PYTHONPATH": str(work)}, cwd=work)
    src = RewardSourceConfig(target="local", reward="slow_exact", name="slow", params={"delay_s": delay})
    results: dict[str, list] = {"overlapped": [], "sequential": []}
    try:
        with RewardScorer([src], {"slow": [service.address]}) as scorer:
            # Calibrate once more against the service as it runs (IPC, worker wake-ups):
            # sequential scoring should take about as long as generation.
            probe = scorer.score_after_generation(engine, rows, ids, params).timing
            delay *= probe.generation_s / max(probe.scoring_s, 1e-6)
            for s in scorer.sources:
                s.params["delay_s"] = delay
            for _ in range(rounds):  # alternate, so machine noise hits both
                for kind, run in (("overlapped", scorer.score_while_generating),
                                  ("sequential", scorer.score_after_generation)):
                    batch = run(engine, rows, ids, params)
                    results[kind].append(batch.timing)
    finally:
        service.stop()
    seq_reward = statistics.fmean(t.scoring_s for t in results["sequential"])
    exposed = statistics.fmean(t.exposed_s for t in results["overlapped"])
    return {
        "prompts": prompts,
        "n": n,
        "rounds": rounds,
        "generation_s": round(statistics.fmean(t.generation_s for t in results["overlapped"]), 4),
        "reward_vs_generation": round(seq_reward / statistics.fmean(t.generation_s for t in results["sequential"]), 3),
        "reward_delay_per_sample_s": round(delay, 5),
        "sequential": {"reward_s": round(seq_reward, 4),
                       "total_s": round(statistics.fmean(t.total_s for t in results["sequential"]), 4)},
        "overlapped": {"exposed_reward_s": round(exposed, 4),
                       "total_s": round(statistics.fmean(t.total_s for t in results["overlapped"]), 4)},
        "hidden_fraction": round(1 - exposed / seq_reward, 4) if seq_reward > 0 else None,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=6, help="GRPO steps for the breakdown (first 2 skipped)")
    p.add_argument("--prompts", type=int, default=16)
    p.add_argument("--n", type=int, default=8)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--quick", action="store_true", help="smoke run: 3 steps, 8 prompts, 1 round")
    a = p.parse_args()
    if a.quick:
        a.steps, a.prompts, a.rounds = 3, 8, 1
    torch.set_num_threads(1)
    os.environ.setdefault("DS_ACCELERATOR", "cpu")
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        over = overlap(work, a.prompts, a.n, a.rounds)
        steps = step_breakdown(work, a.steps)
    hidden = over["hidden_fraction"]
    print(json.dumps({
        "bench": "trainer",
        "model": "tiny:small (quickstart)",
        "step_breakdown": steps,
        "overlap": over,
        "targets": {"hidden_fraction": ">= 0.8"},
        "pass": {"hidden_fraction": hidden is not None and hidden >= 0.8},
        "env": {"python": platform.python_version(), "torch": torch.__version__, "cpu_count": os.cpu_count(),
                "quick": a.quick, "loadavg_1m": round(os.getloadavg()[0], 2)},
    }))


if __name__ == "__main__":
    main()
