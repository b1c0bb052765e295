"""SyncRewardClient from plain (non-async) code, with the server on its own thread."""

from __future__ import annotations

import threading

import grpc
import pytest
from client_servers import ServerInThread

from referee import Sample, Status
from referee.rewardsvc.client import RewardCallError, SyncRewardClient


def client_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "reward-client" and t.is_alive()]


def test_sync_client_scores_lists_and_closes_its_thread() -> None:
    before = client_threads()
    with ServerInThread(token="tok") as server:
        client = SyncRewardClient([server.address], token="tok", timeout_s=30, chunk_size=2)
        try:
            scores = client.score(
                "echo",
                [{"completion": "2"}, Sample(completion="x"), {"completion": "3"}],
                {"offset": 1},
            )
            assert [(s.status, s.value) for s in scores] == [
                (Status.OK, 3.0),
                (Status.INVALID_INPUT, None),
                (Status.OK, 4.0),
            ]
            assert sorted(r.name for r in client.list_rewards()) == ["echo", "needs", "slow"]
            with pytest.raises(RewardCallError) as err:
                client.score("missing", [{"completion": "1"}])
            assert err.value.code is grpc.StatusCode.INVALID_ARGUMENT
        finally:
            client.close()
        assert not client._thread.is_alive()
        assert client_threads() == before
        client.close()  # a second close is harmless

        with SyncRewardClient(server.address, token="tok", timeout_s=30) as again:
            assert again.score("echo", [{"completion": "5"}])[0].value == 5.0
        assert client_threads() == before


def test_sync_client_that_cannot_be_built_leaves_no_thread() -> None:
    before = client_threads()
    with pytest.raises(ValueError, match="at least one target"):
        SyncRewardClient(" , ")
    with pytest.raises(ValueError):
        SyncRewardClient("127.0.0.1:1", chunk_size=0)
    assert client_threads() == before
