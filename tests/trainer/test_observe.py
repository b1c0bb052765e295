"""The run directory: metrics.jsonl rows, summary.json, the plot, TensorBoard, progress
output and resume, with real writers on tiny runs in tmp_path."""

from __future__ import annotations

import io
import json
import math
import sys
import types
from pathlib import Path

import pytest
import torch
import yaml

from referee.trainer.observe import (
    RunLog,
    Stopwatch,
    default_run_dir,
    format_line,
    make_figure,
    read_metrics,
    save_plot,
    truncate_metrics,
)


def strict_rows(path: Path) -> list[dict]:
    """Rows parsed refusing NaN/Infinity tokens (Python's json accepts them by default)."""

    def refuse(token: str) -> None:
        raise AssertionError(f"{token} in metrics.jsonl")

    return [json.loads(line, parse_constant=refuse) for line in path.read_text().splitlines()]


def train_row(step: int) -> dict:
    return {
        "reward/mean": 0.1 * step,
        "loss": 1.0 / step,
        "kl": 0.001 * step,
        "entropy": 2.0,
        "time": {"generate_s": 0.5, "reward_s": 0.1, "train_s": 0.3},
        "tokens_per_s": 1000.0 + step,
        "reward_status": {"OK": 8, "TIMEOUT": 0},
    }


def eval_row(acc: float) -> dict:
    return {"eval/accuracy": acc, "eval/mean_reward": acc, "eval/pass@1": acc}


def run_log(tmp_path: Path, out: io.StringIO | None = None, **kw) -> RunLog:
    kw.setdefault("total_steps", 4)
    kw.setdefault("recipe", "grpo")
    return RunLog(tmp_path / "run", stream=out or io.StringIO(), **kw)


