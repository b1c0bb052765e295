"""Shared set-up for the recipe tests: quickstart data, a test verifier, tiny configs."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

ROOT = Path(__file__).resolve().parents[2]

# A reward with spread on an untrained model (the fraction of digits in the completion),
# and a failure on about a quarter of the completions: INVALID_INPUT, which the trainer
# must mask, never score as 0.
VERIFIER = """
from referee import InvalidInput, Result, Sample, verifier


@verifier(name="digits", version="1")
def digits(sample: Sample) -> Result:
    text = sample.completion or ""
    if sum(map(ord, text)) % 4 == 0:
        raise InvalidInput("refused on purpose by the test verifier")
    return Result.ok(sum(c.isdigit() for c in text) / max(len(text), 1))
"""


def make_data(out: Path, train: int = 64, eval_rows: int = 8) -> tuple[Path, Path]:
    spec = importlib.util.spec_from_file_location(
        "quickstart_make_data", ROOT / "examples/quickstart/make_data.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.make(out, train, eval_rows, 2, 0)


def make_preference_data(out: Path, train: int = 1000, eval_rows: int = 200) -> tuple[Path, Path]:
    """The synthetic preference set of examples/preferences/make_data.py."""
    spec = importlib.util.spec_from_file_location(
        "preferences_make_data", ROOT / "examples/preferences/make_data.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.make(out, train, eval_rows, 2, 0)


def write_verifier(directory: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """Writes the test verifier module where the local service can import it."""
    (directory / "recipe_test_reward.py").write_text(VERIFIER)
    path = os.environ.get("PYTHONPATH", "")
    monkeypatch.setenv("PYTHONPATH", f"{directory}{os.pathsep}{path}" if path else str(directory))
    monkeypatch.syspath_prepend(str(directory))
    return "recipe_test_reward:digits"


def grpo_config(tmp: Path, data: tuple[Path, Path], load: str, **sections: Any) -> Path:
    train, held_out = data
    cfg: dict[str, Any] = {
        "recipe": "grpo",
        "name": "test-grpo",
        "seed": 0,
        "model": {"path": "tiny:tiny"},
        "data": {"train_path": str(train), "eval_path": str(held_out)},
        "rollout": {"n": 4, "prompts_per_step": 4, "max_new_tokens": 8},
        "reward": {
            "sources": [
                {
                    "target": "local",
                    "reward": "digits",
                    "local_args": ["--workers", "1", "--load", load],
                }
            ]
        },
        "algorithm": {"mini_batches": 2},
        "optim": {"lr": 1e-2, "steps": 2, "micro_batch_size": 4},
        "deepspeed": {"enabled": False},
        "checkpoint": {"every_steps": 1, "keep_last": 0},
        "logging": {"run_dir": str(tmp / "run"), "tensorboard": False, "progress_bar": False},
        "eval": {"num_samples": 4, "reward": "digits"},
    }
    for key, value in sections.items():
        cfg[key] = {**cfg.get(key, {}), **value} if isinstance(value, dict) else value
    path = tmp / "grpo.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.fixture
def restore_threads():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)
