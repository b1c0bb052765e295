"""Weight sync request sequences, recorded by a stand-in SGLang server.

The GPU collectives (group init, broadcast, ZeRO-3 gather, CUDA IPC serialisation) are
replaced by recording fakes; the HTTP traffic is the real thing.
"""

from __future__ import annotations

import contextlib
import threading
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from sglang_fake import FakeSGLang

from referee.trainer.rollout.buckets import dtype_name, full_nbytes, make_buckets
from referee.trainer.rollout.sglang import SGLangEngine
from referee.trainer.rollout.weight_sync import (
    DiskSync,
    NcclSync,
    TensorSync,
    WeightSyncError,
    make_weight_sync,
    rank_offsets,
)
from referee.trainer.tiny import build_model

# Field names of the request structs in SGLang io_struct.py at commit 001067f (main,
# after v0.5.3rc2); a body may use a subset, never a name outside these.
IO_STRUCT_FIELDS = {
    "/pause_generation": {"rid", "mode"},  # PauseGenerationReqInput
    "/continue_generation": {"rid", "torch_empty_cache"},  # ContinueGenerationReqInput
    "/flush_cache": {"rid", "timeout_s"},  # FlushCacheReqInput
    "/update_weights_from_disk": {  # UpdateWeightFromDiskReqInput
        "rid", "model_path", "load_format", "abort_all_requests", "weight_version", "is_async",
        "torch_empty_cache", "keep_pause", "recapture_cuda_graph", "token_step", "flush_cache",
        "manifest",
    },
    "/init_weights_update_group": {  # InitWeightsUpdateGroupReqInput
        "rid", "master_address", "master_port", "rank_offset", "world_size", "group_name",
        "backend",
    },
    "/update_weights_from_distributed": {  # UpdateWeightsFromDistributedReqInput
        "rid", "names", "dtypes", "shapes", "group_name", "flush_cache", "abort_all_requests",
        "weight_version", "load_format", "torch_empty_cache",
    },
    "/update_weights_from_tensor": {  # UpdateWeightsFromTensorReqInput
        "rid", "serialized_named_tensors", "load_format", "flush_cache", "abort_all_requests",
        "weight_version", "disable_draft_model", "torch_empty_cache",
    },
}  # fmt: skip
# Fields without a default in io_struct: a body must carry them.
REQUIRED = {
    "/update_weights_from_disk": {"model_path"},
    "/init_weights_update_group": {"master_address", "master_port", "rank_offset", "world_size"},
    "/update_weights_from_distributed": {"names", "dtypes", "shapes"},
    "/update_weights_from_tensor": {"serialized_named_tensors"},
}


def check_fields(fake: FakeSGLang) -> None:
    for record in fake.state.records:
        allowed = IO_STRUCT_FIELDS[record.path]
        body = record.body or {}
        assert set(body) <= allowed, (record.path, set(body) - allowed)
        assert REQUIRED.get(record.path, set()) <= set(body), record.path
        if "weight_version" in body:
            assert isinstance(body["weight_version"], str)


@pytest.fixture
def servers():
    with FakeSGLang() as a, FakeSGLang() as b:
        yield a, b


@pytest.fixture(scope="module")
def model() -> torch.nn.Module:
    return build_model("tiny", vocab_size=40)


def test_disk_sync_sequence_and_saved_weights(servers, model, tmp_path: Path) -> None:
    a, b = servers
    sync = DiskSync(tmp_path / "sync")
    sync.sync([a.url, b.url], model, version=1)
    for fake in servers:
        assert fake.state.paths() == [
            "/pause_generation", "/update_weights_from_disk", "/flush_cache",
            "/continue_generation",
        ]  # fmt: skip
        check_fields(fake)
        body = fake.state.bodies("/update_weights_from_disk")[0]
        assert body["model_path"] == str(tmp_path / "sync" / "v1")
        assert body["weight_version"] == "1" and body["flush_cache"] is False
        assert fake.state.bodies("/pause_generation") == [{"mode": "retract"}]
    saved = load_file(tmp_path / "sync" / "v1" / "model.safetensors")
    state = model.state_dict()
    for name, tensor in saved.items():
        assert torch.equal(tensor, state[name])
    assert (tmp_path / "sync" / "v1" / "config.json").is_file()
    sync.sync([a.url], model, version=2)
    assert not (tmp_path / "sync" / "v1").exists() and (tmp_path / "sync" / "v2").exists()
    assert a.state.weight_version == "2"


