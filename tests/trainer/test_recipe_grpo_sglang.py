"""The GRPO recipe with `rollout.engine: sglang`, end to end on a 2-layer model: rollouts
from real `referee serve rollout` processes over HTTP, a disk weight sync after every
step, a real verifiers service started by the trainer.

Checks: with `urls: [local]` the run completes, the server takes each step's weights
(`/get_model_info`'s weight_version after every sync), the engine's logprobs match the
trainer's fresh forward pass (fp32: the gap is float error), every sample was generated
by the weights the trainer had, status counts are logged and parameters changed. Then a
server that dies mid-run: restarted on the same port within `retry_total_s` (once while
the trainer syncs, once while it generates) the run completes as if nothing happened;
gone for good, the CLI stops soon after `retry_total_s` with an error naming the server
and the setting, and nothing trained on the incomplete batch.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest
import torch
from recipe_helpers import grpo_config, make_data, restore_threads, write_verifier
from transformers import AutoModelForCausalLM

from referee import cli
from referee.trainer import tiny
from referee.trainer.config import load_config
from referee.trainer.recipes import grpo, train
from referee.trainer.rollout.sglang import SGLangEngine

__all__ = ["restore_threads"]

pytestmark = pytest.mark.timeout(600)

STEPS = 3
SAMPLES_PER_STEP = 16  # grpo_config: 4 prompts x 4 completions
OPT_STEPS = 2  # optimiser steps per rollout batch (grpo_config: algorithm.mini_batches 2),
# so after step s the weights are version 2 s (weight_version = optimiser step count)
GAP_FP32 = 1e-3  # measured ~1e-6: the same fp32 weights, KV-cached decoding vs one pass


def rows_of(run_dir: Path) -> list[dict]:
    return [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def local_run(tmp_path_factory):
    """A 3-step run through `referee train` against a local rollout server, recording
    the server's weight_version right after every weight sync."""
    tmp = tmp_path_factory.mktemp("grpo-sglang")
    threads = torch.get_num_threads()
    synced: list[tuple[int, str, str]] = []  # (version sent, server's weight_version, url)
    real_update = SGLangEngine.update_weights

    def spy_update(self, source, version=None):
        real_update(self, source, version)
        info = httpx.get(self.urls[0] + "/get_model_info", timeout=30).json()
        synced.append((version, info["weight_version"], self.urls[0]))

    with pytest.MonkeyPatch.context() as mp:
        load = write_verifier(tmp, mp)
        config = grpo_config(
            tmp,
            make_data(tmp / "data"),
            load,
            rollout={"engine": "sglang", "sglang": {"urls": ["local"]}},
            checkpoint={"every_steps": 0},
        )
        mp.setattr(SGLangEngine, "update_weights", spy_update)
        with pytest.raises(SystemExit) as exit_:
            cli.main(["train", str(config), "--set", f"optim.steps={STEPS}"])
    torch.set_num_threads(threads)
    assert exit_.value.code == 0
    return tmp / "run", synced


def test_run_completes_and_parameters_change(local_run):
    run, _ = local_run
    rows = rows_of(run)
    assert [r["step"] for r in rows] == [0, 1, 2, 3]
    assert "eval/accuracy" in rows[0] and "eval/accuracy" in rows[-1]
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["steps"] == STEPS
    model = AutoModelForCausalLM.from_pretrained(run / "final")
    fresh = tiny.build_model("tiny", tokenizer=tiny.build_tokenizer(), seed=0)
    trained = dict(model.named_parameters())
    changed = [n for n, p in fresh.named_parameters() if not torch.equal(p, trained[n])]
    assert len(changed) == len(list(fresh.parameters())), "every parameter should move"


def test_server_takes_each_step_s_weights_and_is_stopped(local_run):
    run, synced = local_run
    versions = [OPT_STEPS * s for s in range(1, STEPS + 1)]
    assert [(v, w) for v, w, _ in synced] == [(v, str(v)) for v in versions]
    # Only the last synced version stays on disk (the start's export included).
    last = f"v{versions[-1]}"
    assert sorted(p.name for p in (run / "weight_sync").iterdir()) == [last]
    assert (run / "weight_sync" / last / "tokenizer.json").exists()
    with pytest.raises(httpx.TransportError):  # the trainer stopped the server it started
        httpx.get(synced[0][2] + "/health", timeout=5)


def test_logprob_gap_staleness_and_status_counts(local_run):
    run, _ = local_run
    for row in rows_of(run)[1:]:
        step = row["step"]
        assert row["rollout/logprob_gap_mean"] < GAP_FP32, row
        assert row["rollout/logprob_gap_max"] < GAP_FP32, row
        assert row["rollout/importance_ratio_mean"] == pytest.approx(1.0, abs=GAP_FP32)
        # Sampled by the weights of the previous step's sync, none stale.
        version = OPT_STEPS * (step - 1)
        assert row["rollout/weight_version_min"] == row["rollout/weight_version_max"] == version
        assert row["rollout/staleness_min"] == row["rollout/staleness_max"] == 0
        ok, refused = row["reward_status/digits/OK"], row["reward_status/digits/INVALID_INPUT"]
        assert ok + refused == SAMPLES_PER_STEP
        assert row["samples/trained"] == ok
        assert row["time/sync_s"] > 0


# --- a rollout server that dies mid-run ----------------------------------------------------

_LISTENING = re.compile(r"listening on http://(\S+)")


