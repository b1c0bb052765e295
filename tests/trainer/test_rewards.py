"""The trainer's reward scoring against real `referee serve verifiers` processes.

Services are started by `referee.trainer.local_services`; the verifiers they load come
from a small module written to a temporary folder (on the services' PYTHONPATH). The
rollout engine is `FakeEngine`, which returns canned completions with a delay between
groups: the real `hf` engine is tested in test_rollout_hf.py, and these tests are about
what happens to completions after generation.
"""

from __future__ import annotations

import math
import os
import signal
import textwrap
import time
from collections.abc import Callable, Iterator, Sequence

import pytest
import torch

from referee.testing import free_port
from referee.trainer.algorithms import ADVANTAGE_ESTIMATORS, group_stats
from referee.trainer.config import RewardSourceConfig
from referee.trainer.config_load import ConfigError
from referee.trainer.data import PromptRow
from referee.trainer.local_services import LocalService, start_local_services, start_service
from referee.trainer.rewards import RewardScorer, ScoredBatch, combine_scores
from referee.trainer.rollout.base import Completion, RolloutEngine, SamplingParams
from referee.types import Score, Status

pytestmark = pytest.mark.timeout(120)

FIXTURE_VERIFIERS = '''
"""Verifiers for the trainer's reward tests."""
import time

from referee import InvalidInput, Result, Sample, verifier


@verifier(name="xs", version="1")
def xs(sample: Sample) -> Result:
    """Counts the x in the completion; "invalid" is INVALID_INPUT, "boom" an ERROR."""
    text = sample.completion or ""
    if text == "invalid":
        raise InvalidInput("completion is 'invalid'")
    if text == "boom":
        raise RuntimeError("boom")
    n = float(text.count("x"))
    return Result.ok(n, components={"xs": n, "length": float(len(text))})


@verifier(name="hang", version="1", timeout_s=0.5)
def hang(sample: Sample) -> Result:
    """1.0, except that the completion "hang" never finishes (TIMEOUT after 0.5 s)."""
    if sample.completion == "hang":
        time.sleep(60)
    return Result.ok(1.0)


@verifier(name="sleepy", version="1")
def sleepy(sample: Sample) -> Result:
    """Sleeps metadata.sleep_s, then 1.0."""
    time.sleep(float(sample.metadata.get("sleep_s", 0.0)))
    return Result.ok(1.0)


ALL = [xs, hang, sleepy]
'''

SERVE_ARGS = ["--no-entrypoints", "--load", "trainer_reward_fixtures:ALL"]


@pytest.fixture(scope="module")
def fixture_env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    folder = tmp_path_factory.mktemp("verifiers")
    (folder / "trainer_reward_fixtures.py").write_text(textwrap.dedent(FIXTURE_VERIFIERS))
    path = os.pathsep.join(p for p in (str(folder), os.environ.get("PYTHONPATH", "")) if p)
    return {"PYTHONPATH": path}


@pytest.fixture(scope="module")
def address(fixture_env: dict[str, str]) -> Iterator[str]:
    """One verifiers service (built-ins + the fixtures), shared by the module."""
    local = RewardSourceConfig(target="local", reward="xs", local_args=SERVE_ARGS)
    with start_local_services([local], workers=2, env=fixture_env) as services:
        yield services.targets([local])["xs"][0]


@pytest.fixture
def started() -> Iterator[list[LocalService]]:
    """Services a test starts itself (to kill them); all stopped at teardown."""
    services: list[LocalService] = []
    yield services
    for svc in services:
        svc.stop(5)


class FakeEngine:
    """A stand-in `RolloutEngine` that returns canned completion texts.

    Group i is delivered `delay_s` after group i-1; `before_group(i)` runs just before
    group i is made (a test kills a service there). `generated_at[i]` is when group i
    was handed to `on_group`.
    """

    weight_version = 0

    def __init__(
        self,
        texts: Sequence[Sequence[str]],
        delay_s: float = 0.0,
        before_group: Callable[[int], None] | None = None,
    ) -> None:
        self.texts = texts
        self.delay_s = delay_s
        self.before_group = before_group
        self.generated_at: list[float] = []

    def generate(self, prompts, params, on_group=None):  # noqa: ANN001, ANN201
        assert len(prompts) == len(self.texts)
        out = []
        for i, prompt in enumerate(prompts):
            if i and self.delay_s:
                time.sleep(self.delay_s)
            if self.before_group is not None:
                self.before_group(i)
            assert len(self.texts[i]) == params.n
            group = [
                Completion(i, j, list(prompt), [7], text, [0.0], "stop", self.weight_version)
                for j, text in enumerate(self.texts[i])
            ]
            self.generated_at.append(time.monotonic())
            if on_group is not None:
                on_group(i, group)
            out.append(group)
        return out

    def update_weights(self, source, version=None) -> None:  # noqa: ANN001
        self.weight_version = self.weight_version + 1 if version is None else version

    def close(self) -> None:
        pass


