"""The DPO recipe on the synthetic preference set with an untrained 2-layer policy, on CPU:
held-out implicit reward margins go from exactly 0 (policy = reference) to > 0 on at
least 80% of the pairs; the precomputed reference gives the frozen copy's numbers; IPO
and conservative DPO run through the same loop."""

from __future__ import annotations

import json

import pytest
import torch
import yaml
from recipe_helpers import make_preference_data, restore_threads
from transformers import AutoModelForCausalLM

from referee.trainer import tiny
from referee.trainer.config import ConfigError, load_config
from referee.trainer.preference_data import PreferencePair
from referee.trainer.recipes import train
from referee.trainer.recipes.dpo import REFERENCE_FILE, pair_tensors

__all__ = ["restore_threads"]


def dpo_config(tmp_path, name: str = "run", **sections):
    data = tmp_path / "data"
    if not (data / "train.jsonl").exists():
        make_preference_data(data)
    cfg = {
        "recipe": "dpo",
        "name": "test-dpo",
        "model": {"path": "tiny:tiny"},
        "data": {"train_path": str(data / "train.jsonl"), "eval_path": str(data / "eval.jsonl")},
        "preference": {"beta": 0.1},
        "optim": {
            "lr": 1e-3,
            "steps": 30,
            "batch_size": 32,
            "micro_batch_size": 16,
            "warmup_steps": 5,
            "scheduler": "cosine",
        },
        "deepspeed": {"enabled": True, "zero_stage": 0},
        "checkpoint": {"every_steps": 0, "keep_last": 1},
        "logging": {"run_dir": str(tmp_path / name), "tensorboard": False, "progress_bar": False},
        "eval": {"every_steps": 0, "num_samples": 100},
    }
    for key, value in sections.items():
        cfg[key] = {**cfg.get(key, {}), **value}
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.mark.slow
def test_dpo_makes_held_out_margins_positive_on_80_percent(tmp_path, restore_threads):
    summary = train(load_config(dpo_config(tmp_path)))
    before, after = summary["eval_before"], summary["eval_after"]
    # Before training the policy is its reference: every margin is exactly 0 (a tie).
    assert before["step"] == 0 and before["accuracy"] == 0.0 and before["margin_mean"] == 0.0
    assert before["loss"] == pytest.approx(0.6931472, abs=1e-5)  # log 2
    assert after["step"] == 30 and after["pairs"] == 100
    assert after["accuracy"] >= 0.8, after
    assert after["margin_mean"] > 0 and after["chosen_reward"] > after["rejected_reward"]
    assert after["loss"] < before["loss"]

    # The exported policy moved away from the untrained model it started from.
    final = AutoModelForCausalLM.from_pretrained(tmp_path / "run" / "final")
    start = tiny.build_model("tiny", tokenizer=tiny.build_tokenizer(), seed=0)
    moved = [
        name
        for name, p in final.state_dict().items()
        if not torch.equal(p, start.state_dict()[name])
    ]
    assert len(moved) >= 0.9 * len(final.state_dict())


def test_precomputed_reference_matches_the_frozen_copy(tmp_path, restore_threads):
    short = {"optim": {"steps": 2, "warmup_steps": 0}, "deepspeed": {"enabled": False}, "eval": {"num_samples": 16}}
    train(load_config(dpo_config(tmp_path, "copy", **short)))
    train(
        load_config(
            dpo_config(tmp_path, "table", **short, preference={"precompute_reference": True})
        )
    )
    assert (tmp_path / "table" / "checkpoints" / REFERENCE_FILE).exists()
    a, b = (
        [json.loads(x) for x in (tmp_path / n / "metrics.jsonl").read_text().splitlines()]
        for n in ("copy", "table")
    )
    for ra, rb in zip(a, b, strict=True):
        for key in ("loss", "eval/loss", "eval/margin_mean", "margin_mean"):
            if key in ra:
                assert rb[key] == pytest.approx(ra[key], abs=1e-5), key


@pytest.mark.parametrize(
    "preference", [{"loss_type": "ipo", "beta": 0.5}, {"label_smoothing": 0.1}]
)
def test_ipo_and_conservative_dpo_train(tmp_path, restore_threads, preference):
    cfg = dpo_config(
        tmp_path,
        preference=preference,
        optim={"steps": 3, "warmup_steps": 0},
        deepspeed={"enabled": False},
        eval={"num_samples": 16},
    )
    summary = train(load_config(cfg))
    assert summary["status"] == "completed" and summary["steps"] == 3
    assert summary["eval_after"]["margin_mean"] != 0.0


def test_pair_tensors_mask_the_completion_and_eos(tmp_path) -> None:
    cfg = load_config(dpo_config(tmp_path))
    tok = tiny.build_tokenizer()
    pairs = [
        PreferencePair("a", "1+2=?", "\\boxed{3}", "3"),
        PreferencePair("b", "9+9=?", "18", "x"),
    ]
    t = pair_tensors(cfg, tok, pairs)
    for i, text in enumerate(["\\boxed{3}", "18", "3", "x"]):
        want = tok(text, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
        assert t.input_ids[i][t.completion_mask[i]].tolist() == want
    assert not (t.completion_mask & (t.attention_mask == 0)).any()


def test_dpo_config_mistakes_name_their_key(tmp_path) -> None:
    path = dpo_config(tmp_path)
    cases = {
        "preference.beta=0": "preference.beta",
        "preference.label_smoothing=0.5": "preference.label_smoothing",
        "preference.loss_type=hinge": "preference.loss_type",
        "optim.micro_batch_size=5": "optim.micro_batch_size",
    }
    for override, key in cases.items():
        with pytest.raises(ConfigError) as e:
            load_config(path, [override])
        assert e.value.key == key, override
    with pytest.raises(ConfigError) as e:
        load_config(path, ["preference.loss_type=ipo", "preference.label_smoothing=0.1"])
    assert e.value.key == "preference.label_smoothing"
