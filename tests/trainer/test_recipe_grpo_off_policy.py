"""One-step off-policy GRPO (`rollout.off_policy_steps: 1`) with the sglang engine, end
to end on a 2-layer model against a `referee serve rollout` started for the run.

Checks: the run completes with finite losses and moved parameters; batch k+1 was being
generated while batch k trained, and no weight sync overlapped a generation; every
batch after the first was sampled by the weights one rollout step behind the trainer
(staleness = optimiser steps per batch, never past `rollout.max_staleness`) and its
samples carry that `weight_version`; a checkpoint saves the data position before the
batch in flight. A server left on old weights stops the run before anything trains on
its samples; the hf engine with off-policy is refused at load, naming the key.
"""

from __future__ import annotations

import json
import math
import threading
import time
from pathlib import Path

import pytest
import torch
from recipe_helpers import grpo_config, make_data, restore_threads, write_verifier

from referee import cli
from referee.trainer.config import ConfigError, load_config
from referee.trainer.recipes import grpo
from referee.trainer.rollout.sglang import SGLangEngine

__all__ = ["restore_threads"]

pytestmark = pytest.mark.timeout(600)

STEPS = 4
OPT_STEPS = 2  # optimiser steps per rollout batch (grpo_config: algorithm.mini_batches 2)
PROMPTS = 4  # grpo_config: rollout.prompts_per_step
GAP_FP32 = 1e-3  # the logprob gap of synced fp32 weights is float error (~1e-6)


def rows_of(run_dir: Path) -> list[dict]:
    return [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]


def off_policy_config(tmp: Path, monkeypatch: pytest.MonkeyPatch, **sections) -> Path:
    load = write_verifier(tmp, monkeypatch)
    rollout = {"engine": "sglang", "sglang": {"urls": ["local"]}, "off_policy_steps": 1}
    return grpo_config(
        tmp,
        make_data(tmp / "data"),
        load,
        rollout=rollout | sections.pop("rollout", {}),
        eval={"enabled": False},
        **sections,
    )


@pytest.fixture(scope="module")
def off_policy_run(tmp_path_factory):
    """A 4-step one-step-off-policy run through `referee train`, recording when each
    batch was collected, each batch trained and each weight sync ran."""
    tmp = tmp_path_factory.mktemp("grpo-off-policy")
    threads = torch.get_num_threads()
    events: dict[str, list[tuple[float, float]]] = {"collect": [], "train": [], "sync": []}
    collect_threads: list[str] = []
    real_collect, real_update = grpo._collect, grpo._update
    real_sync = SGLangEngine.update_weights

    def timed(kind, fn):
        def wrapper(*args, **kwargs):
            start = time.monotonic()
            try:
                return fn(*args, **kwargs)
            finally:
                events[kind].append((start, time.monotonic()))

        return wrapper

    def collect(*args, **kwargs):
        collect_threads.append(threading.current_thread().name)
        return timed("collect", real_collect)(*args, **kwargs)

    with pytest.MonkeyPatch.context() as mp:
        config = off_policy_config(
            tmp, mp, algorithm={"tis_cap": 2.0}, checkpoint={"every_steps": 2, "keep_last": 0}
        )
        mp.setattr(grpo, "_collect", collect)
        mp.setattr(grpo, "_update", timed("train", real_update))
        mp.setattr(SGLangEngine, "update_weights", timed("sync", real_sync))
        with pytest.raises(SystemExit) as exit_:
            cli.main(["train", str(config), "--set", f"optim.steps={STEPS}"])
    torch.set_num_threads(threads)
    assert exit_.value.code == 0
    return tmp / "run", events, collect_threads


def test_run_completes_with_finite_losses(off_policy_run):
    run, _, _ = off_policy_run
    rows = rows_of(run)
    assert [r["step"] for r in rows] == list(range(1, STEPS + 1))
    for row in rows:
        assert math.isfinite(row["loss"]) and math.isfinite(row["grad_norm"]), row
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["steps"] == STEPS
    assert (run / "final" / "config.json").exists()


def test_next_batch_generates_while_this_one_trains(off_policy_run):
    _, events, collect_threads = off_policy_run
    collects, trains, syncs = events["collect"], events["train"], events["sync"]
    assert len(collects) == len(trains) == STEPS
    assert len(syncs) == STEPS
    # Batch 1 in the trainer's thread; batches 2.. in the background, each started
    # before the previous batch's training ended.
    assert collect_threads[0] == "MainThread"
    assert all(name.startswith("collect-ahead") for name in collect_threads[1:])
    for k in range(STEPS - 1):
        next_start = collects[k + 1][0]
        assert next_start < trains[k][0], (k, collects, trains)  # started before training
    # No sync ever ran while a batch was being generated.
    for s_start, s_end in syncs:
        for c_start, c_end in collects:
            assert s_end <= c_start or c_end <= s_start, (syncs, collects)