def test_a_run_writes_rows_summary_config_and_plot(tmp_path: Path) -> None:
    out = io.StringIO()
    with run_log(tmp_path, out, config="recipe: grpo\nseed: 3\n") as run:
        run.log(0, eval_row(0.25))
        for step in range(1, 5):
            run.log(step, {**train_row(step), **(eval_row(0.75) if step == 4 else {})})
    d = tmp_path / "run"
    rows = strict_rows(d / "metrics.jsonl")
    assert [r["step"] for r in rows] == [0, 1, 2, 3, 4]
    assert rows[0] == {
        "step": 0,
        "eval/accuracy": 0.25,
        "eval/mean_reward": 0.25,
        "eval/pass@1": 0.25,
    }
    assert rows[2] == {
        "step": 2,
        "reward/mean": 0.2,
        "loss": 0.5,
        "kl": 0.002,
        "entropy": 2.0,
        "time/generate_s": 0.5,
        "time/reward_s": 0.1,
        "time/train_s": 0.3,
        "tokens_per_s": 1002.0,
        "reward_status/OK": 8,
        "reward_status/TIMEOUT": 0,
    }
    assert rows[4]["eval/accuracy"] == 0.75 and rows[4]["loss"] == 0.25
    assert run.rows == rows

    summary = json.loads((d / "summary.json").read_text())
    assert summary["status"] == "completed"
    assert summary["steps"] == 4 and summary["total_steps"] == 4
    assert summary["wall_s"] >= 0
    assert summary["eval_before"] == {
        "step": 0,
        "accuracy": 0.25,
        "mean_reward": 0.25,
        "pass@1": 0.25,
    }
    assert summary["eval_after"] == {
        "step": 4,
        "accuracy": 0.75,
        "mean_reward": 0.75,
        "pass@1": 0.75,
    }
    assert summary["final"]["loss"] == 0.25 and "eval/accuracy" not in summary["final"]
    assert summary["resumed_from"] is None
    assert summary["run_dir"] == str(d.resolve())

    assert yaml.safe_load((d / "config.yaml").read_text()) == {"recipe": "grpo", "seed": 3}
    png = (d / "curves.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000

    text = out.getvalue()
    assert f"run directory: {d.resolve()}" in text
    assert "eval accuracy: 0.25 before, 0.75 after" in text


def test_config_mapping_is_written_as_yaml(tmp_path: Path) -> None:
    cfg = {"recipe": "grpo", "rollout": {"n": 4, "temperature": 1.0}}
    with run_log(tmp_path, config=cfg):
        pass
    assert yaml.safe_load((tmp_path / "run" / "config.yaml").read_text()) == cfg


def test_default_run_dir_is_recipe_and_timestamp(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    with RunLog(None, total_steps=1, recipe="sft", stream=io.StringIO()) as run:
        run.log(1, {"loss": 1.0})
    assert run.run_dir.parent == Path("runs")
    assert run.run_dir.name.startswith("sft-")
    assert (tmp_path / run.run_dir / "metrics.jsonl").exists()
    from datetime import datetime

    stamp = datetime(2025, 1, 2, 3, 4, 5)
    assert default_run_dir("grpo", "r", stamp) == Path("r/grpo-20250102-030405")


def test_nan_and_inf_are_written_as_null_with_a_note(tmp_path: Path) -> None:
    out = io.StringIO()
    with run_log(tmp_path, out) as run:
        run.extra_summary["note"] = {"best_loss": math.nan, "steps": [1.0, math.inf]}
        run.log(1, {"loss": math.nan, "kl": math.inf, "reward/mean": 0.5})
        run.log(2, {"loss": math.nan, "kl": -math.inf, "entropy": None})
        run.log(3, {"loss": torch.tensor(float("nan")), "kl": 0.1})
    rows = strict_rows(tmp_path / "run" / "metrics.jsonl")
    assert rows[0] == {
        "step": 1,
        "loss": None,
        "kl": None,
        "reward/mean": 0.5,
        "_nonfinite": {"loss": "nan", "kl": "inf"},
    }
    # None means "not measured": null without a note
    assert rows[1] == {
        "step": 2,
        "loss": None,
        "kl": None,
        "entropy": None,
        "_nonfinite": {"loss": "nan", "kl": "-inf"},
    }
    assert rows[2]["_nonfinite"] == {"loss": "nan"} and rows[2]["kl"] == pytest.approx(0.1)
    text = out.getvalue()
    assert text.count("warning: loss is nan") == 1  # once per key
    assert text.count("warning: kl is") == 1
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["final"]["loss"] is None
    assert summary["note"] == {"best_loss": None, "steps": [1.0, None]}


def test_values_are_scalars(tmp_path: Path) -> None:
    with run_log(tmp_path) as run:
        row = run.log(1, {"loss": torch.tensor(0.5), "n": torch.tensor(3), "flag": True})
        assert row == {"step": 1, "loss": 0.5, "n": 3, "flag": True}
        with pytest.raises(TypeError, match="'x' is not a scalar"):
            run.log(2, {"x": torch.ones(2)})
        with pytest.raises(TypeError, match="'y' is a list"):
            run.log(2, {"y": [1, 2]})
        with pytest.raises(ValueError, match="reserved"):
            run.log(2, {"step": 5})


def test_steps_may_not_go_back(tmp_path: Path) -> None:
    with run_log(tmp_path) as run:
        run.log(2, {"loss": 1.0})
        run.log(2, {"loss": 1.0})  # the same step again is allowed
        with pytest.raises(ValueError, match="step 1 logged after step 2"):
            run.log(1, {"loss": 1.0})


def test_every_steps_keeps_multiples_the_last_step_and_eval_rows(tmp_path: Path) -> None:
    out = io.StringIO()
    with run_log(tmp_path, out, total_steps=7, every_steps=3) as run:
        for step in range(1, 8):
            run.log(step, {**train_row(step), **(eval_row(0.5) if step == 5 else {})})
    steps = [r["step"] for r in read_metrics(tmp_path / "run" / "metrics.jsonl")]
    assert steps == [3, 5, 6, 7]
    # the plain progress lines follow the written rows
    lines = [ln for ln in out.getvalue().splitlines() if ln.startswith("step ")]
    assert [ln.split()[1] for ln in lines] == ["3/7", "5/7", "6/7", "7/7"]


def test_progress_prints_plain_lines_when_not_a_terminal(tmp_path: Path) -> None:
    out = io.StringIO()
    with run_log(tmp_path, out, total_steps=2) as run:
        run.log(1, train_row(1))
        run.log(2, {**train_row(2), **eval_row(0.5)})
    lines = out.getvalue().splitlines()
    assert "step 1/2 | reward 0.1 | kl 0.001 | loss 1 | 1001 tok/s" in lines
    assert (
        "step 2/2 | reward 0.2 | kl 0.002 | loss 0.5 | 1002 tok/s | eval/accuracy 0.5 | "
        "eval/pass@1 0.5" in lines
    )
    assert "\x1b[" not in out.getvalue()  # no terminal control codes in CI logs


def test_progress_bar_on_a_terminal(tmp_path: Path) -> None:
    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    out = Tty()
    with run_log(tmp_path, out, total_steps=3) as run:
        for step in (1, 2, 3):
            run.log(step, {**train_row(step), **(eval_row(0.5) if step == 3 else {})})
    text = out.getvalue()
    assert "step 1/3 |" not in text  # no per-step lines: the bar shows them
    assert "3/3" in text and "tok/s" in text
    assert "step 3/3 |" in text  # eval results are printed above the bar
    assert (tmp_path / "run" / "metrics.jsonl").exists()


def test_format_line_without_figures() -> None:
    assert format_line(1, 5, {}) == "step 1/5"
    assert format_line(1, 5, {"reward/mean": None}) == "step 1/5 | reward null"


# --- resume ----------------------------------------------------------------------------


def test_resume_truncates_later_rows_and_appends(tmp_path: Path) -> None:
    with run_log(tmp_path, total_steps=6) as run:
        run.log(0, eval_row(0.2))
        for step in range(1, 6):  # "killed" after step 5; the checkpoint is from step 3
            run.log(step, train_row(step))
    out = io.StringIO()
    with run_log(tmp_path, out, total_steps=6, resume_step=3) as run:
        assert [r["step"] for r in run.rows] == [0, 1, 2, 3]
        for step in range(4, 7):
            run.log(step, {**train_row(step), **(eval_row(0.6) if step == 6 else {})})
    rows = strict_rows(tmp_path / "run" / "metrics.jsonl")
    assert [r["step"] for r in rows] == [0, 1, 2, 3, 4, 5, 6]
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["resumed_from"] == 3 and summary["steps"] == 6
    assert summary["eval_before"]["accuracy"] == 0.2  # from before the resume
    assert summary["eval_after"]["accuracy"] == 0.6
    assert "resuming after step 3" in out.getvalue()


def test_resume_refuses_a_step_before_the_resumed_one(tmp_path: Path) -> None:
    with run_log(tmp_path) as run:
        run.log(1, train_row(1))
    with run_log(tmp_path, resume_step=1) as run, pytest.raises(ValueError):
        run.log(1 - 1, train_row(1))


def test_a_torn_last_line_is_dropped(tmp_path: Path) -> None:
    p = tmp_path / "metrics.jsonl"
    p.write_text('{"step": 1, "loss": 1.0}\n{"step": 2, "loss": 0.5}\n{"step": 3, "lo')
    assert [r["step"] for r in read_metrics(p)] == [1, 2]
    assert [r["step"] for r in truncate_metrics(p, 1)] == [1]
    assert p.read_text() == '{"step": 1, "loss": 1.0}\n'
    p.write_text('{"step": 1}\nnot json\n{"step": 2}\n')
    with pytest.raises(ValueError, match=r"metrics.jsonl:2"):
        read_metrics(p)
    assert read_metrics(tmp_path / "missing.jsonl") == []


def test_a_fresh_run_refuses_a_used_directory_unless_told(tmp_path: Path) -> None:
    with run_log(tmp_path, tensorboard=True) as run:
        run.log(1, train_row(1))
    with pytest.raises(FileExistsError, match="resume that run"), run_log(tmp_path):
        pass
    (tmp_path / "run" / "checkpoints").mkdir()
    with run_log(tmp_path, overwrite=True) as run:
        run.log(1, {"loss": 9.0})
    assert read_metrics(tmp_path / "run" / "metrics.jsonl") == [{"step": 1, "loss": 9.0}]
    assert not (tmp_path / "run" / "tb").exists()
    assert (tmp_path / "run" / "checkpoints").is_dir()  # not ours: left alone


# --- failures, ranks, writers ------------------------------------------------------------


def test_a_failing_run_still_writes_summary_and_plot(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError, match="boom"), run_log(tmp_path) as run:
        run.log(1, train_row(1))
        raise RuntimeError("boom")
    d = tmp_path / "run"
    summary = json.loads((d / "summary.json").read_text())
    assert summary["status"] == "failed: RuntimeError: boom"
    assert summary["steps"] == 1 and summary["eval_after"] is None
    assert (d / "curves.png").stat().st_size > 1000


def test_only_the_main_process_writes(tmp_path: Path) -> None:
    out = io.StringIO()
    with run_log(tmp_path, out, is_main=False, tensorboard=True, config="a: 1\n") as run:
        assert run.log(1, train_row(1)) is None
        run.print("hello")
    assert not (tmp_path / "run").exists()
    assert out.getvalue() == ""


def test_tensorboard_scalars(tmp_path: Path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    with run_log(tmp_path, tensorboard=True) as run:
        for step in (1, 2, 3):
            run.log(step, {**train_row(step), "loss": math.nan if step == 2 else 1.0 / step})
    tb = tmp_path / "run" / "tb"
    assert list(tb.glob("events.out.tfevents.*"))
    acc = EventAccumulator(str(tb))
    acc.Reload()
    assert "reward/mean" in acc.Tags()["scalars"]
    rewards = [(e.step, e.value) for e in acc.Scalars("reward/mean")]
    assert rewards == [(1, pytest.approx(0.1)), (2, pytest.approx(0.2)), (3, pytest.approx(0.3))]
    assert [e.step for e in acc.Scalars("loss")] == [1, 3]  # the NaN step is left out


def test_wandb_missing_is_a_clear_warning(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "wandb", None)  # import wandb raises ImportError
    out = io.StringIO()
    with run_log(tmp_path, out, wandb=True) as run:
        run.log(1, train_row(1))
    assert "W&B logging is off: the wandb package is not installed" in out.getvalue()
    assert len(read_metrics(tmp_path / "run" / "metrics.jsonl")) == 1


def test_wandb_gets_the_numbers_when_installed(tmp_path: Path, monkeypatch) -> None:
    calls: list[tuple] = []

    class FakeRun:
        def log(self, data, step):
            calls.append(("log", step, data))

        def finish(self, exit_code):
            calls.append(("finish", exit_code))

    fake = types.ModuleType("wandb")
    fake.init = lambda **kw: calls.append(("init", kw)) or FakeRun()
    monkeypatch.setitem(sys.modules, "wandb", fake)
    with run_log(tmp_path, wandb=True, wandb_project="p", config={"seed": 1}) as run:
        run.log(1, {"loss": 0.5, "kl": math.nan, "tag": "x"})
    init = calls[0][1]
    assert (init["project"], init["name"], init["config"]) == ("p", "run", {"seed": 1})
    assert calls[1] == ("log", 1, {"loss": 0.5})
    assert calls[2] == ("finish", 0)
    # a resumed run continues the same W&B run
    calls.clear()
    with run_log(tmp_path, wandb=True, resume_step=1):
        pass
    assert calls[0][1]["id"] == init["id"]


# --- the plot --------------------------------------------------------------------------


def test_figure_has_reward_and_eval_panels() -> None:
    rows = [{"step": 0, "eval/accuracy": 0.2, "eval/pass@4": 0.5, "eval/pass@4_excluded": 0}]
    rows += [{"step": s, "reward/mean": s / 30} for s in range(1, 31)]
    rows += [{"step": 30, "eval/accuracy": 0.6, "eval/pass@4": 0.8}]
    fig = make_figure(rows)
    reward_ax, eval_ax = fig.axes
    assert reward_ax.get_xlabel() == "step" and "reward" in reward_ax.get_ylabel()
    raw, smooth = reward_ax.get_lines()
    assert list(raw.get_xdata()) == list(range(1, 31))
    assert len(smooth.get_ydata()) == 30
    labels = [ln.get_label() for ln in eval_ax.get_lines()]
    assert labels == ["accuracy", "pass@4"]
    assert list(eval_ax.get_lines()[0].get_ydata()) == [0.2, 0.6]


def test_plot_without_data_still_draws(tmp_path: Path) -> None:
    fig = make_figure([])
    assert len(fig.axes) == 2
    p = save_plot([{"step": 1, "reward/mean": None}], tmp_path / "c.png")
    assert p.read_bytes()[:4] == b"\x89PNG"


def test_stopwatch_accumulates_per_phase() -> None:
    sw = Stopwatch()
    for _ in range(2):
        with sw("reward"):
            pass
    with pytest.raises(KeyError), sw("train"):
        raise KeyError("x")  # time is still recorded
    lap = sw.lap()
    assert set(lap) == {"time/reward_s", "time/train_s"} and all(v >= 0 for v in lap.values())
    assert sw.lap() == {}
