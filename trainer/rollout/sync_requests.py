"""Weight-sync endpoints of SGLang's HTTP server and the bodies the trainer sends them.

Pure functions, so tests can check every field. Field names as in SGLang's
`io_struct.py` at commit 001067f (main, after v0.5.3rc2): `PauseGenerationReqInput`,
`UpdateWeightFromDiskReqInput`, `InitWeightsUpdateGroupReqInput`,
`UpdateWeightsFromDistributedReqInput`, `UpdateWeightsFromTensorReqInput`. SGLang
types `weight_version` as a string; the trainer's integer step is sent as its decimal
text. Updates carry `flush_cache: false`: the sync flushes once, after every server
has the new weights (`weight_sync.run_sync`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from .buckets import Bucket

PAUSE_GENERATION = "/pause_generation"
CONTINUE_GENERATION = "/continue_generation"
FLUSH_CACHE = "/flush_cache"
UPDATE_FROM_DISK = "/update_weights_from_disk"
INIT_GROUP = "/init_weights_update_group"
UPDATE_FROM_DISTRIBUTED = "/update_weights_from_distributed"
UPDATE_FROM_TENSOR = "/update_weights_from_tensor"


# -- request bodies (pure) -------------------------------------------------------------------


def pause_body(mode: str = "retract") -> dict[str, Any]:
    """`retract` puts running requests back in the queue (recomputed after the sync)
    and lets the KV cache be flushed; `abort` ends them; `in_place` keeps them."""
    return {"mode": mode}


def disk_body(model_path: str, version: int) -> dict[str, Any]:
    return {
        "model_path": str(model_path),
        "weight_version": str(version),
        "abort_all_requests": False,
        "flush_cache": False,  # flushed once, after every server has the weights
    }


def rank_offsets(engine_ranks: Sequence[int]) -> list[int]:
    """Rank of each server's first GPU in the update group (the trainer is rank 0).

    >>> rank_offsets([2, 2, 1])
    [1, 3, 5]
    """
    offsets, next_rank = [], 1
    for ranks in engine_ranks:
        if ranks < 1:
            raise ValueError(f"each server needs >= 1 rank in the group, got {ranks}")
        offsets.append(next_rank)
        next_rank += ranks
    return offsets


def group_world_size(engine_ranks: Sequence[int]) -> int:
    return 1 + sum(engine_ranks)


def init_group_body(
    master_address: str,
    master_port: int,
    rank_offset: int,
    world_size: int,
    group_name: str,
    backend: str,
) -> dict[str, Any]:
    return {
        "master_address": master_address,
        "master_port": int(master_port),
        "rank_offset": int(rank_offset),
        "world_size": int(world_size),
        "group_name": group_name,
        "backend": backend,
    }


def distributed_body(
    bucket: Bucket, group_name: str, version: int, load_format: str | None = None
) -> dict[str, Any]:
    body: dict[str, Any] = {
        "names": list(bucket.names),
        "dtypes": bucket.dtypes,
        "shapes": bucket.shapes,
        "group_name": group_name,
        "flush_cache": False,
        "abort_all_requests": False,
        "weight_version": str(version),
    }
    if load_format is not None:
        body["load_format"] = load_format
    return body


def tensor_body(
    serialized: Sequence[str], version: int, load_format: str | None = None
) -> dict[str, Any]:
    """`serialized_named_tensors` holds one entry per tensor-parallel rank."""
    body: dict[str, Any] = {
        "serialized_named_tensors": list(serialized),
        "flush_cache": False,
        "abort_all_requests": False,
        "weight_version": str(version),
    }
    if load_format is not None:
        body["load_format"] = load_format
    return body