def test_engine_update_weights_goes_through_the_sync(servers, model, tmp_path: Path) -> None:
    a, _ = servers
    engine = SGLangEngine([a.url], weight_sync=DiskSync(tmp_path), health_timeout_s=5)
    engine.update_weights(model)
    assert engine.weight_version == 1 and a.state.weight_version == "1"
    from referee.trainer.rollout import SamplingParams

    assert engine.generate([[1]], SamplingParams(seed=0))[0][0].weight_version == 1


class Collectives:
    """Recording stand-ins for the trainer side of the NCCL group."""

    def __init__(self) -> None:
        self.events: list[tuple] = []
        self.broadcasts: list[list[torch.Tensor]] = []
        self.gathered: list[list[int]] = []
        self.lock = threading.Lock()

    def init_group(self, addr: str, port: int, world: int, name: str, backend: str) -> None:
        self.events.append(("init_group", addr, port, world, name, backend))

    def broadcast(self, tensors) -> None:
        with self.lock:
            self.broadcasts.append([t.clone() for t in tensors])
        self.events.append(("broadcast", len(tensors)))

    @contextlib.contextmanager
    def gather(self, params):
        self.gathered.append([id(p) for p in params])
        self.events.append(("gather_enter", len(params)))
        yield
        self.events.append(("gather_exit", len(params)))


def test_nccl_sync_sequence_buckets_and_broadcast(servers, model) -> None:
    a, b = servers
    fake = Collectives()

    # The server holds its answer until the bucket was broadcast, as SGLang does: this
    # only completes if the request and the broadcast run concurrently.
    def waiter(server: FakeSGLang):
        def wait_for_broadcast(path: str, body) -> None:
            if path != "/update_weights_from_distributed":
                return
            n = len(server.state.bodies(path))  # this is the server's n-th bucket
            deadline = time.monotonic() + 5
            while len(fake.broadcasts) < n and time.monotonic() < deadline:
                time.sleep(0.005)

        return wait_for_broadcast

    a.state.on_update, b.state.on_update = waiter(a), waiter(b)
    bucket_mb = 0.1
    sync = NcclSync(
        master_address="10.0.0.1", master_port=29600, engine_ranks=[2, 1],
        init_group=fake.init_group, broadcast=fake.broadcast, gather=fake.gather,
        bucket_mb=bucket_mb, group_name="g1",
    )  # fmt: skip
    t0 = time.monotonic()
    sync.sync([a.url, b.url], model, version=3)
    assert time.monotonic() - t0 < 4  # no server waited out its broadcast
    params = list(model.named_parameters())
    buckets = make_buckets(params, bucket_mb)
    assert len(buckets) > 2
    for fake_server, offset in ((a, 1), (b, 3)):
        check_fields(fake_server)
        paths = fake_server.state.paths()
        assert paths == (
            ["/pause_generation", "/init_weights_update_group"]
            + ["/update_weights_from_distributed"] * len(buckets)
            + ["/flush_cache", "/continue_generation"]
        )
        (init,) = fake_server.state.bodies("/init_weights_update_group")
        assert init == {
            "master_address": "10.0.0.1", "master_port": 29600, "rank_offset": offset,
            "world_size": 4, "group_name": "g1", "backend": "nccl",
        }  # fmt: skip
        updates = fake_server.state.bodies("/update_weights_from_distributed")
        assert [u["names"] for u in updates] == [bk.names for bk in buckets]
        for u in updates:
            assert u["dtypes"] == ["float32"] * len(u["names"])
            assert u["group_name"] == "g1" and u["weight_version"] == "3"
            assert "load_format" not in u
        assert [n for u in updates for n in u["names"]] == [n for n, _ in params]
        assert [s for u in updates for s in u["shapes"]] == [list(p.shape) for _, p in params]
    assert fake.events[0] == ("init_group", "10.0.0.1", 29600, 4, "g1", "nccl")
    # one gather per bucket, over exactly its parameters, around its broadcast
    assert fake.gathered == [[id(p) for p in bk.params] for bk in buckets]
    per_bucket = [e[0] for e in fake.events[1:]]
    assert per_bucket == ["gather_enter", "broadcast", "gather_exit"] * len(buckets)
    flat = [t for group in fake.broadcasts for t in group]
    assert all(torch.equal(t, p) for t, (_, p) in zip(flat, params, strict=True))
    # bucket boundaries: each bucket within the size unless it is a single parameter
    limit = bucket_mb * 1024 * 1024
    for bk in buckets:
        assert bk.nbytes <= limit or len(bk.names) == 1
    # the second sync does not create the group again
    sync.sync([a.url, b.url], model, version=4)
    assert a.state.paths().count("/init_weights_update_group") == 1
    assert [e for e in fake.events if e[0] == "init_group"] == [fake.events[0]]