def test_staleness_is_one_rollout_step_and_versions_are_recorded(off_policy_run):
    run, _, _ = off_policy_run
    config = (run / "config.yaml").read_text()
    assert "max_staleness: 2" in config  # derived: off_policy_steps x mini_batches
    rows = rows_of(run)
    first = rows[0]  # sampled by the starting weights, trained from them
    assert first["rollout/staleness_min"] == first["rollout/staleness_max"] == 0
    assert first["rollout/weight_version_max"] == 0
    assert first["rollout/logprob_gap_max"] < GAP_FP32
    for row in rows[1:]:
        step = row["step"]
        # Sampled by the weights of step - 2's sync, trained from those of step - 1.
        version = OPT_STEPS * (step - 2)
        assert row["rollout/weight_version_min"] == row["rollout/weight_version_max"] == version
        assert row["rollout/staleness_min"] == row["rollout/staleness_max"] == OPT_STEPS
        # The trainer's pi_old is one step newer than the rollout policy: a real gap,
        # which TIS weighs.
        assert row["rollout/logprob_gap_mean"] > GAP_FP32, row
        assert 0 < row["rollout/tis_weight_mean"] <= 2.0
        assert row["time/sync_s"] > 0


def test_checkpoint_saves_the_position_before_the_batch_in_flight(off_policy_run):
    run, _, _ = off_policy_run
    saved = torch.load(run / "checkpoints" / "step_00000002" / "rank_00000.pt", weights_only=False)
    # Two batches trained (8 prompts); batch 3 was in flight and is not counted.
    assert (saved["data"]["epoch"], saved["data"]["index"]) == (0, 2 * PROMPTS)


def test_server_on_old_weights_stops_the_run_before_training(
    tmp_path, monkeypatch, capsys, restore_threads
):
    """Synchronous (bound 0): a sync that silently does nothing leaves the server on the
    starting weights; step 2's batch lags 2 optimiser steps and is refused."""
    config = off_policy_config(
        tmp_path, monkeypatch, rollout={"off_policy_steps": 0}, checkpoint={"every_steps": 0}
    )
    real_sync = SGLangEngine.update_weights
    calls = []

    def first_sync_only(self, source, version=None):
        calls.append(version)
        if len(calls) == 1:
            return  # the server keeps version 0
        real_sync(self, source, version)

    trained = []
    real_update = grpo._update
    monkeypatch.setattr(SGLangEngine, "update_weights", first_sync_only)
    monkeypatch.setattr(grpo, "_update", lambda *a, **k: trained.append(1) or real_update(*a, **k))
    with pytest.raises(SystemExit) as exit_:
        cli.main(["train", str(config), "--set", "optim.steps=3"])
    assert exit_.value.code == 1
    err = capsys.readouterr().err
    assert "rollout.max_staleness=0" in err and "2 optimiser steps behind" in err, err
    assert len(trained) == 1  # step 2's batch never reached the loss
    assert [r["step"] for r in rows_of(tmp_path / "run")] == [1]


# --- config ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("overrides", "key", "text"),
    [
        (["rollout.off_policy_steps=1"], "rollout.off_policy_steps", "engine is hf"),
        (
            ["rollout.engine=sglang", "rollout.sglang.urls=[local]", "rollout.off_policy_steps=2"],
            "rollout.off_policy_steps",
            "0 (synchronous) and 1",
        ),
        (
            [
                "rollout.engine=sglang",
                "rollout.sglang.urls=[local]",
                "rollout.off_policy_steps=1",
                "rollout.max_staleness=1",
            ],
            "rollout.max_staleness",
            "set it >= 2",
        ),
        (["rollout.max_staleness=-1"], "rollout.max_staleness", "must be >= 0"),
    ],
)
def test_off_policy_settings_checked(tmp_path, monkeypatch, overrides, key, text):
    config = grpo_config(tmp_path, make_data(tmp_path / "data"), "recipe_test_reward:digits")
    with pytest.raises(ConfigError) as info:
        load_config(config, overrides)
    assert info.value.key == key
    assert text in str(info.value)


def test_hf_engine_with_off_policy_fails_at_once_naming_the_key(tmp_path, capsys):
    config = grpo_config(tmp_path, make_data(tmp_path / "data"), "recipe_test_reward:digits")
    started = time.monotonic()
    with pytest.raises(SystemExit) as exit_:
        cli.main(["train", str(config), "--set", "rollout.off_policy_steps=1"])
    assert exit_.value.code == 2
    assert time.monotonic() - started < 10  # refused at load: no model, no services
    assert "rollout.off_policy_steps" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_max_staleness_defaults(tmp_path):
    config = grpo_config(tmp_path, make_data(tmp_path / "data"), "recipe_test_reward:digits")
    assert load_config(config).rollout.max_staleness == 0
    off = load_config(
        config,
        [
            "rollout.engine=sglang",
            "rollout.sglang.urls=[local]",
            "rollout.off_policy_steps=1",
            "algorithm.ppo_epochs=2",
        ],
    )
    assert off.rollout.max_staleness == 2 * OPT_STEPS
