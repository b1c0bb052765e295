"""Scoring rollouts with the reward services, one group at a time, while generation runs.

>>> with RewardScorer(cfg.reward.sources, local.targets(cfg.reward.sources)) as scorer:  # doctest: +SKIP
...     scorer.check()                                  # unreachable target: ConfigError now
...     batch = scorer.score_while_generating(engine, rows, prompt_ids, params)
...     adv = grpo_advantages(batch.rewards, batch.valid, params.n)

Each reward source has its own `RewardClient` (its replicas, params, weight, deadline).
A group's samples go to every source at once, as soon as the engine delivers the group,
so scoring hides behind the generation of the groups still running.

A failure is not a score (DESIGN.md section 3). A sample is valid only when every source
returned OK for it; its reward is then the weighted sum of the sources' values. An
invalid sample's reward is NaN, never 0, so arithmetic that forgets `valid` shows up at
once instead of silently training towards "wrong"; the advantage functions never read
it. With `mask="group"` one failed sample invalidates its whole group (the baseline
would otherwise be computed from the survivors only). Failures are counted per source
and status; a source must succeed even with weight 0 (a logged-only reward).

Errors no retry can fix (an unknown reward, bad params, a rejected token) are raised as
`RewardScoringError` naming the source: they are misconfiguration, not a sample's fate.

The scorer runs its clients on an event loop in a background thread, so the trainer
calls it synchronously; `score_group` may be awaited from any event loop.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import math
import os
import threading
import time
from collections.abc import Coroutine, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Literal, TypeVar

import grpc
import torch
from torch import Tensor

from referee.rewardsvc.client import RewardCallError, RewardClient
from referee.trainer.config import RewardSourceConfig
from referee.trainer.config_load import ConfigError
from referee.trainer.data import PromptRow
from referee.trainer.rollout.base import (
    Completion,
    RolloutBatch,
    RolloutEngine,
    SamplingParams,
    iter_groups,
)
from referee.types import Score, Status

T = TypeVar("T")
MaskMode = Literal["sample", "group"]
NAN = float("nan")


class RewardScoringError(RuntimeError):
    """A reward call failed in a way no retry can fix; the message names the source."""


@dataclass
class GroupScores:
    """One prompt's group, scored by every source. Lists run over the group's samples."""

    scores: dict[str, list[Score]]
    """Per source name, one score per sample, in sample order."""
    rewards: list[float]
    """Weighted sum of the sources' values; NaN where the sample is not valid."""
    valid: list[bool]
    """Every source said OK for the sample (and, with mask="group", for the whole group)."""
    started_at: float = 0.0
    """`time.monotonic()` when the group was sent to the services."""
    finished_at: float = 0.0
    """`time.monotonic()` when the last source answered."""


def combine_scores(
    scores: Mapping[str, Sequence[Score]],
    weights: Mapping[str, float],
    mask: MaskMode = "sample",
) -> GroupScores:
    """Sums each sample's values by source weight; a sample with any non-OK score is
    invalid (its reward NaN). `mask="group"` invalidates the group if any sample is.

    >>> from referee.types import Score, Status
    >>> ok = lambda v: Score("a", Status.OK, v)
    >>> g = combine_scores({"m": [ok(1.0), ok(0.0)], "f": [ok(1.0), Score("b", Status.ERROR, None)]},
    ...                    {"m": 1.0, "f": 0.5})
    >>> g.rewards[0], g.valid
    (1.5, [True, False])
    """
    if mask not in ("sample", "group"):
        raise ValueError(f'mask must be "sample" or "group", got {mask!r}')
    sizes = {len(s) for s in scores.values()}
    if len(sizes) > 1:
        raise ValueError(f"sources scored different numbers of samples: {sizes}")
    n = sizes.pop() if sizes else 0
    valid = [all(s[i].ok for s in scores.values()) for i in range(n)]
    if mask == "group" and not all(valid):
        valid = [False] * n
    rewards = [
        math.fsum(weights[name] * s[i].value for name, s in scores.items()) if valid[i] else NAN  # type: ignore[operator]
        for i in range(n)
    ]
    return GroupScores({k: list(v) for k, v in scores.items()}, rewards, valid)


@dataclass(frozen=True)
class ScoringTiming:
    """Where a rollout batch's wall time went (seconds, from the start of generation).

    The benchmark's hidden fraction is `1 - exposed_s / baseline.scoring_s`, with the
    baseline from `score_after_generation` on the same batch; `hidden_fraction` is the
    same ratio within one run (exposed against the scoring time seen here).
    """

    generation_s: float
    """Until the engine returned the last group."""
    scoring_s: float
    """Time during which at least one group was being scored."""
    exposed_s: float
    """Scoring latency not hidden by generation: generation end to the last score."""
    total_s: float

    @property
    def hidden_fraction(self) -> float:
        return 1.0 - self.exposed_s / self.scoring_s if self.scoring_s > 0 else 1.0


