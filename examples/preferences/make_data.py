"""A synthetic preference set for the rm and dpo recipes: addition answers, good and bad.

Each row is `{id, prompt, chosen, rejected}` with prompt `{a}+{b}=?` (the quickstart's
task) and chosen the committed, correct answer `\\boxed{a+b}`. The rejected answer has
one of these defects, drawn per row from `kinds` (the first three by default):

- `hedge`: the right answer followed by a second guess with its digits reversed,
  ``\\boxed{125} or maybe \\boxed{521}`` (the quickstart teacher's habit);
- `unboxed`: the right number without the box the `math` verifier looks for;
- `echo`: a boxed copy of the first operand instead of the sum (a wrong answer that
  only reading the prompt reveals);
- `wrong`: a boxed sum off by 1 to 3 (not drawn by default: telling it apart takes
  arithmetic, which a 2-layer model does not pick up in the few hundred steps the tests
  can afford; a reward model trained on all four sits near 85% held-out accuracy).

The default three are learnt by a 2-layer character-level model in a few hundred steps
on a CPU, which is what the recipe tests need. Train and held-out rows never share an
(a, b) pair.
Everything comes from the seed; nothing is downloaded.

    python examples/preferences/make_data.py --out runs/preferences/data
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

KINDS = ("hedge", "unboxed", "echo", "wrong")
DEFAULT_KINDS = ("hedge", "unboxed", "echo")


def rejected(rng: random.Random, a: int, b: int, kind: str) -> str:
    """The dispreferred answer to `a+b=?` with defect `kind` (never the right one)."""
    total = a + b
    if kind == "hedge":
        swapped = int(str(total)[::-1])
        if swapped == total:  # a palindrome cannot hedge visibly: swap in a wrong digit
            swapped = total + rng.choice((1, 2, 3))
        return f"\\boxed{{{total}}} or maybe \\boxed{{{swapped}}}"
    if kind == "unboxed":
        return str(total)
    if kind == "echo":
        return f"\\boxed{{{a if a != total else a + 1}}}"
    if kind == "wrong":
        off = rng.choice((-3, -2, -1, 1, 2, 3))
        wrong = total + off if total + off >= 0 else total - off
        return f"\\boxed{{{wrong}}}"
    raise ValueError(f"unknown defect {kind!r}; choose one of {', '.join(KINDS)}")


def make(
    out: Path,
    train: int = 2000,
    eval_rows: int = 200,
    max_digits: int = 2,
    seed: int = 0,
    kinds: tuple[str, ...] = DEFAULT_KINDS,
) -> tuple[Path, Path]:
    """Writes train.jsonl and eval.jsonl under `out`; returns their paths. Each row's
    defect is drawn uniformly from `kinds`."""
    if (10**max_digits) ** 2 < 2 * (train + eval_rows):
        raise ValueError(f"{max_digits}-digit operands cannot give {train + eval_rows} pairs")
    rng = random.Random(seed)
    seen: set[tuple[int, int]] = set()
    rows = []
    while len(rows) < train + eval_rows:
        a, b = rng.randrange(10**max_digits), rng.randrange(10**max_digits)
        if (a, b) in seen:
            continue
        seen.add((a, b))
        kind = rng.choice(kinds)
        rows.append(
            {
                "id": f"pref-{len(rows)}",
                "prompt": f"{a}+{b}=?",
                "chosen": f"\\boxed{{{a + b}}}",
                "rejected": rejected(rng, a, b, kind),
                "defect": kind,
            }
        )
    out.mkdir(parents=True, exist_ok=True)
    paths = out / "train.jsonl", out / "eval.jsonl"
    for path, part in zip(paths, (rows[:train], rows[train:]), strict=True):
        path.write_text("".join(json.dumps(r) + "\n" for r in part))
    return paths


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--out", type=Path, default=Path("runs/preferences/data"))
    p.add_argument("--train", type=int, default=2000)
    p.add_argument("--eval", type=int, default=200)
    p.add_argument("--max-digits", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--kinds", default=",".join(DEFAULT_KINDS), help=f"defects to draw from ({KINDS})"
    )
    args = p.parse_args()
    kinds = tuple(k.strip() for k in args.kinds.split(",") if k.strip())
    paths = make(args.out, args.train, args.eval, args.max_digits, args.seed, kinds)
    print(f"wrote {paths[0]} ({args.train} pairs) and {paths[1]} ({args.eval} pairs)")


if __name__ == "__main__":
    main()
