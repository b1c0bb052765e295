"""Checkpoints: layout, rotation, the `latest` pointer, resume, export; kill-and-resume runs.

The in-process tests use the plain-torch engine (no process group). The slow ones (plain
torch and ZeRO-2 in one process, ZeRO-3 in two: per-rank RNG files and shards) run
tests/trainer/ds_worker.py in fresh processes: a run that saves every 2 steps, a copy
killed (os._exit) right after its step-4 checkpoint, and a fresh process resuming it,
whose steps 5..6 must reproduce the uninterrupted run's losses to 1e-5 in fp32. The
worker's batches use python, numpy and torch randomness and a PromptBatches position,
so leaving any of them out of the checkpoint changes those losses.
"""

from __future__ import annotations

import json
import os
import random
import shutil

import numpy as np
import pytest
import torch
from ds_worker import launch
from transformers import AutoModelForCausalLM, AutoTokenizer

from referee.trainer import checkpoint, tiny
from referee.trainer.checkpoint import (
    export_hf,
    find_checkpoint,
    latest_checkpoint,
    list_checkpoints,
    resume,
    save_checkpoint,
)
from referee.trainer.data import PromptBatches, PromptRow
from referee.trainer.engine import create_engine


@pytest.fixture(autouse=True)
def _single_process(monkeypatch):
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(k, raising=False)


def _engine(seed: int = 0):
    model = tiny.build_model("tiny", vocab_size=101, seed=seed)
    return create_engine(
        model, lr=1e-2, warmup_steps=1, scheduler="linear", total_steps=20, use_deepspeed=False
    )


def _step(engine) -> float:
    ids = torch.randint(5, 101, (2, 10))  # from the global RNG, on purpose
    out = engine(input_ids=ids, labels=ids)
    engine.backward(out.loss)
    engine.step()
    return out.loss.item()


def _rows(n: int = 7) -> list[PromptRow]:
    return [PromptRow(str(i), f"q{i}") for i in range(n)]


def test_layout_latest_and_rotation(tmp_path):
    engine = _engine()
    for step in (1, 2, 3, 4):
        _step(engine)
        path = save_checkpoint(tmp_path, engine, step=step, metrics_cursor=10 * step, keep_last=2)
        assert path == tmp_path / f"step_{step:08d}"
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step_00000003", "step_00000004"]
    assert (tmp_path / "latest").read_text() == "step_00000004"
    assert latest_checkpoint(tmp_path) == tmp_path / "step_00000004"
    assert sorted(os.listdir(tmp_path / "step_00000004")) == [
        "rank_00000.pt",
        "torch",
        "trainer_state.json",
    ]
    state = json.loads((tmp_path / "step_00000004" / "trainer_state.json").read_text())
    assert state["step"] == 4 and state["metrics_cursor"] == 40 and state["world_size"] == 1


def test_keep_last_zero_keeps_all_and_a_step_can_be_saved_again(tmp_path):
    engine = _engine()
    for step in (1, 2, 3):
        save_checkpoint(tmp_path, engine, step=step, keep_last=0)
    save_checkpoint(tmp_path, engine, step=3, extra={"again": True})
    assert len(list_checkpoints(tmp_path)) == 3
    assert resume(tmp_path, _engine()).extra == {"again": True}


def test_interrupted_save_leaves_the_previous_checkpoint(tmp_path):
    engine = _engine()
    save_checkpoint(tmp_path, engine, step=1)
    # A save killed half-way: its temporary directory has some files and no state.
    partial = tmp_path / ".tmp-step_00000002"
    (partial / "torch").mkdir(parents=True)
    assert latest_checkpoint(tmp_path) == tmp_path / "step_00000001"
    # Killed between the rename and the pointer update: `latest` still names a complete
    # checkpoint and is trusted (editing it is how to roll back) ...
    shutil.copytree(tmp_path / "step_00000001", tmp_path / "step_00000002")
    assert latest_checkpoint(tmp_path) == tmp_path / "step_00000001"
    # ... and without it (or when it names a deleted one) the newest complete one wins.
    (tmp_path / "latest").write_text("step_00000000")
    assert latest_checkpoint(tmp_path) == tmp_path / "step_00000002"
    (tmp_path / "latest").unlink()
    assert latest_checkpoint(tmp_path) == tmp_path / "step_00000002"
    save_checkpoint(tmp_path, engine, step=3)
    assert not partial.exists()  # the next save cleans up


def test_find_checkpoint_says_what_is_missing(tmp_path):
    with pytest.raises(FileNotFoundError, match="no checkpoint in"):
        find_checkpoint(tmp_path)
    engine = _engine()
    path = save_checkpoint(tmp_path, engine, step=5)
    assert find_checkpoint(path) == path  # one checkpoint directory works too