@dataclass
class ScoredBatch:
    """A rollout batch with its rewards; rows are group-major in prompt order (B prompts,
    G samples each: row g*G + j is sample j of prompt g), the layout the advantage
    estimators expect."""

    groups: list[list[Completion]]
    """Completions per prompt, in prompt order (the rows of `RolloutBatch`)."""
    group_scores: list[GroupScores]
    """Per prompt, in prompt order."""
    rewards: Tensor  # [B*G] float32, NaN where not valid (never 0)
    valid: Tensor  # [B*G] bool
    values: dict[str, Tensor]
    """Per source: `[B*G]` float32 values, NaN where that source's score was not OK."""
    components: dict[str, dict[str, Tensor]]
    """Per source and component: `[B*G]` float32, NaN where the score has no such component."""
    status_counts: dict[str, dict[Status, int]]
    """Per source: samples per status (every status listed, zeros included)."""
    failure_examples: dict[str, str]
    """`"<source>/<STATUS>"` -> the reason given with one such score, for the log."""
    timing: ScoringTiming

    @property
    def rollout(self) -> RolloutBatch:
        """The completions as the rollout batch the loss is computed on (same row order)."""
        return RolloutBatch(self.groups)

    def metrics(self) -> dict[str, float]:
        """Scalars to log: `reward/mean` (valid samples), `reward/<source>` and
        `reward/<source>/<component>` (means over the OK scores),
        `reward_status/<source>/<STATUS>` counts, masked samples, and timings."""
        out: dict[str, float] = {}
        if bool(self.valid.any()):
            out["reward/mean"] = float(self.rewards[self.valid].mean())
        out["reward_status/masked_samples"] = float((~self.valid).sum())
        for src, values in self.values.items():
            _put_mean(out, f"reward/{src}", values)
            for comp, t in self.components[src].items():
                _put_mean(out, f"reward/{src}/{comp}", t)
        for src, counts in self.status_counts.items():
            for status, n in counts.items():
                out[f"reward_status/{src}/{status.value}"] = float(n)
        out["time/generation_s"] = self.timing.generation_s
        out["time/scoring_s"] = self.timing.scoring_s
        out["time/scoring_exposed_s"] = self.timing.exposed_s
        return out


def _put_mean(out: dict[str, float], key: str, t: Tensor) -> None:
    ok = ~torch.isnan(t)
    if bool(ok.any()):
        out[key] = float(t[ok].mean())


