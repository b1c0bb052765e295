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

The collective pieces (group init, broadcast, ZeRO-3 gather, tensor serialisation) can
be passed in, so the HTTP sequence runs and is tested on CPU; `NcclSync` has a built-in
group and broadcast (`update_group.UpdateGroup`, nccl or gloo) when none are given.
Not defended against: servers that differ in model architecture from the trainer.
"""

from __future__ import annotations

import os
import shutil
import socket
import threading
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
from .update_group import UpdateGroup

#: Trainer side of `/init_weights_update_group`: join the group as rank 0.
InitGroupFn = Callable[[str, int, int, str, str], None]  # (addr, port, world, name, backend)
#: Reserve the rendezvous before the servers are told: (addr, port (0: any), world) -> port.
ListenFn = Callable[[str, int, int], int]
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
    """Broadcast buckets of parameters to the servers over a separate process group."""

    def __init__(
        self,
        *,
        master_address: str,
        master_port: int,
        engine_ranks: Sequence[int],
        init_group: InitGroupFn | None = None,
        broadcast: BroadcastFn | None = None,
        listen: ListenFn | None = None,
        gather: GatherFn = gather_context,
        bucket_mb: float = 512.0,
        group_name: str = "weight_update_group",
        backend: str = "nccl",
        load_format: str | None = None,
        timeout_s: float = 600.0,
        pause_mode: str = "retract",
        flush_timeout_s: float = 60.0,
    ) -> None:
        """`engine_ranks[i]`: GPUs of server i (its tp size) in the group; `urls` must
        name each server (not a router): every one of them joins the group.
        `master_address:master_port`: where the servers reach the trainer's rendezvous
        (port 0: a free one, chosen when the group is created).

        Collectives: by default an `UpdateGroup` (`backend` "nccl" or "gloo") that the
        trainer joins as rank 0. Or pass both `init_group(addr, port, world_size,
        group_name, backend)`, which joins as rank 0 and blocks until the servers have
        joined (it runs while their init requests are in flight), and
        `broadcast(tensors)`, which sends one bucket's tensors from rank 0; `listen`
        then defaults to picking a free port when `master_port` is 0.
        `gather(params)` is a context that materialises ZeRO-3 parameters, entered
        once per bucket. `load_format="flattened_bucket"` for servers that take it."""
        if (init_group is None) != (broadcast is None):
            raise ValueError("pass both init_group and broadcast, or neither (built-in group)")
        self.group: UpdateGroup | None = None
        if init_group is None:
            self.group = UpdateGroup(timeout_s)
            init_group, broadcast = self.group.join, self.group.broadcast
            listen = listen or self.group.listen
        assert init_group is not None and broadcast is not None
        self.init_group, self.broadcast = init_group, broadcast
        self.listen: ListenFn = listen or free_port
        self.gather = gather
        self.master_address, self.master_port = master_address, master_port
        self.engine_ranks = list(engine_ranks)
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

    def close(self) -> None:
        """Leave the built-in group (the servers keep their end until they stop)."""
        if self.group is not None:
            self.group.close()
        self._initialised = False

    def _init(self, servers: Servers) -> None:
        world = group_world_size(self.engine_ranks)
        port = self.listen(self.master_address, self.master_port, world)
        bodies = [
            init_group_body(self.master_address, port, off, world, self.group_name, self.backend)
            for off in rank_offsets(self.engine_ranks)
        ]
        futures = servers.submit_all(INIT_GROUP, bodies)
        try:
            self._join_watching(futures, port, world)
        except BaseException:
            self.close()  # a retry starts with a fresh rendezvous
            raise
        self._initialised = True

    def _join_watching(self, futures: list, port: int, world: int) -> None:
        """Join as rank 0 while the servers' init requests run; a server that refuses
        fails the sync at once rather than after the rendezvous timeout. (The join,
        left waiting in its daemon thread, gives up at that timeout.)"""
        failure: list[BaseException] = []
        joined = threading.Event()

        def join() -> None:
            try:
                self.init_group(self.master_address, port, world, self.group_name, self.backend)
            except BaseException as exc:  # handed to the caller's thread below
                failure.append(exc)
            finally:
                joined.set()

        threading.Thread(target=join, name="weight-update-group-join", daemon=True).start()
        while not joined.wait(0.05):
            for future in futures:
                if future.done() and future.exception() is not None:
                    future.result()  # raises the server's error
        if failure:
            raise WeightSyncError(
                f"joining weight-update group {self.group_name!r} as rank 0 at "
                f"{self.master_address}:{port} failed: {failure[0]}"
            ) from failure[0]
        wait_all(futures)

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


def free_port(address: str, port: int, _world_size: int = 0) -> int:
    """`port`, or when it is 0 one that is free on `address` now (the default `listen`
    for injected collectives; the built-in group binds its port instead)."""
    if port:
        return port
    with socket.socket() as s:
        s.bind((address, 0))
        return s.getsockname()[1]


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