def run_batch(
    scorer: RewardScorer,
    texts: Sequence[Sequence[str]],
    *,
    reference: str = "",
    metadata: dict | None = None,
    delay_s: float = 0.0,
    before_group: Callable[[int], None] | None = None,
    overlap: bool = True,
) -> tuple[ScoredBatch, FakeEngine]:
    engine = FakeEngine(texts, delay_s, before_group)
    assert isinstance(engine, RolloutEngine)
    rows = [PromptRow(f"p{i}", f"prompt {i}", reference, metadata or {}) for i in range(len(texts))]
    ids = [[1, 2, i] for i in range(len(texts))]
    params = SamplingParams(n=len(texts[0]))
    drive = scorer.score_while_generating if overlap else scorer.score_after_generation
    return drive(engine, rows, ids, params), engine


def source(target: str | list[str], reward: str, **kw) -> RewardSourceConfig:  # noqa: ANN003
    return RewardSourceConfig(target=target, reward=reward, **kw)


def assert_failed_samples_never_score(batch: ScoredBatch, group_size: int) -> None:
    """What the trainer uses from a batch never treats a failed sample as a reward."""
    rewards, valid = batch.rewards, batch.valid
    assert torch.isnan(rewards[~valid]).all(), "a failed sample's reward must be NaN"
    assert not torch.isnan(rewards[valid]).any()
    stats = group_stats(rewards, valid, group_size)
    assert torch.equal(stats.count.view(-1), valid.view(-1, group_size).sum(-1))
    for name, estimator in ADVANTAGE_ESTIMATORS.items():
        adv = estimator(rewards, valid, group_size)
        assert torch.isfinite(adv).all(), name
        assert (adv[~valid] == 0).all(), name


# --- combining sources ----------------------------------------------------------------


def test_weights_sum_sources_and_components_are_logged(address: str) -> None:
    sources = [
        source(address, "exact", weight=2.0),
        source(address, "xs", name="count", weight=0.5),
    ]
    with RewardScorer(sources) as scorer:
        batch, _ = run_batch(
            scorer, [["xx", "x", "xxx", ""], ["xx", "q", "xx", "xxxx"]], reference="xx"
        )

    exact = [1, 0, 0, 0, 1, 0, 1, 0]
    count = [2, 1, 3, 0, 2, 0, 2, 4]
    expected = [2.0 * e + 0.5 * c for e, c in zip(exact, count, strict=True)]
    assert batch.rewards.tolist() == pytest.approx(expected)
    assert batch.valid.all()
    assert batch.values["exact"].tolist() == exact
    assert batch.values["count"].tolist() == count
    assert batch.components["count"]["length"].tolist() == [2, 1, 3, 0, 2, 1, 2, 4]
    assert [len(g) for g in batch.groups] == [4, 4] and len(batch.rollout) == 8
    assert batch.status_counts["count"][Status.OK] == 8
    assert batch.status_counts["exact"][Status.ERROR] == 0

    m = batch.metrics()
    assert m["reward/mean"] == pytest.approx(sum(expected) / 8)
    assert m["reward/count"] == pytest.approx(sum(count) / 8)
    assert m["reward/count/xs"] == pytest.approx(sum(count) / 8)
    assert m["reward/count/length"] == pytest.approx(15 / 8)
    assert m["reward_status/exact/OK"] == 8
    assert m["reward_status/exact/UNAVAILABLE"] == 0
    assert m["reward_status/masked_samples"] == 0


def test_combine_scores_group_mask_and_nan() -> None:
    ok = lambda v: Score("s", Status.OK, v)  # noqa: E731
    bad = Score("s", Status.TIMEOUT, None, reason="slow")
    scores = {"a": [ok(1.0), ok(0.0), ok(1.0)], "b": [ok(2.0), bad, ok(0.0)]}
    per_sample = combine_scores(scores, {"a": 1.0, "b": -0.5}, "sample")
    assert per_sample.valid == [True, False, True]
    assert per_sample.rewards[0] == 0.0 and per_sample.rewards[2] == 1.0
    assert math.isnan(per_sample.rewards[1])
    per_group = combine_scores(scores, {"a": 1.0, "b": -0.5}, "group")
    assert per_group.valid == [False] * 3
    assert all(math.isnan(r) for r in per_group.rewards)


# --- failed scores: masked and counted, never 0 ----------------------------------------

TEXTS = [["x", "invalid", "boom", "xx"], ["hang", "xxx", "x", "x"], ["x", "xx", "", "x"]]


