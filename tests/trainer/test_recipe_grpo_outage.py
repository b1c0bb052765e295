"""A reward service that dies in the middle of a GRPO run, end to end: the real recipe,
real `referee serve verifiers` processes, one of them SIGKILLed after step 1.

With a second replica the run goes on scoring through it; with none, every later sample
is UNAVAILABLE: masked out of the loss, counted per step, and never a reward of 0 (the
eval after training reports no accuracy rather than a wrong one).
"""

from __future__ import annotations

import json
import os
import signal

import pytest
import torch
from recipe_helpers import grpo_config, make_data, restore_threads, write_verifier

from referee import cli
from referee.trainer.local_services import LocalService, start_service
from referee.trainer.recipes import grpo

__all__ = ["restore_threads"]

SAMPLES_PER_STEP = 16  # grpo_config: 4 prompts x 4 completions


def run_with_outage(tmp, monkeypatch, replicas: int) -> tuple[list[dict], list, list[LocalService]]:
    """A 3-step run against `replicas` services; the first one is killed after step 1's
    rollout is scored. Returns the metrics rows, the rewards that reached the advantage
    estimator per step, and the services (for cleanup)."""
    load = write_verifier(tmp, monkeypatch)
    services = [start_service("verifiers", ["--no-entrypoints", "--load", load], workers=1) for _ in range(replicas)]
    addresses = [s.address for s in services]
    target = addresses[0] if replicas == 1 else addresses
    config = grpo_config(
        tmp, make_data(tmp / "data"), load,
        reward={"sources": [{"target": target, "reward": "digits", "timeout_s": 5.0}]},
        checkpoint={"every_steps": 0},
    )
    seen: list = []
    collect, estimator = grpo._collect, grpo.ADVANTAGE_ESTIMATORS["grpo"]

    def collect_then_kill(*args, **kwargs):  # noqa: ANN002, ANN003
        out = collect(*args, **kwargs)
        if services[0].proc.poll() is None:
            os.kill(services[0].proc.pid, signal.SIGKILL)
            services[0].proc.wait(10)
        return out

    def spy(rewards, valid, group_size):
        seen.append((rewards.clone(), valid.clone()))
        return estimator(rewards, valid, group_size)

    monkeypatch.setattr(grpo, "_collect", collect_then_kill)
    monkeypatch.setitem(grpo.ADVANTAGE_ESTIMATORS, "grpo", spy)
    with pytest.raises(SystemExit) as exit_:
        cli.main(["train", str(config), "--set", "optim.steps=3"])
    assert exit_.value.code == 0
    rows = [json.loads(line) for line in (tmp / "run" / "metrics.jsonl").read_text().splitlines()]
    return rows, seen, services


def stop(services: list[LocalService]) -> None:
    for s in services:
        if s.proc.poll() is None:
            s.proc.terminate()
            s.proc.wait(10)


def step_rows(rows: list[dict]) -> list[dict]:
    return [r for r in rows if r.get("step", 0) >= 1 and "reward_status/masked_samples" in r]


def test_only_service_dies_later_samples_are_masked_and_counted(tmp_path, monkeypatch, restore_threads):
    rows, seen, services = run_with_outage(tmp_path, monkeypatch, replicas=1)
    try:
        steps = step_rows(rows)
        assert [r["step"] for r in steps] == [1, 2, 3]
        for r in steps[1:]:
            assert r["reward_status/digits/UNAVAILABLE"] == SAMPLES_PER_STEP
            assert r["reward_status/masked_samples"] == SAMPLES_PER_STEP
            assert r["samples/trained"] == 0
        for rewards, valid in seen[1:]:
            assert not valid.any() and torch.isnan(rewards).all(), "a failed sample became a number"
        rewards, valid = seen[0]
        assert valid.any() and not torch.isnan(rewards[valid]).any()

        summary = json.loads((tmp_path / "run" / "summary.json").read_text())
        assert summary["status"] == "completed" and summary["steps"] == 3
        after = summary["eval_after"]
        assert after["accuracy"] is None, "an eval nobody could score is not an accuracy of 0"
        assert after["status/UNAVAILABLE"] == 4
    finally:
        stop(services)


def test_a_dead_replica_fails_over_to_the_other(tmp_path, monkeypatch, restore_threads):
    rows, seen, services = run_with_outage(tmp_path, monkeypatch, replicas=2)
    try:
        assert services[0].proc.poll() is not None and services[1].proc.poll() is None
        for r in step_rows(rows):
            assert r["reward_status/digits/UNAVAILABLE"] == 0
            assert r["reward_status/digits/OK"] + r["reward_status/digits/INVALID_INPUT"] == SAMPLES_PER_STEP
        assert len(seen) == 3
        summary = json.loads((tmp_path / "run" / "summary.json").read_text())
        assert summary["eval_after"].get("status/UNAVAILABLE", 0) == 0
    finally:
        stop(services)
