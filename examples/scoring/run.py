"""Scoring demo: start the verifiers service, score a few completions, stop it.

It runs the real pieces a trainer uses: `referee serve verifiers` as its own process
(on a free loopback port), the gRPC client, and three built-in rewards. Data is made
here in code. `make demo` runs it; it takes about ten seconds.
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

from referee.rewardsvc.client import SyncRewardClient
from referee.testing import serve_process

MATH = [
    ("What is 1/2 + 1/4?", r"Adding: 2/4 + 1/4 = 3/4. The answer is $\boxed{\frac{3}{4}}$.", "3/4"),
    ("What is 1/2 + 1/4?", r"That makes \boxed{0.75}", r"\frac{3}{4}"),
    ("Solve x + 3 = 5.", "x = 2, so the final answer is 2", "2"),
    ("Solve x + 3 = 5.", r"I think it is \boxed{3}", "2"),
    ("Expand (x+1)^2.", r"\boxed{x^2 + 2x + 1}", "(x+1)^2"),
    ("Pick the primes below 6.", r"\boxed{\{5, 3, 2\}}", r"\{2,3,5\}"),
    ("What is 2+2?", "I am not sure.", "4"),
]
FORMAT = [
    "<think>2+2 is 4</think><answer>4</answer>",
    "<answer>4</answer>",
    "The answer is 4.",
]


def make_samples(directory: Path) -> Path:
    path = directory / "math.jsonl"
    with path.open("w") as f:
        for i, (prompt, completion, gold) in enumerate(MATH):
            f.write(json.dumps({"id": f"m{i}", "prompt": prompt, "completion": completion, "reference": gold}) + "\n")
    return path


def show(title: str, rows: list[tuple[str, object]]) -> None:
    print(f"\n{title}")
    for text, score in rows:
        value = "  --" if score.value is None else f"{score.value:4.2f}"  # type: ignore[attr-defined]
        print(f"  {value}  {score.status.value:<13} {text[:58]!r}")  # type: ignore[attr-defined]


def main() -> int:
    with tempfile.TemporaryDirectory() as tmp, serve_process(["verifiers", "--workers", "2"]) as server:
        print(f"verifiers service up at {server.address}")
        samples = [json.loads(line) for line in make_samples(Path(tmp)).read_text().splitlines()]
        with SyncRewardClient(server.address, timeout_s=60) as client:
            print("rewards offered:", ", ".join(r.name for r in client.list_rewards()))
            scores = client.score("math", samples)
            show("math (reward 1.0 when the final answer equals the reference)",
                 [(s["completion"], sc) for s, sc in zip(samples, scores, strict=True)])
            fmt = client.score("format", [{"completion": c} for c in FORMAT], {"partial_credit": True})
            show("format (<think>..</think><answer>..</answer>, partial credit)", list(zip(FORMAT, fmt, strict=True)))
            missing = client.score("math", [{"id": "no-completion", "reference": "4"}])
            show("a sample with no completion is not scored as 0", [("(no completion)", missing[0])])
            print(f"  reason: {missing[0].reason}")
        print(f"\nthe same from a shell:\n  referee score --target {server.address} --reward math --input FILE.jsonl")
    return 0


if __name__ == "__main__":
    sys.exit(main())
