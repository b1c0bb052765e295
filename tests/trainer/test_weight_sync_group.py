"""`NcclSync` with its built-in process group (backend gloo) against stand-in engines in
their own processes (`sglang_group_fake.py`): real rendezvous, real broadcasts, real
HTTP; only the receiving server is a stand-in for SGLang.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import torch
from sglang_fake import FakeSGLang
from sglang_group_fake import checksum

from referee.trainer.rollout.buckets import make_buckets
from referee.trainer.rollout.weight_sync import NcclSync, WeightSyncError
from referee.trainer.tiny import build_model

FAKE = Path(__file__).with_name("sglang_group_fake.py")


def start_engine() -> tuple[subprocess.Popen, str]:
    proc = subprocess.Popen(
        [sys.executable, str(FAKE)], stdout=subprocess.PIPE, text=True, cwd=FAKE.parent
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    assert line.startswith("PORT "), f"stand-in engine did not start: {line!r}"
    return proc, f"http://127.0.0.1:{int(line.split()[1])}"


@pytest.fixture(scope="module")
def engines() -> Iterator[list[str]]:
    started = [start_engine(), start_engine()]
    try:
        yield [url for _, url in started]
    finally:
        for proc, _ in started:
            proc.kill()
            proc.wait(timeout=10)


def records(url: str) -> list[dict]:
    return httpx.get(url + "/records", timeout=10).json()


def trainer_checksums(model: torch.nn.Module) -> dict[str, str]:
    return {name: checksum(p) for name, p in model.named_parameters()}


def test_gloo_sync_delivers_exact_tensors_and_reuses_the_group(engines) -> None:
    model = build_model("tiny", vocab_size=40)
    bucket_mb = 0.1
    buckets = make_buckets(list(model.named_parameters()), bucket_mb)
    assert len(buckets) >= 2
    default_before = torch.distributed.is_initialized()  # another test may have set it up
    world_before = torch.distributed.get_world_size() if default_before else None
    sync = NcclSync(
        master_address="127.0.0.1", master_port=0, engine_ranks=[1, 1], backend="gloo",
        bucket_mb=bucket_mb, group_name="g_per_tensor", timeout_s=60,
    )  # fmt: skip
    try:
        sync.sync(engines, model, version=1)
        with torch.no_grad():
            next(model.parameters()).add_(1.0)  # the second sync must carry the change
        sync.sync(engines, model, version=2)
    finally:
        sync.close()
    # The default group was left alone: not created, or (set up by an earlier test) unchanged.
    assert torch.distributed.is_initialized() == default_before
    if default_before:
        assert torch.distributed.get_world_size() == world_before
    expected = trainer_checksums(model)
    for url in engines:
        got = records(url)
        n = len(buckets)
        per_sync = ["/init_weights_update_group"] + ["/update_weights_from_distributed"] * n
        assert [r["path"] for r in got] == (
            ["/pause_generation", *per_sync, "/flush_cache", "/continue_generation"]
            + ["/pause_generation", *per_sync[1:], "/flush_cache", "/continue_generation"]
        )  # one init: the second sync reused the group
        updates = [r for r in got if r["path"] == "/update_weights_from_distributed"]
        assert [u["names"] for u in updates] == [bk.names for bk in buckets] * 2
        assert [u["weight_version"] for u in updates] == ["1"] * n + ["2"] * n
        second: dict[str, str] = {}
        for u in updates[n:]:
            second.update(u["checksums"])
        assert second == expected  # every tensor, bit for bit
        first_name = next(iter(expected))
        assert updates[0]["checksums"][first_name] != expected[first_name]  # the add arrived


def test_gloo_flattened_bucket_on_one_engine(engines) -> None:
    model = build_model("tiny", vocab_size=40)
    before = len(records(engines[0]))
    sync = NcclSync(
        master_address="127.0.0.1", master_port=0, engine_ranks=[1], backend="gloo",
        bucket_mb=0.1, group_name="g_flat", load_format="flattened_bucket", timeout_s=60,
    )  # fmt: skip
    try:
        sync.sync(engines[:1], model, version=7)
    finally:
        sync.close()
    updates = [
        r for r in records(engines[0])[before:] if r["path"] == "/update_weights_from_distributed"
    ]
    assert len(updates) >= 2
    received: dict[str, str] = {}
    for u in updates:
        received.update(u["checksums"])
    assert received == trainer_checksums(model)


def test_refused_init_fails_at_once_not_at_the_rendezvous_timeout() -> None:
    model = build_model("tiny", vocab_size=40)
    with FakeSGLang() as server:
        server.state.fail["/init_weights_update_group"] = "no route to master"
        sync = NcclSync(
            master_address="127.0.0.1", master_port=0, engine_ranks=[1], backend="gloo",
            timeout_s=30,
        )  # fmt: skip
        with pytest.raises(WeightSyncError, match="no route to master"):
            sync.sync([server.url], model, version=1)
        assert sync.group is not None and sync.group.store is None  # reset for a retry
        assert server.state.paths() == ["/pause_generation", "/init_weights_update_group"]


def test_both_collectives_or_neither() -> None:
    with pytest.raises(ValueError, match="both init_group and broadcast"):
        NcclSync(master_address="h", master_port=1, engine_ranks=[1], broadcast=print)
