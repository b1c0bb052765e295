"""The GRPO recipe end to end on a 2-layer model: the real entrypoint, a real verifiers
service started by the trainer (`target: local`) with a custom verifier that fails on
some completions, a few steps.

Checks: the run directory (metrics rows, summary, plot, a loadable final model), that
parameters changed, that failed rewards are masked (NaN rewards, out of the loss mask)
and counted, the CLI with `--set` and its errors, `referee eval`, resume reproducing the
uninterrupted run's loss, and the GSPO / DAPO / KL / multi-epoch paths.
"""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from recipe_helpers import grpo_config, make_data, restore_threads, write_verifier
from transformers import AutoModelForCausalLM

from referee import cli
from referee.trainer import distributed, tiny
from referee.trainer.config import load_config
from referee.trainer.recipes import grpo, train

__all__ = ["restore_threads"]

STEP_KEYS = {
    "step",
    "loss",
    "reward/mean",
    "reward_status/digits/OK",
    "reward_status/digits/INVALID_INPUT",
    "reward_status/masked_samples",
    "entropy",
    "policy/clip_fraction",
    "policy/approx_kl",
    "grad_norm",
    "lr",
    "tokens_per_s",
    "time/generate_s",
    "time/reward_s",
    "time/train_s",
    "reward/hidden_fraction",
}


@pytest.fixture(scope="module")
def grpo_run(tmp_path_factory):
    """One 2-step run through `referee train` with --set, spying on what reaches the
    advantages and the loss mask."""
    tmp = tmp_path_factory.mktemp("grpo")
    threads = torch.get_num_threads()
    seen: dict[str, list] = {"advantages": [], "loss_mask": []}
    with pytest.MonkeyPatch.context() as mp:
        load = write_verifier(tmp, mp)
        config = grpo_config(tmp, make_data(tmp / "data"), load)
        estimator = grpo.ADVANTAGE_ESTIMATORS["grpo"]
        real_mask = grpo.loss_mask

        def spy_estimator(rewards, valid, group_size):
            seen["advantages"].append((rewards.clone(), valid.clone()))
            return estimator(rewards, valid, group_size)

        def spy_mask(response_mask, keep):
            out = real_mask(response_mask, keep)
            seen["loss_mask"].append((keep.clone(), out.clone()))
            return out

        mp.setitem(grpo.ADVANTAGE_ESTIMATORS, "grpo", spy_estimator)
        mp.setattr(grpo, "loss_mask", spy_mask)
        with pytest.raises(SystemExit) as exit_:
            cli.main(["train", str(config), "--set", "optim.steps=3", "--set", "rollout.top_k=50"])
    torch.set_num_threads(threads)
    assert exit_.value.code == 0
    return tmp, config, seen


def test_run_directory_has_rows_summary_plot_and_final_model(grpo_run):
    tmp, _, _ = grpo_run
    run = tmp / "run"
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [0, 1, 2, 3]
    assert "eval/accuracy" in rows[0] and "eval/accuracy" in rows[-1]
    for row in rows[1:]:
        assert STEP_KEYS <= set(row), STEP_KEYS - set(row)
    summary = json.loads((run / "summary.json").read_text())
    assert summary["steps"] == 3 and summary["wall_s"] > 0
    assert summary["eval_before"]["step"] == 0 and summary["eval_after"]["step"] == 3
    assert (run / "curves.png").stat().st_size > 0
    config = (run / "config.yaml").read_text()
    assert "top_k: 50" in config and "steps: 3" in config  # the --set values were used
    model = AutoModelForCausalLM.from_pretrained(run / "final")
    assert (run / "final" / "tokenizer.json").exists()
    assert sorted(p.name for p in (run / "checkpoints").glob("step_*")) == [
        "step_00000001",
        "step_00000002",
        "step_00000003",
    ]

    fresh = tiny.build_model("tiny", tokenizer=tiny.build_tokenizer(), seed=0)
    trained = dict(model.named_parameters())
    changed = [name for name, p in fresh.named_parameters() if not torch.equal(p, trained[name])]
    assert len(changed) == len(list(fresh.parameters())), "every parameter should move"


def test_failed_rewards_are_masked_and_counted_never_zero(grpo_run):
    tmp, _, seen = grpo_run
    assert len(seen["advantages"]) == 3 and len(seen["loss_mask"]) == 3
    any_invalid = False
    for (rewards, valid), (keep, mask) in zip(seen["advantages"], seen["loss_mask"], strict=True):
        invalid = ~valid
        any_invalid |= bool(invalid.any())
        assert torch.isnan(rewards[invalid]).all(), "a failed sample must carry NaN, not 0"
        assert not torch.isnan(rewards[valid]).any()
        assert torch.equal(keep, valid)  # no DAPO filters here: exactly the valid samples train
        assert not mask[invalid].any(), "a failed sample's tokens reached the loss"
    assert any_invalid, "the test verifier should have refused some completions"

    rows = [json.loads(line) for line in (tmp / "run" / "metrics.jsonl").read_text().splitlines()]
    for row, (_, valid) in zip(rows[1:], seen["advantages"], strict=True):
        n_invalid = int((~valid).sum())
        assert row["reward_status/digits/INVALID_INPUT"] == n_invalid
        assert row["reward_status/masked_samples"] == n_invalid
        assert row["samples/trained"] == int(valid.sum())