@pytest.mark.parametrize("mask", ["sample", "group"])
def test_non_ok_statuses_make_samples_invalid(address: str, mask: str) -> None:
    sources = [source(address, "xs"), source(address, "hang", weight=0.0)]
    with RewardScorer(sources, mask=mask) as scorer:
        batch, _ = run_batch(scorer, TEXTS)

    counts = batch.status_counts
    assert counts["xs"] == {
        Status.OK: 10, Status.INVALID_INPUT: 1, Status.ERROR: 1, Status.TIMEOUT: 0, Status.UNAVAILABLE: 0,
    }  # fmt: skip
    assert counts["hang"][Status.TIMEOUT] == 1 and counts["hang"][Status.OK] == 11
    assert set(batch.failure_examples) == {"xs/INVALID_INPUT", "xs/ERROR", "hang/TIMEOUT"}
    assert "invalid" in batch.failure_examples["xs/INVALID_INPUT"]

    if mask == "sample":
        assert (
            batch.valid.tolist()
            == [True, False, False, True] + [False, True, True, True] + [True] * 4
        )
        # Group 0's statistics come from its two valid samples (1 and 2 x), not from 4.
        stats = group_stats(batch.rewards, batch.valid, 4)
        assert stats.count.view(-1).tolist() == [2, 3, 4]
        assert stats.mean[0].item() == pytest.approx(1.5)
    else:
        assert batch.valid.tolist() == [False] * 8 + [True] * 4
    assert batch.rewards[batch.valid].tolist() == pytest.approx(
        [
            r
            for r, v in zip([1, 0, 0, 2, 0, 3, 1, 1, 1, 2, 0, 1], batch.valid.tolist(), strict=True)
            if v
        ]
    )
    # A valid wrong answer keeps its 0; a failed sample never has one.
    assert (batch.rewards[~batch.valid] == 0).sum() == 0
    assert_failed_samples_never_score(batch, 4)
    assert batch.metrics()["reward_status/masked_samples"] == (~batch.valid).sum().item()


def test_source_deadline_gives_timeout_not_zero(address: str) -> None:
    # One sample per group: one of the service's two workers sleeps, the other serves xs.
    sources = [source(address, "xs"), source(address, "sleepy", timeout_s=0.5)]
    with RewardScorer(sources) as scorer:
        t0 = time.monotonic()
        batch, _ = run_batch(scorer, [["xx"], ["x"]], metadata={"sleep_s": 1.5}, delay_s=0.6)
        took = time.monotonic() - t0
    assert took < 0.6 + 1.3, "each group is bounded by the source's own deadline"
    assert batch.status_counts["sleepy"][Status.TIMEOUT] == 2
    assert batch.status_counts["xs"][Status.OK] == 2
    assert "sleepy/TIMEOUT" in batch.failure_examples
    assert not batch.valid.any()
    assert torch.isnan(batch.rewards).all()
    assert torch.isnan(batch.values["sleepy"]).all() and batch.values["xs"].tolist() == [2, 1]


async def test_score_group_can_be_awaited_from_any_loop(address: str) -> None:
    row = PromptRow("r", "what?", "xx")
    group = [Completion(0, j, [1], [7], t, [0.0], "stop", 0) for j, t in enumerate(["xx", "x"])]
    with RewardScorer([source(address, "exact")]) as scorer:
        scores = await scorer.score_group(row, group)
    assert scores.rewards == [1.0, 0.0] and scores.valid == [True, True]
    assert [s.id for s in scores.scores["exact"]] == ["r/0", "r/1"]


# --- overlap with generation -------------------------------------------------------------


def test_groups_are_scored_while_later_groups_generate(address: str) -> None:
    # Distinct texts per run: the service caches results by sample.
    overlap_texts = [[f"o{i}x", f"o{i}"] for i in range(3)]
    after_texts = [[f"a{i}x", f"a{i}"] for i in range(3)]
    with RewardScorer([source(address, "sleepy")]) as scorer:
        batch, engine = run_batch(scorer, overlap_texts, metadata={"sleep_s": 0.3}, delay_s=0.5)
        baseline, after_engine = run_batch(
            scorer, after_texts, metadata={"sleep_s": 0.3}, delay_s=0.5, overlap=False
        )

    first = batch.group_scores[0]
    assert first.started_at < engine.generated_at[1] < engine.generated_at[2]
    assert first.finished_at < engine.generated_at[2], "group 0 was scored during generation"
    assert batch.valid.all() and batch.rewards.tolist() == [1.0] * 6
    t = batch.timing
    assert t.generation_s >= 1.0 and t.scoring_s >= 0.8
    assert t.exposed_s < 0.6 * t.scoring_s
    # The baseline starts scoring only when every group exists: nothing is hidden.
    assert baseline.group_scores[0].started_at >= after_engine.generated_at[-1]
    assert baseline.timing.hidden_fraction <= 0.05
    assert baseline.timing.exposed_s >= 0.25


