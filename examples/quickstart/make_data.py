"""The quickstart's task: multi-digit addition, verified by the `math` reward.

Rows are `{id, prompt, reference, completion}`: `reference` is the sum (what the
verifiers service checks), `completion` the teacher's answer for the SFT warm start.
Train and held-out eval problems never share an (a, b) pair. Everything is made here
from a seed; nothing is downloaded.

The teacher hedges. On problems with a carry it adds, with probability
`--hedge-fraction` (0.8 by default), a second guess with the digits swapped:
``\\boxed{125} or maybe \\boxed{521}``. A model trained on it copies the habit. The
`math` verifier grades the last boxed answer, so a hedge scores 0 even when the first
answer was right. Nothing in the SFT data says which habit is better; the verifier's
reward is what teaches the policy to commit. This is the quickstart's stand-in for
what RLVR does at scale: SFT data carries a teacher's habits, and the verifier keeps
the ones that pay.

    python examples/quickstart/make_data.py --out runs/quickstart/data
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path


def problem(rng: random.Random, max_digits: int) -> tuple[int, int]:
    da, db = rng.randint(1, max_digits), rng.randint(1, max_digits)
    return rng.randint(10 ** (da - 1), 10**da - 1), rng.randint(10 ** (db - 1), 10**db - 1)


def has_carry(a: int, b: int) -> bool:
    while a or b:
        if a % 10 + b % 10 >= 10:
            return True
        a, b = a // 10, b // 10
    return False


def completion(a: int, b: int, hedge: bool) -> str:
    """The teacher's answer; a hedge appends the sum with its digits reversed, when that
    is a different number (so a hedge is never right by accident)."""
    answer = f"\\boxed{{{a + b}}}"
    swapped = int(str(a + b)[::-1])
    if hedge and swapped != a + b:
        answer += f" or maybe \\boxed{{{swapped}}}"
    return answer


def row(i: int, a: int, b: int, hedge: bool) -> dict[str, str]:
    return {"id": f"add-{i}", "prompt": f"{a}+{b}=?", "reference": str(a + b), "completion": completion(a, b, hedge)}


def make(out: Path, train: int, eval_rows: int, max_digits: int, seed: int,
         hedge_fraction: float = 0.0) -> tuple[Path, Path]:
    """Writes train.jsonl and eval.jsonl under `out`; `hedge_fraction` 0 gives a teacher
    that never hedges (what the tests and the trainer benchmark use)."""
    rng = random.Random(seed)
    seen: set[tuple[int, int]] = set()
    rows = []
    while len(rows) < train + eval_rows:
        a, b = problem(rng, max_digits)
        if (a, b) in seen:
            continue
        seen.add((a, b))
        hedge = has_carry(a, b) and rng.random() < hedge_fraction
        rows.append(row(len(rows), a, b, hedge))
    out.mkdir(parents=True, exist_ok=True)
    paths = out / "train.jsonl", out / "eval.jsonl"
    for path, part in zip(paths, (rows[:train], rows[train:]), strict=True):
        path.write_text("".join(json.dumps(r) + "\n" for r in part))
    return paths


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=Path("runs/quickstart/data"))
    p.add_argument("--train", type=int, default=4000)
    p.add_argument("--eval", type=int, default=200)
    p.add_argument("--max-digits", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--hedge-fraction", type=float, default=0.8,
                   help="chance that the teacher hedges on a problem with a carry (0: never)")
    a = p.parse_args()
    if not 0.0 <= a.hedge_fraction <= 1.0:
        p.error(f"--hedge-fraction must be in [0, 1], got {a.hedge_fraction}")
    train, held_out = make(a.out, a.train, a.eval, a.max_digits, a.seed, a.hedge_fraction)
    print(f"wrote {train} and {held_out}")


if __name__ == "__main__":
    main()
