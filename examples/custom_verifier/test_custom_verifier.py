"""Serves the example verifier both ways a team would (--load and an entry point) and scores it."""

import subprocess
import sys
from pathlib import Path

import pytest

from referee.rewardsvc.client import SyncRewardClient
from referee.testing import serve_process
from referee.types import Status

HERE = Path(__file__).parent
SAMPLES = [
    {"id": "all", "completion": "Paris is the capital of France", "metadata": {"keywords": ["paris", "france"]}},
    {"id": "half", "completion": "Paris, of course", "metadata": {"keywords": ["paris", "France"]}},
    {"id": "bad", "completion": "anything", "metadata": {"keywords": "paris"}},
]


def check(address: str) -> None:
    with SyncRewardClient(address, timeout_s=30) as client:
        scores = client.score("keywords", SAMPLES)
        assert [s.value for s in scores] == [1.0, 0.5, None]
        assert scores[1].components == {"paris": 1.0, "france": 0.0}
        assert scores[2].status is Status.INVALID_INPUT
        assert "metadata.keywords" in scores[2].reason
        strict = client.score("keywords", SAMPLES[1:2], {"case_sensitive": True})
        assert strict[0].value == 0.0
        (info,) = [r for r in client.list_rewards() if r.name == "keywords"]
        assert (info.version, info.params[0].name) == ("1", "case_sensitive")


def test_served_with_load() -> None:
    args = ["verifiers", "--workers", "1", "--no-builtins", "--no-entrypoints",
            "--load", "keyword_reward.verifier:keyword_coverage"]
    with serve_process(args, cwd=HERE) as server:
        check(server.address)


@pytest.mark.slow
def test_served_through_entry_point(tmp_path: Path) -> None:
    site = tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
         "--no-index", "--target", str(site), str(HERE)],
        check=True,
    )
    with serve_process(["verifiers", "--workers", "1", "--no-builtins"], cwd=tmp_path,
                       env={"PYTHONPATH": str(site)}) as server:
        check(server.address)