# --- a service that dies mid-run -------------------------------------------------------


def _kill(svc: LocalService) -> None:
    os.kill(svc.proc.pid, signal.SIGKILL)
    svc.proc.wait(10)


def test_killed_replica_fails_over_to_the_other(started: list[LocalService]) -> None:
    a = start_service("verifiers", ["--no-entrypoints"], workers=1)
    started.append(a)
    b = start_service("verifiers", ["--no-entrypoints"], workers=1)
    started.append(b)
    texts = [[f"{i}", "no"] for i in range(6)]

    def kill_a(i: int) -> None:
        if i == 2:
            _kill(a)

    with RewardScorer([source([a.address, b.address], "exact", timeout_s=10.0)]) as scorer:
        batch, _ = run_batch(scorer, texts, reference="3", delay_s=0.1, before_group=kill_a)

    assert not a.alive and b.alive
    assert batch.valid.all(), batch.failure_examples
    assert batch.status_counts["exact"][Status.OK] == 12
    assert batch.rewards.tolist() == [1.0 if t == "3" else 0.0 for g in texts for t in g]


def test_killed_only_replica_masks_and_counts_never_zero(started: list[LocalService]) -> None:
    svc = start_service("verifiers", ["--no-entrypoints"], workers=1)
    started.append(svc)
    texts = [["4", "5", "4", "6"] for _ in range(4)]

    def kill_at_2(i: int) -> None:
        if i == 2:
            _kill(svc)

    with RewardScorer([source(svc.address, "exact", timeout_s=1.0)]) as scorer:
        batch, _ = run_batch(scorer, texts, reference="4", delay_s=0.1, before_group=kill_at_2)
        # The run goes on: the next batch is scored (as UNAVAILABLE) instead of crashing.
        again, _ = run_batch(scorer, texts[:1], reference="4")

    assert batch.valid.tolist() == [True] * 8 + [False] * 8
    assert batch.rewards[:8].tolist() == [1.0, 0.0, 1.0, 0.0] * 2
    assert batch.status_counts["exact"][Status.UNAVAILABLE] == 8
    assert batch.status_counts["exact"][Status.OK] == 8
    assert "exact/UNAVAILABLE" in batch.failure_examples
    assert batch.metrics()["reward_status/exact/UNAVAILABLE"] == 8
    assert_failed_samples_never_score(batch, 4)
    assert (batch.rewards[~batch.valid] == 0).sum() == 0
    assert not again.valid.any() and again.status_counts["exact"][Status.UNAVAILABLE] == 4


# --- start-up checks ----------------------------------------------------------------------


def test_unreachable_target_fails_at_start_naming_it(address: str) -> None:
    dead = f"127.0.0.1:{free_port()}"
    sources = [source(address, "exact"), source([address, dead], "xs")]
    with RewardScorer(sources) as scorer:
        t0 = time.monotonic()
        with pytest.raises(ConfigError) as err:
            scorer.check(timeout_s=1.0)
    assert time.monotonic() - t0 < 5
    assert err.value.key == "reward.sources.1.target"
    assert dead in str(err.value) and "unreachable" in str(err.value)
    assert f"{address} is unreachable" not in str(err.value)


def test_reward_not_served_fails_at_start_naming_it(address: str) -> None:
    with RewardScorer([source(address, "exact"), source(address, "maths")]) as scorer:
        with pytest.raises(ConfigError) as err:
            scorer.check(timeout_s=2.0)
        assert err.value.key == "reward.sources.1.reward"
        assert "'maths' is not served" in str(err.value) and "math" in str(err.value)
    with RewardScorer([source(address, "exact")]) as scorer:
        scorer.check(timeout_s=2.0)


def test_local_source_needs_its_address() -> None:
    with pytest.raises(ValueError, match="start_local_services"):
        RewardScorer([source("local", "exact")])


def test_start_local_services_feeds_the_scorer(fixture_env: dict[str, str]) -> None:
    # Two local sources sharing a service, one remote-free: the whole start-up path.
    sources = [
        RewardSourceConfig(target="local", reward="exact", local_args=SERVE_ARGS),
        RewardSourceConfig(target="local", reward="xs", local_args=SERVE_ARGS),
    ]
    with start_local_services(sources, workers=1, env=fixture_env) as local:
        targets = local.targets(sources)
        assert targets["exact"] == targets["xs"] and len(local.services) == 1
        with RewardScorer(sources, targets) as scorer:
            scorer.check()
            batch, _ = run_batch(scorer, [["xx", "x"]], reference="xx")
    assert batch.rewards.tolist() == [1.0 + 2.0, 0.0 + 1.0]
    assert not any(svc.alive for svc in local.services)
