"""The quickstart's task: multi-digit addition, verified by the `math` reward.

Rows are `{id, prompt, reference, completion}`: `reference` is the sum (what the
verifiers service checks), `completion` a worked answer for the SFT warm start. Train
and held-out eval problems never share an (a, b) pair. Everything is made here from a
seed; nothing is downloaded.

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


def row(i: int, a: int, b: int) -> dict[str, str]:
    return {
        "id": f"add-{i}",
        "prompt": f"{a}+{b}=?",
        "reference": str(a + b),
        "completion": f"\\boxed{{{a + b}}}",
    }


def make(out: Path, train: int, eval_rows: int, max_digits: int, seed: int) -> tuple[Path, Path]:
    rng = random.Random(seed)
    seen: set[tuple[int, int]] = set()
    rows = []
    while len(rows) < train + eval_rows:
        a, b = problem(rng, max_digits)
        if (a, b) in seen:
            continue
        seen.add((a, b))
        rows.append(row(len(rows), a, b))
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
    a = p.parse_args()
    train, held_out = make(a.out, a.train, a.eval, a.max_digits, a.seed)
    print(f"wrote {train} and {held_out}")


if __name__ == "__main__":
    main()
