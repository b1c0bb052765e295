"""Weight sync: moving the trainer's new policy weights onto SGLang servers.

Request fields as in SGLang's `io_struct.py` at commit 001067f (main, after v0.5.3rc2):
`UpdateWeightFromDiskReqInput`, `InitWeightsUpdateGroupReqInput`,
`UpdateWeightsFromDistributedReqInput`, `UpdateWeightsFromTensorReqInput`,
`PauseGenerationReqInput`; routes and answers as in `entrypoints/http_server.py`
(updates answer `{"success", "message"}`, HTTP 400 on failure; `/flush_cache` answers
400 while requests are still running).

Every sync, whatever the method, runs on every server:

    pause_generation -> update (one or more requests) -> flush_cache -> continue_generation

and checks each answer; a failure raises `WeightSyncError` naming the endpoint, the
server and its message. After a failed update the servers are left paused, so nothing
samples from half-updated weights; the run stops with the error.

Methods (`make_weight_sync(name, ...)`):

* `disk` (`DiskSync`): save the policy as a Hugging Face directory (safetensors) under
  a path every server can read, then `/update_weights_from_disk`.
* `nccl` (`NcclSync`): the trainer is rank 0 of a process group of its own with the
  servers' GPUs (`/init_weights_update_group`, once); each bucket of parameters is
  announced with `/update_weights_from_distributed` while it is broadcast.
* `tensor` (`TensorSync`): colocated servers take CUDA IPC handles through
  `/update_weights_from_tensor`.

The collective pieces (group init, broadcast, ZeRO-3 gather, tensor serialisation) are
functions passed in, so the HTTP sequence runs and is tested on CPU.
Not defended against: servers that differ in model architecture from the trainer.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import torch

from .base import WeightSource
from .buckets import GatherFn, gather_context, make_buckets
from .sync_requests import (
    CONTINUE_GENERATION,
    FLUSH_CACHE,
    INIT_GROUP,
    PAUSE_GENERATION,
    UPDATE_FROM_DISK,
    UPDATE_FROM_DISTRIBUTED,
    UPDATE_FROM_TENSOR,
    disk_body,
    distributed_body,
    group_world_size,
    init_group_body,
    pause_body,
    rank_offsets,
    tensor_body,
)

#: Trainer side of `/init_weights_update_group`: join the group as rank 0.
InitGroupFn = Callable[[str, int, int, str, str], None]  # (addr, port, world, name, backend)
#: Broadcast these tensors from rank 0 of the weight-update group, in order.
BroadcastFn = Callable[[Sequence[torch.Tensor]], None]
#: Serialise (name, tensor) pairs for `/update_weights_from_tensor` (base64 text).
SerializeFn = Callable[[Sequence[tuple[str, torch.Tensor]]], str]


class WeightSyncError(RuntimeError):
    """A server refused or failed a step of a weight sync."""


# -- talking to servers ----------------------------------------------------------------------


class Servers:
    """Calls one endpoint on every server at once and checks every answer."""

    def __init__(self, urls: Sequence[str], timeout_s: float = 600.0) -> None:
        self.urls = [u.rstrip("/") for u in urls]
        self.client = httpx.Client(timeout=timeout_s)
        self.pool = ThreadPoolExecutor(max_workers=max(1, len(self.urls)))

    def close(self) -> None:
        self.pool.shutdown(wait=True)
        self.client.close()

    def call(self, url: str, endpoint: str, body: dict[str, Any] | None) -> dict[str, Any]:
        """POST and check: HTTP 200 and, when the answer has one, `success: true`."""
        try:
            response = self.client.post(url + endpoint, json=body if body is not None else {})
        except httpx.TransportError as exc:
            raise WeightSyncError(f"{endpoint} on {url}: {type(exc).__name__}: {exc}") from exc
        try:
            answer = response.json()
        except ValueError:
            answer = {"message": response.text}
        if not isinstance(answer, dict):
            answer = {"message": str(answer)}
        if response.status_code != 200 or answer.get("success") is False:
            message = answer.get("message") or answer.get("error") or response.text
            raise WeightSyncError(
                f"{endpoint} failed on {url} (HTTP {response.status_code}): {message}"
            )
        return answer

    def submit_all(self, endpoint: str, bodies: Sequence[dict[str, Any] | None]) -> list:
        """Start `endpoint` on every server (bodies[i] for server i); returns futures."""
        return [
            self.pool.submit(self.call, url, endpoint, body)
            for url, body in zip(self.urls, bodies, strict=True)
        ]

    def call_all(self, endpoint: str, body: dict[str, Any] | None) -> list[dict[str, Any]]:
        return wait_all(self.submit_all(endpoint, [body] * len(self.urls)))

    def flush_cache(self, url: str, timeout_s: float, poll_s: float = 0.2) -> None:
        """`/flush_cache`, retried while the server says it is busy (HTTP 400)."""
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                self.call(url, FLUSH_CACHE, None)
                return
            except WeightSyncError as exc:
                if time.monotonic() >= deadline:
                    raise WeightSyncError(
                        f"{FLUSH_CACHE} on {url} still failing after {timeout_s:g}s: {exc}"
                    ) from exc
            time.sleep(poll_s)


def wait_all(futures: Iterable) -> list[dict[str, Any]]:
    """Results of every future; the first error is raised once all have finished."""
    results, errors = [], []
    for future in futures:
        try:
            results.append(future.result())
        except WeightSyncError as exc:
            errors.append(exc)
    if errors:
        raise errors[0]
    return results


def run_sync(
    servers: Servers,
    update: Callable[[], None],
    *,
    pause_mode: str = "retract",
    flush_timeout_s: float = 60.0,
) -> None:
    """pause -> update -> flush_cache (retried while busy) -> continue, on every server."""
    servers.call_all(PAUSE_GENERATION, pause_body(pause_mode))
    update()
    wait_all(
        [servers.pool.submit(servers.flush_cache, url, flush_timeout_s) for url in servers.urls]
    )
    servers.call_all(CONTINUE_GENERATION, {})


def named_parameters(source: WeightSource) -> list[tuple[str, torch.Tensor]]:
    """(name, tensor) pairs of a module (unwrapping DeepSpeed/DDP `.module`) or state dict."""
    if isinstance(source, torch.nn.Module):
        module = getattr(source, "module", source)
        return list(module.named_parameters())
    if isinstance(source, Mapping):
        return list(source.items())
    raise TypeError(f"need a module or a state dict to send tensors, got {type(source)}")


# -- methods ---------------------------------------------------------------------------------


def save_hf(source: WeightSource, path: Path) -> None:
    """The default save of `DiskSync`: `save_pretrained` (safetensors, HF layout).
    Under ZeRO-3 pass a `save` that gathers (e.g. `checkpoint.export_hf`)."""
    if not isinstance(source, torch.nn.Module):
        raise TypeError("disk sync saves a module; pass a model directory or a module")
    module = getattr(source, "module", source)
    module.save_pretrained(path, safe_serialization=True)


class DiskSync:
    """Save to a shared directory, then every server loads it (`/update_weights_from_disk`)."""

    def __init__(
        self,
        directory: str | os.PathLike,
        *,
        save: Callable[[WeightSource, Path], None] = save_hf,
        timeout_s: float = 600.0,
        pause_mode: str = "retract",
        flush_timeout_s: float = 60.0,
        current: str | os.PathLike | None = None,
    ) -> None:
        """`directory` must be readable by every server at the same path; each version
        goes to `directory/v{version}` and the previous one is removed after a sync.
        `current`: a version directory under `directory` the servers already hold (e.g.
        the one a local server was started from), removed after the first sync."""
        self.directory = Path(directory)
        self.save = save
        self.timeout_s = timeout_s
        self.pause_mode = pause_mode
        self.flush_timeout_s = flush_timeout_s
        self._previous: Path | None = Path(current) if current is not None else None

    def sync(self, urls: Sequence[str], source: WeightSource, version: int) -> None:
        if isinstance(source, (str, os.PathLike)):
            path = Path(source)  # already a model directory
        else:
            path = self.directory / f"v{version}"
            if path.exists():
                shutil.rmtree(path)
            self.save(source, path)
        servers = Servers(urls, self.timeout_s)
        try:
            run_sync(
                servers,
                lambda: servers.call_all(UPDATE_FROM_DISK, disk_body(str(path), version)),
                pause_mode=self.pause_mode,
                flush_timeout_s=self.flush_timeout_s,
            )
        finally:
            servers.close()
        if self._previous is not None and self._previous != path:
            if self._previous.is_relative_to(self.directory):
                shutil.rmtree(self._previous, ignore_errors=True)
        self._previous = path


class NcclSync:
    """Broadcast buckets of parameters to the servers over a separate NCCL group."""

    def __init__(
        self,
        *,
        master_address: str,
        master_port: int,
        engine_ranks: Sequence[int],
        init_group: InitGroupFn,
        broadcast: BroadcastFn,
        gather: GatherFn = gather_context,
        bucket_mb: float = 512.0,
        group_name: str = "weight_update_group",
        backend: str = "nccl",
        load_format: str | None = None,
        timeout_s: float = 600.0,
        pause_mode: str = "retract",
        flush_timeout_s: float = 60.0,
    ) -> None:
        """`engine_ranks[i]`: GPUs of server i (its tp size) in the group.
        `init_group(addr, port, world_size, group_name, backend)` joins the trainer as
        rank 0 (blocking until the servers join: it runs while their init requests are
        in flight); `broadcast(tensors)` sends one bucket's tensors from rank 0;
        `gather(params)` is a context that materialises ZeRO-3 parameters, entered
        once per bucket. `load_format="flattened_bucket"` for servers that take it."""
        self.master_address, self.master_port = master_address, master_port
        self.engine_ranks = list(engine_ranks)
        self.init_group, self.broadcast, self.gather = init_group, broadcast, gather
        self.bucket_mb, self.group_name, self.backend = bucket_mb, group_name, backend
        self.load_format = load_format
        self.timeout_s, self.pause_mode = timeout_s, pause_mode
        self.flush_timeout_s = flush_timeout_s
        self._initialised = False

    def sync(self, urls: Sequence[str], source: WeightSource, version: int) -> None:
        if len(urls) != len(self.engine_ranks):
            raise ValueError(f"{len(urls)} servers but engine_ranks for {len(self.engine_ranks)}")
        servers = Servers(urls, self.timeout_s)
        try:
            run_sync(
                servers,
                lambda: self._update(servers, source, version),
                pause_mode=self.pause_mode,
                flush_timeout_s=self.flush_timeout_s,
            )
        finally:
            servers.close()

    def _init(self, servers: Servers) -> None:
        world = group_world_size(self.engine_ranks)
        bodies = [
            init_group_body(
                self.master_address, self.master_port, off, world, self.group_name, self.backend
            )
            for off in rank_offsets(self.engine_ranks)
        ]
        futures = servers.submit_all(INIT_GROUP, bodies)
        self.init_group(self.master_address, self.master_port, world, self.group_name, self.backend)
        wait_all(futures)
        self._initialised = True

    def _update(self, servers: Servers, source: WeightSource, version: int) -> None:
        if not self._initialised:
            self._init(servers)
        for bucket in make_buckets(named_parameters(source), self.bucket_mb):
            with self.gather(bucket.params):
                body = distributed_body(bucket, self.group_name, version, self.load_format)
                futures = servers.submit_all(UPDATE_FROM_DISTRIBUTED, [body] * len(servers.urls))
                tensors = [p.data for p in bucket.params]
                if self.load_format == "flattened_bucket":
                    tensors = [torch.cat([t.reshape(-1) for t in tensors])]
                self.broadcast(tensors)
                wait_all(futures)


class TensorSync:
    """Colocated servers: hand over CUDA IPC handles (`/update_weights_from_tensor`)."""

    def __init__(
        self,
        *,
        serialize: SerializeFn,
        tp_size: int = 1,
        gather: GatherFn = gather_context,
        bucket_mb: float = 512.0,
        load_format: str | None = None,
        timeout_s: float = 600.0,
        pause_mode: str = "retract",
        flush_timeout_s: float = 60.0,
    ) -> None:
        """`serialize(named_tensors)` gives the base64 text SGLang decodes (its
        `MultiprocessingSerializer`, which shares CUDA tensors by IPC handle); the same
        text goes to each of the server's `tp_size` ranks."""
        self.serialize, self.tp_size, self.gather = serialize, tp_size, gather
        self.bucket_mb, self.load_format = bucket_mb, load_format
        self.timeout_s, self.pause_mode = timeout_s, pause_mode
        self.flush_timeout_s = flush_timeout_s

    def sync(self, urls: Sequence[str], source: WeightSource, version: int) -> None:
        servers = Servers(urls, self.timeout_s)
        try:
            run_sync(
                servers,
                lambda: self._update(servers, source, version),
                pause_mode=self.pause_mode,
                flush_timeout_s=self.flush_timeout_s,
            )
        finally:
            servers.close()

    def _update(self, servers: Servers, source: WeightSource, version: int) -> None:
        for bucket in make_buckets(named_parameters(source), self.bucket_mb):
            with self.gather(bucket.params):
                text = self.serialize(list(zip(bucket.names, bucket.params, strict=True)))
                body = tensor_body([text] * self.tp_size, version, self.load_format)
                servers.call_all(UPDATE_FROM_TENSOR, body)


__all__ = [
    "CONTINUE_GENERATION",
    "FLUSH_CACHE",
    "INIT_GROUP",
    "PAUSE_GENERATION",
    "UPDATE_FROM_DISK",
    "UPDATE_FROM_DISTRIBUTED",
    "UPDATE_FROM_TENSOR",
    "DiskSync",
    "NcclSync",
    "TensorSync",
    "WeightSyncError",
    "make_weight_sync",
    "rank_offsets",
]

WEIGHT_SYNCS = {"disk": DiskSync, "nccl": NcclSync, "tensor": TensorSync}


def make_weight_sync(method: str, **kwargs: Any) -> DiskSync | NcclSync | TensorSync:
    """The weight sync called `method` ("disk", "nccl" or "tensor") with its arguments."""
    try:
        cls = WEIGHT_SYNCS[method]
    except KeyError:
        raise ValueError(
            f"unknown weight sync {method!r}; choose one of {sorted(WEIGHT_SYNCS)}"
        ) from None
    return cls(**kwargs)