class RolloutServer:
    """`referee serve rollout` on a port that stays the same across restarts."""

    def __init__(self) -> None:
        self.port = 0
        self.proc: subprocess.Popen[str] | None = None
        self.output: list[str] = []

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, model: str, weight_version: str = "default") -> None:
        cmd = [sys.executable, "-m", "referee.cli", "serve", "rollout", "--model", model]
        cmd += ["--port", str(self.port), "--weight-version", weight_version]
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        found = threading.Event()

        def pump() -> None:
            assert proc.stdout is not None
            for line in proc.stdout:
                self.output.append(line)
                m = _LISTENING.search(line)
                if m and not found.is_set():
                    self.port = int(m.group(1).rsplit(":", 1)[1])
                    found.set()
            found.set()

        threading.Thread(target=pump, daemon=True).start()
        self.proc = proc
        if not found.wait(120) or proc.poll() is not None:
            raise RuntimeError("rollout server did not start:\n" + "".join(self.output))

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


@pytest.fixture
def server():
    srv = RolloutServer()
    srv.start("tiny:tiny")
    yield srv
    srv.kill()


def outage_config(tmp_path, monkeypatch, server: RolloutServer, retry_total_s: float) -> Path:
    load = write_verifier(tmp_path, monkeypatch)
    return grpo_config(
        tmp_path,
        make_data(tmp_path / "data"),
        load,
        rollout={
            "engine": "sglang",
            "sglang": {
                "urls": [server.url],
                "weight_sync_dir": str(tmp_path / "sync"),
                "retry_total_s": retry_total_s,
            },
        },
        checkpoint={"every_steps": 0},
        eval={"enabled": False},
    )


def test_server_restarted_within_retry_window_the_run_completes(
    tmp_path, monkeypatch, server, restore_threads
):
    """Killed after step 1's optimiser steps (so step 1's sync meets a dead server) and
    again before step 2's rollout; each time restarted from the weights it last had.
    (With TIS on, whose weights are 1 while the servers are in sync.)"""
    config = outage_config(tmp_path, monkeypatch, server, retry_total_s=120)
    sync_dir = tmp_path / "sync"
    outages: list[float] = []  # seconds from kill to the restarted server listening
    threads: list[threading.Thread] = []

    def outage(weights: Path, version: int) -> None:
        server.kill()  # the trainer goes on at once: it meets a closed port
        killed = time.monotonic()

        def restart() -> None:
            server.start(str(weights), str(version))
            outages.append(time.monotonic() - killed)

        threads.append(threading.Thread(target=restart))
        threads[-1].start()

    real_update, real_collect = grpo._update, grpo._collect
    updates = []

    def update_then_kill(*args, **kwargs):
        out = real_update(*args, **kwargs)
        updates.append(1)
        if len(updates) == 1:  # step 1 trained; its sync comes next
            outage(sync_dir / "v0", 0)  # the weights the server had
        return out

    def kill_then_collect(cfg, rollout, scorer, prompts, encode, step):
        if step == 2:
            outage(sync_dir / f"v{OPT_STEPS}", OPT_STEPS)  # step 1's sync
        return real_collect(cfg, rollout, scorer, prompts, encode, step)

    monkeypatch.setattr(grpo, "_update", update_then_kill)
    monkeypatch.setattr(grpo, "_collect", kill_then_collect)
    summary = train(load_config(config, [f"optim.steps={STEPS}", "algorithm.tis_cap=2.0"]))
    for t in threads:
        t.join(60)

    assert summary["status"] == "completed" and summary["steps"] == STEPS
    assert len(outages) == 2 and all(o > 0.5 for o in outages), outages
    rows = rows_of(tmp_path / "run")
    assert [r["step"] for r in rows] == [1, 2, 3]
    # The trainer waited out each outage: step 1's sync and step 2's rollout.
    assert rows[0]["time/sync_s"] >= 0.8 * outages[0]
    assert rows[1]["time/rollout_s"] >= 0.8 * outages[1]
    for row in rows:  # the restarted server got the trainer's weights back
        assert row["rollout/staleness_max"] == 0
        assert row["rollout/logprob_gap_max"] < GAP_FP32
        assert row["rollout/tis_weight_mean"] == pytest.approx(1.0, abs=GAP_FP32)
    info = httpx.get(server.url + "/get_model_info", timeout=30).json()
    assert info["weight_version"] == str(OPT_STEPS * STEPS)


def test_server_gone_for_good_stops_the_run_with_a_clear_error(
    tmp_path, monkeypatch, server, capsys, restore_threads
):
    retry_total_s = 2.0
    config = outage_config(tmp_path, monkeypatch, server, retry_total_s=retry_total_s)
    real_collect = grpo._collect
    killed: list[float] = []

    def kill_then_collect(cfg, rollout, scorer, prompts, encode, step):
        if step == 2:
            server.kill()
            killed.append(time.monotonic())
        return real_collect(cfg, rollout, scorer, prompts, encode, step)

    monkeypatch.setattr(grpo, "_collect", kill_then_collect)
    with pytest.raises(SystemExit) as exit_:
        cli.main(["train", str(config), "--set", f"optim.steps={STEPS}"])
    stopped_after = time.monotonic() - killed[0]

    assert exit_.value.code == 1
    err = capsys.readouterr().err
    assert server.url in err and f"rollout.sglang.retry_total_s={retry_total_s:g}" in err, err
    assert stopped_after < retry_total_s + 15, stopped_after  # retries, then teardown
    # Step 1 trained and was logged; step 2's incomplete batch never reached the loss.
    rows = rows_of(tmp_path / "run")
    assert [r["step"] for r in rows] == [1]
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["status"].startswith("failed: SGLangUnavailableError")
    assert not (tmp_path / "run" / "final").exists()
