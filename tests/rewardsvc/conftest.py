"""Fixtures for the judge tests: the `ScriptedJudge` stand-in and judges pointed at it.

`standin(script)` starts a stand-in chat endpoint (stopped at teardown); `make_judge(url,
**config)` builds a `JudgeVerifier` with test-sized timeouts and backoffs (its HTTP client
closed at teardown). Helpers the tests import live in `judge_kit`.
"""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

HERE = str(Path(__file__).resolve().parent)
if HERE not in sys.path:
    sys.path.insert(0, HERE)

from judge_kit import FAST  # noqa: E402
from judge_standin import ScriptedJudge  # noqa: E402

from referee.rewardsvc.judge import JudgeConfig, JudgeVerifier  # noqa: E402


@pytest.fixture
def standin() -> Iterator[Callable[..., ScriptedJudge]]:
    started: list[ScriptedJudge] = []

    def start(script: Any) -> ScriptedJudge:
        judge = ScriptedJudge(script).__enter__()
        started.append(judge)
        return judge

    yield start
    for judge in started:
        judge.__exit__()


@pytest_asyncio.fixture
async def make_judge() -> AsyncIterator[Callable[..., JudgeVerifier]]:
    made: list[JudgeVerifier] = []

    def make(url: str, **config: Any) -> JudgeVerifier:
        judge = JudgeVerifier(JudgeConfig(endpoint=url, model="stand-in", **(FAST | config)))
        made.append(judge)
        return judge

    yield make
    for judge in made:
        await judge.aclose()