class RewardScorer:
    """Scores groups of completions with every reward source; owns a client per source.

    `targets` maps a source name to its addresses (`LocalServices.targets` gives them,
    local sources included); a source missing from it calls its configured replicas.
    """

    def __init__(
        self,
        sources: Sequence[RewardSourceConfig],
        targets: Mapping[str, Sequence[str]] | None = None,
        *,
        mask: MaskMode = "sample",
    ) -> None:
        if mask not in ("sample", "group"):
            raise ValueError(f'mask must be "sample" or "group", got {mask!r}')
        if not sources:
            raise ValueError("no reward sources; list at least one under reward.sources")
        self.sources = list(sources)
        self.mask: MaskMode = mask
        self.weights = {s.name: s.weight for s in self.sources}
        self.targets: dict[str, list[str]] = {}
        self._auth: dict[str, dict[str, Any]] = {}
        for i, src in enumerate(self.sources):
            addrs = list((targets or {}).get(src.name) or src.replicas)
            if not addrs:
                raise ValueError(
                    f"reward source {src.name!r} is local and has no address yet: start it "
                    "with start_local_services and pass its targets()"
                )
            self.targets[src.name] = addrs
            self._auth[src.name] = _auth(i, src)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="reward-scorer", daemon=True
        )
        self._thread.start()

        async def make() -> dict[str, RewardClient]:
            return {
                s.name: RewardClient(
                    self.targets[s.name], timeout_s=s.timeout_s, **self._auth[s.name]
                )
                for s in self.sources
            }

        try:
            self._clients = self._run(make())
        except BaseException:
            self._stop_loop()
            raise

    # --- one group ---------------------------------------------------------------------

    async def score_group(
        self, prompt_row: PromptRow, completions: Sequence[Completion]
    ) -> GroupScores:
        """Scores one prompt's completions with every source, concurrently, each within
        its own `timeout_s`. May be awaited from any event loop."""
        coro = self._score_group(prompt_row, completions)
        if _running_loop() is self._loop:
            return await coro
        return await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(coro, self._loop))

    async def _score_group(self, row: PromptRow, completions: Sequence[Completion]) -> GroupScores:
        started = time.monotonic()
        samples = [row.sample(c.text, f"{row.id}/{c.sample_index}") for c in completions]
        tasks = [asyncio.ensure_future(self._score_source(s, samples)) for s in self.sources]
        try:
            parts = await asyncio.gather(*tasks)
        except BaseException:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            raise
        group = combine_scores(
            {s.name: part for s, part in zip(self.sources, parts, strict=True)},
            self.weights,
            self.mask,
        )
        group.started_at, group.finished_at = started, time.monotonic()
        return group

    async def _score_source(self, src: RewardSourceConfig, samples: list[Any]) -> list[Score]:
        try:
            return await self._clients[src.name].score(
                src.reward, samples, src.params, timeout_s=src.timeout_s
            )
        except RewardCallError as e:
            raise RewardScoringError(
                f"reward source {src.name!r} (reward {src.reward!r}) failed: {e}"
            ) from e

    # --- the trainer's drivers -------------------------------------------------------

    def score_while_generating(
        self,
        engine: RolloutEngine,
        prompt_rows: Sequence[PromptRow],
        prompt_token_ids: Sequence[Sequence[int]],
        sampling_params: SamplingParams,
    ) -> ScoredBatch:
        """Generates the batch and scores each group the moment it is complete.

        Blocks until every group is generated and scored. A scoring error is raised once
        generation has finished; a generation error cancels the scoring in flight.
        """
        self._check_caller(prompt_rows, prompt_token_ids)
        t0 = time.monotonic()
        groups: dict[int, list[Completion]] = {}
        futures: dict[int, concurrent.futures.Future[GroupScores]] = {}
        try:
            for i, group in iter_groups(engine, prompt_token_ids, sampling_params):
                groups[i] = group
                futures[i] = self._submit(self._score_group(prompt_rows[i], group))
            generated = time.monotonic()
            scored = {i: f.result() for i, f in futures.items()}
        except BaseException:
            for f in futures.values():
                f.cancel()
            raise
        return _batch(groups, scored, self.sources, t0, generated)

    def score_after_generation(
        self,
        engine: RolloutEngine,
        prompt_rows: Sequence[PromptRow],
        prompt_token_ids: Sequence[Sequence[int]],
        sampling_params: SamplingParams,
    ) -> ScoredBatch:
        """The baseline without overlap: generate everything, then score every group."""
        self._check_caller(prompt_rows, prompt_token_ids)
        t0 = time.monotonic()
        result = engine.generate(prompt_token_ids, sampling_params)
        generated = time.monotonic()
        groups = dict(enumerate(result))
        return _batch(groups, self._score_all(prompt_rows, groups), self.sources, t0, generated)

    def score_groups(
        self, prompt_rows: Sequence[PromptRow], groups: Sequence[Sequence[Completion]]
    ) -> ScoredBatch:
        """Scores completions that already exist (e.g. for evaluation), all at once."""
        self._check_caller(prompt_rows, groups)
        t0 = time.monotonic()
        by_index = {i: list(g) for i, g in enumerate(groups)}
        return _batch(by_index, self._score_all(prompt_rows, by_index), self.sources, t0, t0)

    def _score_all(
        self, rows: Sequence[PromptRow], groups: Mapping[int, list[Completion]]
    ) -> dict[int, GroupScores]:
        futures = {i: self._submit(self._score_group(rows[i], g)) for i, g in groups.items()}
        try:
            return {i: f.result() for i, f in futures.items()}
        except BaseException:
            for f in futures.values():
                f.cancel()
            raise

    # --- start-up check --------------------------------------------------------------

    def check(self, timeout_s: float = 3.0) -> None:
        """Asks every replica of every source for its rewards, all at once.

        Raises `ConfigError` naming `reward.sources.<i>.target` (unreachable, refused)
        or `reward.sources.<i>.reward` (not served there) for every problem found.
        Assumes `sources` is the config's list, in its order.
        """
        self._check_caller([], [])
        problems = self._run(self._check(timeout_s))
        if problems:
            (key, first), rest = problems[0], problems[1:]
            raise ConfigError(key, first + "".join(f"\n{k}: {why}" for k, why in rest))

    async def _check(self, timeout_s: float) -> list[tuple[str, str]]:
        probes = [
            (i, src, addr) for i, src in enumerate(self.sources) for addr in self.targets[src.name]
        ]
        found = await asyncio.gather(*(self._probe(i, s, a, timeout_s) for i, s, a in probes))
        return [p for p in found if p is not None]

    async def _probe(
        self, i: int, src: RewardSourceConfig, addr: str, timeout_s: float
    ) -> tuple[str, str] | None:
        key = f"reward.sources.{i}"
        try:
            async with RewardClient(addr, timeout_s=timeout_s, **self._auth[src.name]) as client:
                offered = await client.list_rewards(timeout_s)
        except RewardCallError as e:
            if e.code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
                why = f"{addr} is unreachable ({e.code.name}: {e.details}); start the service there or fix the address"
            else:
                why = f"{addr} refused ListRewards ({e.code.name}: {e.details})"
            return f"{key}.target", why
        names = sorted(r.name for r in offered)
        if src.reward not in names:
            return f"{key}.reward", (
                f"{src.reward!r} is not served by {addr}; it serves {', '.join(names) or 'nothing'}"
            )
        return None

    # --- the loop thread ---------------------------------------------------------------

    def _submit(self, coro: Coroutine[Any, Any, T]) -> concurrent.futures.Future[T]:
        return asyncio.run_coroutine_threadsafe(coro, self._loop)

    def _run(self, coro: Coroutine[Any, Any, T]) -> T:
        return self._submit(coro).result()

    def _check_caller(self, rows: Sequence[Any], other: Sequence[Any]) -> None:
        if _running_loop() is self._loop:
            raise RuntimeError(
                "the scorer's blocking methods cannot run on its own loop; await score_group"
            )
        if not self._loop.is_running():
            raise RuntimeError("the scorer is closed")
        if len(rows) != len(other):
            raise ValueError(f"{len(rows)} prompt rows for {len(other)} prompts")

    def _stop_loop(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()

    def close(self) -> None:
        """Closes the clients and stops the loop thread. Idempotent."""
        if self._loop.is_closed():
            return
        if self._loop.is_running():

            async def close_all() -> None:
                await asyncio.gather(*(c.close() for c in self._clients.values()))

            self._run(close_all())
        self._stop_loop()

    def __enter__(self) -> RewardScorer:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def _running_loop() -> asyncio.AbstractEventLoop | None:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


def _auth(index: int, src: RewardSourceConfig) -> dict[str, Any]:
    """The client's token and TLS arguments for a source."""
    out: dict[str, Any] = {}
    if src.token_env:
        token = os.environ.get(src.token_env)
        if not token:
            raise ConfigError(
                f"reward.sources.{index}.token_env",
                f"${src.token_env} is not set; export the service's bearer token in it",
            )
        out["token"] = token
    if src.tls_ca is not None:
        out["tls_ca"] = Path(src.tls_ca)
    return out


def _batch(
    groups: Mapping[int, list[Completion]],
    scored: Mapping[int, GroupScores],
    sources: Sequence[RewardSourceConfig],
    t0: float,
    generated: float,
) -> ScoredBatch:
    """Lays the groups out in prompt order as `[B*G]` tensors, and times the scoring."""
    order = sorted(groups)
    gs = [scored[i] for i in order]
    rewards = torch.tensor([r for g in gs for r in g.rewards], dtype=torch.float32)  # [B*G]
    valid = torch.tensor([v for g in gs for v in g.valid], dtype=torch.bool)  # [B*G]
    values: dict[str, Tensor] = {}
    components: dict[str, dict[str, Tensor]] = {}
    counts: dict[str, dict[Status, int]] = {}
    examples: dict[str, str] = {}
    for src in sources:
        scores = [s for g in gs for s in g.scores[src.name]]
        values[src.name] = torch.tensor(
            [s.value if s.ok else NAN for s in scores], dtype=torch.float32
        )  # [B*G]
        names = sorted({c for s in scores if s.ok for c in s.components})
        components[src.name] = {
            c: torch.tensor(
                [s.components.get(c, NAN) if s.ok else NAN for s in scores], dtype=torch.float32
            )  # [B*G]
            for c in names
        }
        counts[src.name] = {st: 0 for st in Status}
        for s in scores:
            counts[src.name][s.status] += 1
            if not s.ok:
                examples.setdefault(f"{src.name}/{s.status.value}", s.reason)
    ends = [g.finished_at for g in gs]
    last = max(ends, default=generated)
    return ScoredBatch(
        groups=[groups[i] for i in order],
        group_scores=gs,
        rewards=rewards,
        valid=valid,
        values=values,
        components=components,
        status_counts=counts,
        failure_examples=examples,
        timing=ScoringTiming(
            generation_s=generated - t0,
            scoring_s=_union_length([(g.started_at, g.finished_at) for g in gs]),
            exposed_s=max(0.0, last - generated),
            total_s=max(last, generated) - t0,
        ),
    )


def _union_length(intervals: list[tuple[float, float]]) -> float:
    """Total length covered by the intervals (overlaps counted once)."""
    total, end = 0.0, -math.inf
    for a, b in sorted(intervals):
        if b <= end:
            continue
        total += b - max(a, end)
        end = b
    return total


__all__ = [
    "GroupScores",
    "MaskMode",
    "RewardScorer",
    "RewardScoringError",
    "ScoredBatch",
    "ScoringTiming",
    "combine_scores",
]