def test_eval_cli_scores_the_exported_model(grpo_run, capsys, monkeypatch, restore_threads):
    tmp, config, _ = grpo_run
    write_verifier(tmp, monkeypatch)
    out = tmp / "eval.json"
    with pytest.raises(SystemExit) as exit_:
        cli.main(
            [
                "eval",
                str(config),
                "--model",
                str(tmp / "run" / "final"),
                "--output",
                str(out),
                "--set",
                "eval.num_samples=3",
            ]
        )
    assert exit_.value.code == 0
    row = json.loads(out.read_text())
    assert row["model"] == str(tmp / "run" / "final")
    assert row["eval/n_prompts"] == 3 and "eval/accuracy" in row
    assert json.loads(capsys.readouterr().out) == row


def test_cli_names_a_bad_key_and_an_unreachable_target(tmp_path, capsys, monkeypatch):
    load = write_verifier(tmp_path, monkeypatch)
    config = grpo_config(tmp_path, make_data(tmp_path / "data"), load)
    with pytest.raises(SystemExit) as exit_:
        cli.main(["train", str(config), "--set", "optim.stepz=3"])
    assert exit_.value.code == 2
    assert "optim.stepz" in capsys.readouterr().err

    with pytest.raises(SystemExit) as exit_:
        cli.main(
            [
                "train",
                str(config),
                "--set",
                "reward.sources.0.target=127.0.0.1:9",
                "--set",
                "reward.sources.0.local_args=[]",
            ]
        )
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert "reward.sources.0.target" in err and "127.0.0.1:9" in err

    with pytest.raises(SystemExit) as exit_:
        cli.main(["train", str(config), "--set", f"model.path={tmp_path / 'nope'}"])
    assert exit_.value.code == 2
    assert "model.path" in capsys.readouterr().err


@pytest.mark.slow
def test_resume_reproduces_the_uninterrupted_run(tmp_path, monkeypatch, restore_threads):
    """DeepSpeed (the default engine): run 2 steps saving every step; then pretend the run
    was killed after step 1 and resume: step 2's loss matches to 1e-5."""
    load = write_verifier(tmp_path, monkeypatch)
    data = make_data(tmp_path / "data")
    config = grpo_config(tmp_path, data, load)
    sets = ["deepspeed.enabled=true", "deepspeed.zero_stage=0", "eval.enabled=false"]
    try:
        whole = load_config(config, [*sets, f"logging.run_dir={tmp_path / 'a'}"])
        train(whole)
        shutil.copytree(tmp_path / "a", tmp_path / "b")
        shutil.rmtree(tmp_path / "b" / "checkpoints" / "step_00000002")
        shutil.rmtree(tmp_path / "b" / "final")
        resumed = load_config(config, [*sets, f"logging.run_dir={tmp_path / 'b'}"])
        summary = train(resumed, resume=True)
    finally:
        distributed.shutdown()
    assert summary["resumed_from"] == 1 and summary["steps"] == 2
    rows_a = [json.loads(x) for x in (tmp_path / "a" / "metrics.jsonl").read_text().splitlines()]
    rows_b = [json.loads(x) for x in (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows_b] == [1, 2]
    a2, b2 = rows_a[-1], rows_b[-1]
    assert a2["loss"] != 0.0
    assert b2["loss"] == pytest.approx(a2["loss"], abs=1e-5)
    assert b2["reward/mean"] == pytest.approx(a2["reward/mean"], abs=1e-6)
    assert b2["grad_norm"] == pytest.approx(a2["grad_norm"], rel=1e-4)


@pytest.mark.slow
def test_gspo_with_dapo_filters_kl_and_two_epochs_trains(tmp_path, monkeypatch, restore_threads):
    load = write_verifier(tmp_path, monkeypatch)
    config = grpo_config(tmp_path, make_data(tmp_path / "data"), load)
    cfg = load_config(
        config,
        [
            "algorithm.name=gspo",
            "algorithm.dynamic_sampling=true",
            "algorithm.max_refill_rounds=1",
            "algorithm.kl.coef=0.1",
            "algorithm.kl.estimator=k2",
            "algorithm.ppo_epochs=2",
            "algorithm.entropy_coef=0.01",
            "eval.enabled=false",
            "optim.steps=1",
        ],
    )
    summary = train(cfg)
    row = summary["final"]
    for key in (
        "kl",
        "loss",
        "dynamic_sampling/rounds",
        "dynamic_sampling/informative_groups",
        "policy/ratio_mean",
        "samples/truncated",
    ):
        assert key in row, key
    assert row["samples/trained"] <= 16
    assert 0.5 < row["policy/ratio_mean"] < 2.0  # averaged over 4 updates of 1 batch

    kl_reward = load_config(
        config,
        [
            "algorithm.kl.coef=0.1",
            "algorithm.kl.placement=reward",
            "algorithm.name=rloo",
            "algorithm.overlong_filter=true",
            "eval.enabled=false",
            "optim.steps=1",
            f"logging.run_dir={tmp_path / 'rloo'}",
        ],
    )
    assert "kl" in train(kl_reward)["final"]
