"""The rollout engine a recipe samples from, built from `rollout.*`.

`hf`: the in-process engine sharing the policy's module, so it always samples from the
current weights and `update_weights` costs nothing.

`sglang`: HTTP to SGLang servers (`rollout.sglang.urls`), or, with `urls: [local]`, one
`referee serve rollout` started on loopback for the run, the way `target: local` reward
services are (`local_services.py`). The servers are kept at the trainer's weights by a
disk sync after every rollout batch's optimiser steps: the policy is exported in Hugging
Face layout (LoRA merged, ZeRO-3 gathered: `checkpoint.export_hf`, tokenizer included)
to `rollout.sglang.weight_sync_dir/v{step}` and every server loads it with
`/update_weights_from_disk`, `weight_version` = the optimiser step count. At start the
servers get the trainer's weights too: a local server is started from an export of them,
remote servers are synced (they may hold anything, e.g. a previous run's weights).

With `weight_sync: nccl` the servers instead join a process group with the trainer at
the first sync (`rollout.sglang.master_address`/`master_port`, `group_backend`,
`server_ranks`) and every sync broadcasts the policy's parameters bucket by bucket
(`rollout.sglang.bucket_mb`, ZeRO-3 gathered per bucket); the group is left on exit.

Not handled here: a server that is restarted from other weights mid-run keeps them until
the next sync (its samples carry its own `weight_version`, which the recipe checks
against `rollout.max_staleness`); under nccl such a server has also left the group, and
the next sync fails. The tensor sync (CUDA IPC to servers colocated on the trainer's
GPUs) and nccl with LoRA (the servers would get adapter names) are refused.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from referee.trainer import checkpoint
from referee.trainer.config import TrainConfig
from referee.trainer.config_load import ConfigError
from referee.trainer.engine import TrainEngine
from referee.trainer.rollout.base import RolloutEngine, WeightSource
from referee.trainer.rollout.hf import HFEngine

__all__ = ["check_sglang", "open_rollout", "weight_sync_dir"]


def check_sglang(cfg: TrainConfig) -> None:
    """Refuses sglang settings the recipes cannot run, naming the key."""
    s = cfg.rollout.sglang
    if cfg.rollout.engine != "sglang":
        return
    if s.weight_sync == "tensor":
        raise ConfigError(
            "rollout.sglang.weight_sync",
            "tensor needs servers colocated on the trainer's CUDA devices (CUDA IPC "
            "handles), which the recipes do not start; use disk or nccl",
        )
    if s.weight_sync == "nccl" and cfg.model.lora.enabled:
        raise ConfigError(
            "rollout.sglang.weight_sync",
            "nccl sends the module's own parameters, and with model.lora.enabled those "
            "are adapter weights the servers do not know; use disk (which merges LoRA)",
        )


def weight_sync_dir(cfg: TrainConfig) -> Path:
    """`rollout.sglang.weight_sync_dir`, or `<run_dir>/weight_sync` when empty."""
    s = cfg.rollout.sglang
    return (
        Path(s.weight_sync_dir)
        if s.weight_sync_dir
        else Path(cfg.logging.run_dir or ".") / "weight_sync"
    )


@contextlib.contextmanager
def open_rollout(
    cfg: TrainConfig, engine: TrainEngine, tokenizer: Any, *, micro_batch_prompts: int
) -> Iterator[RolloutEngine]:
    """The configured engine at the weights of `engine` (version `engine.global_step`);
    stops what it started (the local server) and aborts in-flight requests on exit.
    `micro_batch_prompts`: prompts the hf engine generates together."""
    version = engine.global_step
    if cfg.rollout.engine == "hf":
        rollout = HFEngine(engine.module, tokenizer, micro_batch_prompts=micro_batch_prompts)
        rollout.weight_version = version
        yield rollout
        return

    from referee.trainer.local_services import start_service
    from referee.trainer.rollout.sglang import SGLangEngine
    from referee.trainer.rollout.weight_sync import DiskSync, NcclSync

    s = cfg.rollout.sglang
    directory = weight_sync_dir(cfg)

    def save(_source: WeightSource, path: Path) -> None:
        # export_hf rather than save_pretrained: merges LoRA, gathers ZeRO-3, and writes
        # the tokenizer, so a directory is a model any server can start from.
        checkpoint.export_hf(engine, path, tokenizer)

    with contextlib.ExitStack() as stack:
        current: Path | None = None
        if s.is_local:
            current = directory / f"v{version}"
            save(engine.module, current)
            args = ["--model", str(current), "--dtype", cfg.model.dtype]
            args += ["--weight-version", str(version)]
            server = start_service("rollout", args, ready_timeout_s=s.health_timeout_s)
            stack.callback(server.stop)
            urls = [server.url]
        else:
            urls = list(s.urls)
        sync: DiskSync | NcclSync
        if s.weight_sync == "nccl":
            sync = NcclSync(
                master_address=s.master_address,
                master_port=s.master_port,
                engine_ranks=s.engine_ranks(),
                backend=s.group_backend,
                bucket_mb=s.bucket_mb,
                timeout_s=s.timeout_s,
            )
            stack.callback(sync.close)
        else:
            sync = DiskSync(directory, save=save, timeout_s=s.timeout_s, current=current)
        rollout = SGLangEngine(
            urls,
            weight_sync=sync,
            weight_version=version,
            health_timeout_s=s.health_timeout_s,
            retry_total_s=s.retry_total_s,
            request_timeout_s=s.timeout_s,
        )
        stack.callback(rollout.close)
        if not s.is_local:
            rollout.update_weights(engine.module, version=version)
        yield rollout
