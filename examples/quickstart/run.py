"""The quickstart: a tiny model learns 2-digit addition, then GRPO against the `math` verifier.

`make quickstart` runs it; about five to ten minutes on 2 CPU cores. Every stage is the
command a user would run:

1. Data (`make_data.py`): `{a}+{b}=?` prompts with the sum as the reference. In half of
   the warm-start completions the teacher hedges with a second, digit-swapped guess
   ("\\boxed{58} or maybe \\boxed{85}"), the way a model unsure of itself does.
2. SFT warm start: `referee train examples/configs/sft_tiny.yaml`. A character-level
   Llama-style model (800k parameters, built from a config, no download) learns the
   format and most of the arithmetic, and copies the hedging too.
3. GRPO: `referee train examples/configs/grpo_tiny.yaml --set model.path=<the SFT model>`,
   rewarded by `referee serve verifiers` started on loopback for the run
   (`target: local`). The `math` verifier grades the last boxed answer, so a hedge whose
   first answer was right scores 0. The verifier's signal is the only thing that tells
   the policy to commit to its answer.
4. The held-out accuracy (greedy, 200 problems never trained on) before and after GRPO,
   and where the run directory, metrics and plot are.

`--skip-sft` reuses an earlier warm start (runs/quickstart-sft/final) to rerun only GRPO;
`--sft-set` and `--grpo-set` pass `key=value` overrides to each stage (the smoke test
shrinks both runs to a few steps that way). `--engine sglang` samples GRPO's rollouts
from `referee serve rollout` (SGLang's HTTP protocol, started for the run and synced
from disk after every step: grpo_tiny_sglang.yaml) instead of in process.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
CONFIGS = ROOT / "examples" / "configs"
DATA = Path("runs/quickstart/data")
SFT_MODEL = Path("runs/quickstart-sft/final")
#: The GRPO config and its run directory (the config's `name`) for each rollout engine.
GRPO = {
    "hf": ("grpo_tiny.yaml", Path("runs/quickstart-grpo")),
    "sglang": ("grpo_tiny_sglang.yaml", Path("runs/quickstart-grpo-sglang")),
}


def stage(title: str, argv: list[str]) -> None:
    print(f"\n== {title}\n$ {' '.join(argv)}", flush=True)
    env = dict(os.environ)
    env.setdefault("DS_ACCELERATOR", "cpu" if not _has_cuda() else "cuda")
    t0 = time.perf_counter()
    done = subprocess.run(argv, env=env)
    if done.returncode != 0:
        sys.exit(f"quickstart: '{title}' failed with exit code {done.returncode}")
    print(f"== {title}: {time.perf_counter() - t0:.0f} s", flush=True)


def _has_cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def referee(*args: str) -> list[str]:
    return [sys.executable, "-m", "referee.cli", *args]


def overrides(pairs: list[str]) -> list[str]:
    return [arg for pair in pairs for arg in ("--set", pair)]


def accuracy(row: dict | None) -> float:
    if not row or row.get("accuracy") is None:
        sys.exit("quickstart: the GRPO run wrote no eval accuracy to summary.json")
    return float(row["accuracy"])


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--skip-sft", action="store_true", help=f"reuse {SFT_MODEL} from an earlier run")
    p.add_argument("--sft-set", nargs="*", default=[], metavar="KEY=VALUE", help="overrides for the SFT run")
    p.add_argument("--grpo-set", nargs="*", default=[], metavar="KEY=VALUE", help="overrides for the GRPO run")
    p.add_argument("--engine", choices=sorted(GRPO), default="hf",
                   help="GRPO rollouts in process (hf, default) or from a local SGLang-protocol server")
    args = p.parse_args()
    grpo_config, grpo_run = GRPO[args.engine]
    t0 = time.perf_counter()
    stage("data", [sys.executable, str(HERE / "make_data.py"), "--out", str(DATA)])
    if not (args.skip_sft and SFT_MODEL.is_dir()):
        stage("SFT warm start", referee("train", str(CONFIGS / "sft_tiny.yaml"), *overrides(args.sft_set)))
    stage("GRPO against the math verifier",
          referee("train", str(CONFIGS / grpo_config),
                  *overrides([f"model.path={SFT_MODEL}", *args.grpo_set])))

    summary = json.loads((grpo_run / "summary.json").read_text())
    before, after = accuracy(summary.get("eval_before")), accuracy(summary.get("eval_after"))
    print(f"\nheld-out accuracy (greedy, {grpo_run}/metrics.jsonl):")
    print(f"  SFT warm start  {before:.3f}")
    print(f"  after GRPO      {after:.3f}   ({100 * (after - before):+.1f} points)")
    print(f"curves: {grpo_run / 'curves.png'}   run directory: {grpo_run}")
    print(f"quickstart done in {time.perf_counter() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
