"""The RewardService of `referee serve judge` (the judge itself is `judge.py`)."""

from __future__ import annotations

import grpc

from referee.rewardsvc.config import VerifierPoolConfig
from referee.rewardsvc.judge import JudgeConfig, JudgeVerifier
from referee.rewardsvc.judge_client import JudgeMetrics
from referee.rewardsvc.metrics import ServerMetrics
from referee.rewardsvc.verifier_service import VerifierService
from referee.verifier import Verifier

JUDGE_SPEC = "referee.rewardsvc.judge:JudgeVerifier"


class JudgeService:
    """The RewardService of `referee serve judge`: the verifier service serving only
    `judge`, configured with `config`, with the judge's metrics on the server's registry.

    The judge runs on the event loop (it is I/O-bound); the verifier service still starts
    its one worker process, which sits idle. Samples in flight are capped at the judge's
    `max_concurrency`, so queueing happens before a sample's clock starts; each sample's
    limit is `config.sample_limit_s` (every attempt and backoff). Besides the judge's reply
    cache, the verifier service caches OK results by (reward, version, params, sample),
    `config.cache_size` entries of each.
    """

    full_name = "referee.v1.RewardService"

    def __init__(self, config: JudgeConfig, max_batch_samples: int = 16384) -> None:
        limit = config.sample_limit_s
        pool = VerifierPoolConfig(
            workers=1, timeout_s=limit, max_timeout_s=limit, cache_size=config.cache_size,
            max_batch_samples=max_batch_samples, async_concurrency=config.max_concurrency,
        )
        self._inner = VerifierService([JUDGE_SPEC], pool)
        judge = self._inner.rewards["judge"]
        if not isinstance(judge, JudgeVerifier):
            raise TypeError(f"{JUDGE_SPEC} loaded a {type(judge).__name__}")
        judge.configure(config)
        self.judge = judge
        self.config = config

    @property
    def rewards(self) -> dict[str, Verifier]:
        return self._inner.rewards

    def attach(self, server: grpc.aio.Server, metrics: ServerMetrics) -> None:
        self.judge.bind_metrics(JudgeMetrics(metrics.registry))
        self._inner.attach(server, metrics)

    async def close(self) -> None:
        await self.judge.aclose()
        await self._inner.close()
