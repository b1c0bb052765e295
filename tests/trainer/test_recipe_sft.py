"""The SFT recipe on the quickstart's arithmetic data with a 2-layer model: the loss
(on completion tokens only) goes down, and the final model is exported."""

from __future__ import annotations

import json

import pytest
import torch
import yaml
from recipe_helpers import make_data, restore_threads
from transformers import AutoModelForCausalLM

from referee.trainer import tiny
from referee.trainer.config import load_config
from referee.trainer.recipes import train
from referee.trainer.recipes.common import set_threads
from referee.trainer.recipes.sft import sft_tensors

__all__ = ["restore_threads"]


def _config(tmp_path, **optim):
    train_path, eval_path = make_data(tmp_path / "data", train=128)
    cfg = {
        "recipe": "sft",
        "name": "test-sft",
        "model": {"path": "tiny:tiny"},
        "data": {"train_path": str(train_path), "completion_field": "completion"},
        "optim": {
            "lr": 3e-3,
            "steps": 20,
            "batch_size": 16,
            "micro_batch_size": 8,
            "warmup_steps": 2,
            "scheduler": "cosine",
            **optim,
        },
        "deepspeed": {"enabled": False},
        "checkpoint": {"every_steps": 10, "keep_last": 1},
        "logging": {"run_dir": str(tmp_path / "run"), "tensorboard": False, "progress_bar": False},
        "eval": {"enabled": False},
    }
    path = tmp_path / "sft.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_loss_is_on_completion_tokens_only(tmp_path, restore_threads):
    set_threads(None)
    cfg = load_config(_config(tmp_path))
    tok = tiny.build_tokenizer()
    from referee.trainer.data import PromptRow

    rows = [PromptRow("a", "1+2=?", "3", {}, "\\boxed{3}"), PromptRow("b", "10+20=?", "", {}, "30")]
    ids, attn, target = sft_tensors(cfg, tok, rows)
    for i, row in enumerate(rows):
        want = tok(row.completion, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
        assert ids[i][target[i]].tolist() == want
        assert target[i].sum() == len(want) and attn[i].sum() > target[i].sum()
    assert not (target & (attn == 0)).any()


def test_sft_loss_decreases_and_final_model_is_exported(tmp_path, restore_threads):
    summary = train(load_config(_config(tmp_path)))
    rows = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in rows]
    assert len(losses) == 20 and all(torch.isfinite(torch.tensor(losses)))
    assert sum(losses[-5:]) / 5 < 0.8 * losses[0], losses
    assert summary["steps"] == 20 and summary["wall_s"] > 0
    assert (tmp_path / "run" / "curves.png").exists()
    AutoModelForCausalLM.from_pretrained(tmp_path / "run" / "final")
    assert [p.name for p in (tmp_path / "run" / "checkpoints").glob("step_*")] == ["step_00000020"]


@pytest.mark.parametrize("world", [1])
def test_sft_resume_continues_the_same_losses(tmp_path, restore_threads, world):
    import shutil

    config = _config(tmp_path, steps=4)
    cfg = load_config(config, ["checkpoint.every_steps=2", "checkpoint.keep_last=0"])
    train(cfg)
    shutil.copytree(tmp_path / "run", tmp_path / "b")
    shutil.rmtree(tmp_path / "b" / "checkpoints" / "step_00000004")
    resumed = load_config(config, ["checkpoint.every_steps=2", f"logging.run_dir={tmp_path / 'b'}"])
    train(resumed, resume=True)
    a = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    b = [json.loads(x) for x in (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in b] == [1, 2, 3, 4]
    for ra, rb in zip(a[2:], b[2:], strict=True):
        assert rb["loss"] == pytest.approx(ra["loss"], abs=1e-5)