def test_resume_restores_weights_optimiser_rng_and_data(tmp_path):
    torch.manual_seed(0)
    engine = _engine()
    batches = PromptBatches(_rows(), batch_size=3, seed=1)
    for _ in range(2):
        next(batches)
        _step(engine)
    random.seed(11)
    np.random.seed(11)
    save_checkpoint(tmp_path, engine, step=2, data=batches, extra={"best": 0.5})
    expected_rows = [next(batches) for _ in range(2)]
    expected_draws = (random.random(), np.random.rand(), torch.rand(()).item())
    expected_losses = [_step(engine) for _ in range(3)]
    expected_lr = engine.lr

    random.seed(99)  # a fresh process starts from other states
    np.random.seed(99)
    torch.manual_seed(99)
    fresh = _engine(seed=1)  # other initial weights
    fresh_batches = PromptBatches(_rows(), batch_size=3, seed=1)
    state = resume(tmp_path, fresh, data=fresh_batches)
    assert (state.step, state.world_size, state.extra) == (2, 1, {"best": 0.5})
    assert [next(fresh_batches) for _ in range(2)] == expected_rows
    assert (random.random(), np.random.rand(), torch.rand(()).item()) == expected_draws
    assert [_step(fresh) for _ in range(3)] == pytest.approx(expected_losses, abs=1e-6)
    assert fresh.lr == pytest.approx(expected_lr)
    assert fresh.global_step == engine.global_step == 5


def test_resume_refuses_another_world_size(tmp_path):
    path = save_checkpoint(tmp_path, _engine(), step=1)
    state_file = path / "trainer_state.json"
    state = json.loads(state_file.read_text())
    state_file.write_text(json.dumps({**state, "world_size": 2}))
    with pytest.raises(ValueError, match="written by 2 processes and this run has 1"):
        resume(tmp_path, _engine())


def test_resume_refuses_a_checkpoint_without_data_position(tmp_path):
    save_checkpoint(tmp_path, _engine(), step=1)
    with pytest.raises(ValueError, match="no data position"):
        resume(tmp_path, _engine(), data=PromptBatches(_rows(), batch_size=2, seed=0))


def test_rng_round_trip():
    state = checkpoint.capture_rng()
    a = (random.random(), np.random.rand(), torch.rand(3))
    checkpoint.restore_rng(state)
    b = (random.random(), np.random.rand(), torch.rand(3))
    assert a[:2] == b[:2] and torch.equal(a[2], b[2])


def test_export_is_a_plain_hugging_face_directory(tmp_path):
    tokenizer = tiny.build_tokenizer()
    model = tiny.build_model("tiny", tokenizer=tokenizer, seed=0)
    engine = create_engine(model, lr=1e-2, use_deepspeed=False)
    _step(engine)
    out = export_hf(engine, tmp_path / "final", tokenizer)
    assert out == tmp_path / "final" and (out / "model.safetensors").is_file()
    loaded = AutoModelForCausalLM.from_pretrained(out)
    ids = torch.randint(5, 101, (2, 9))
    with torch.no_grad():
        assert torch.allclose(loaded(input_ids=ids).logits, engine(input_ids=ids).logits)
    assert AutoTokenizer.from_pretrained(out)("12+3").input_ids == tokenizer("12+3").input_ids
    export_hf(engine, out, tokenizer)  # an existing export is replaced
    assert not (tmp_path / ".tmp-final").exists()


# --- killed and resumed runs, in fresh processes ----------------------------------------

STEPS, SAVE_EVERY, KILL_AFTER = 6, 2, 4


def _train(tmp_path, name: str, engine: str, nproc: int, *extra: str) -> dict[int, float]:
    out = tmp_path / f"{name}.json"
    argv = ["train", "--engine", engine, "--steps", str(STEPS), "--save-every", str(SAVE_EVERY)]
    argv += ["--keep-last", "2", "--global-batch", "4", "--grad-accum", "2"]
    argv += ["--ckpt", str(tmp_path / f"{name}-ckpt"), "--out", str(out), *extra]
    proc = launch(nproc, argv, timeout=120)
    expect_rc = 17 if "--die-after" in extra else 0
    assert (proc.returncode != 0) if expect_rc else (proc.returncode == 0), (
        proc.stdout[-3000:] + proc.stderr[-3000:]
    )
    return {int(k): v for k, v in json.loads(out.read_text()).items()}


@pytest.mark.slow
@pytest.mark.parametrize(
    ("engine", "nproc"),
    [("torch", 1), ("ds2", 1), ("ds3", 2)],
    ids=["torch-1proc", "zero2-1proc", "zero3-2proc"],
)
def test_killed_run_resumes_to_the_same_losses(tmp_path, engine, nproc):
    export = tmp_path / "export"
    full = _train(tmp_path, "full", engine, nproc, "--export", str(export))
    killed = _train(tmp_path, "run", engine, nproc, "--die-after", str(KILL_AFTER))
    assert sorted(killed) == list(range(1, KILL_AFTER + 1))
    # Rotation kept the newest two; the kill came right after the step-4 save.
    ckpt = tmp_path / "run-ckpt"
    assert [p.name for p in list_checkpoints(ckpt)] == ["step_00000002", "step_00000004"]
    assert len(list((ckpt / "step_00000004").glob("rank_*.pt"))) == nproc

    resumed = _train(tmp_path, "run", engine, nproc, "--resume")
    assert sorted(resumed) == list(range(KILL_AFTER + 1, STEPS + 1))
    for step, loss in resumed.items():
        assert loss == pytest.approx(full[step], abs=1e-5), step
    # The losses move from step to step (a resume that replayed one batch would not).
    assert len({round(v, 4) for v in full.values()}) == STEPS

    model = AutoModelForCausalLM.from_pretrained(export)
    assert model.config.vocab_size == 101
    assert (export / "tokenizer.json").is_file()