def test_nccl_flattened_bucket_broadcasts_one_tensor(servers, model) -> None:
    a, _ = servers
    fake = Collectives()
    sync = NcclSync(
        master_address="h", master_port=1, engine_ranks=[1], init_group=fake.init_group,
        broadcast=fake.broadcast, gather=fake.gather, bucket_mb=1.0,
        load_format="flattened_bucket",
    )  # fmt: skip
    sync.sync([a.url], model, version=1)
    check_fields(a)
    updates = a.state.bodies("/update_weights_from_distributed")
    assert all(u["load_format"] == "flattened_bucket" for u in updates)
    assert all(len(group) == 1 for group in fake.broadcasts)


def test_zero3_shapes_and_bucket_sizes_use_full_shapes() -> None:
    shard = torch.nn.Parameter(torch.empty(0, dtype=torch.bfloat16))
    shard.ds_shape = torch.Size([512, 512])  # 512 KiB in bf16, partitioned away
    shard.ds_id = 0
    small = torch.nn.Parameter(torch.zeros(8, dtype=torch.float32))
    assert full_nbytes(shard) == 512 * 512 * 2
    buckets = make_buckets([("big", shard), ("b", small), ("c", small)], bucket_mb=0.5)
    assert [bk.names for bk in buckets] == [["big"], ["b", "c"]]
    assert buckets[0].shapes == [[512, 512]] and buckets[0].dtypes == ["bfloat16"]
    assert dtype_name(torch.float16) == "float16"


def test_failed_update_names_endpoint_and_stays_paused(servers, model, tmp_path: Path) -> None:
    a, b = servers
    b.state.fail["/update_weights_from_disk"] = "shape mismatch in lm_head"
    with pytest.raises(WeightSyncError, match="/update_weights_from_disk failed on") as info:
        DiskSync(tmp_path).sync([a.url, b.url], model, version=1)
    assert b.url in str(info.value) and "shape mismatch in lm_head" in str(info.value)
    assert "/continue_generation" not in a.state.paths() + b.state.paths()


def test_failed_init_group_raises(servers, model) -> None:
    a, _ = servers
    a.state.fail["/init_weights_update_group"] = "NCCL timeout"
    fake = Collectives()
    sync = NcclSync(
        master_address="h", master_port=1, engine_ranks=[1], init_group=fake.init_group,
        broadcast=fake.broadcast,
    )  # fmt: skip
    with pytest.raises(WeightSyncError, match="/init_weights_update_group failed.*NCCL timeout"):
        sync.sync([a.url], model, version=1)


def test_flush_cache_retried_while_busy(servers, model, tmp_path: Path) -> None:
    a, _ = servers
    a.state.flush_busy = 2
    DiskSync(tmp_path).sync([a.url], model, version=1)
    assert a.state.paths() == [
        "/pause_generation", "/update_weights_from_disk", "/flush_cache", "/flush_cache",
        "/flush_cache", "/continue_generation",
    ]  # fmt: skip
    a.state.flush_busy = 10**6
    with pytest.raises(WeightSyncError, match="/flush_cache on .* still failing after 0.3s"):
        DiskSync(tmp_path, flush_timeout_s=0.3).sync([a.url], model, version=2)


def test_tensor_sync_request_shape(servers, model) -> None:
    a, _ = servers
    seen: list[list[str]] = []

    def serialize(named) -> str:  # stands in for SGLang's MultiprocessingSerializer + b64
        seen.append([n for n, _ in named])
        return f"blob{len(seen)}"

    TensorSync(serialize=serialize, tp_size=2, bucket_mb=0.1).sync([a.url], model, version=5)
    check_fields(a)
    updates = a.state.bodies("/update_weights_from_tensor")
    assert len(updates) == len(seen) > 1
    for k, u in enumerate(updates, start=1):
        assert u["serialized_named_tensors"] == [f"blob{k}", f"blob{k}"]
        assert u["weight_version"] == "5" and u["flush_cache"] is False
    assert a.state.paths()[0] == "/pause_generation" and a.state.paths()[-1] == (
        "/continue_generation"
    )


def test_chosen_by_name(tmp_path: Path) -> None:
    assert isinstance(make_weight_sync("disk", directory=tmp_path), DiskSync)
    assert isinstance(make_weight_sync("tensor", serialize=str), TensorSync)
    with pytest.raises(ValueError, match="choose one of"):
        make_weight_sync("ipc")
    assert rank_offsets([1, 1]) == [1, 2]
