"""The trainer's end of the weight-update process group of `weight_sync: nccl`.

SGLang's `/init_weights_update_group` makes each server's GPUs join a process group
of their own at ranks `rank_offset..`, by rendezvous at `tcp://master_address:master_port`;
the trainer is rank 0, hosts that rendezvous (a `TCPStore`) and broadcasts every
bucket of parameters from there.

The group is *not* the training world: `torch.distributed.init_process_group` only
makes the default group and `new_group` only subgroups of it, so the group is built
the way RL frameworks build theirs beside the default one: a TCP store, prefixed by the
group name, handed to torch's private `_new_process_group_helper`, and the group's
rank map registered so `torch.distributed.broadcast(..., group=)` accepts it. Read
before writing this (not copied): SGLang's `init_custom_process_group` in
`python/sglang/srt/utils` (the server side this must meet: same store prefix, same
helper), OpenRLHF's `openrlhf/utils/distributed_util.py` and the copies of it in
open-instruct (`vllm_utils.py`) and AReaL, all "copied from pytorch to allow creating
multiple main groups". torch's default group is left as it was (unset, or the
training world).

Backends: "nccl" between GPUs (the trainer's tensors are moved to its current CUDA
device if they are not on one); "gloo" between CPU processes, which is how the group
is tested on machines without GPUs.

Not defended against: a server that restarts after joining (it has left the group;
the next broadcast fails or times out after `timeout_s`); a rendezvous port that is
reachable by others (anyone who connects first can take a rank).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import timedelta

import torch
import torch.distributed as dist

BACKENDS = ("nccl", "gloo")


class UpdateGroup:
    """Rank 0 of a weight-update group: `listen`, then `join` (blocks until every
    server has joined), then `broadcast` once per bucket; `close` at the end."""

    def __init__(self, timeout_s: float = 600.0) -> None:
        """`timeout_s`: how long the rendezvous and each collective may wait for the
        servers before failing."""
        self.timeout = timedelta(seconds=timeout_s)
        self.store: dist.TCPStore | None = None
        self.group: dist.ProcessGroup | None = None
        self.backend = ""

    def listen(self, address: str, port: int, world_size: int) -> int:
        """Host the rendezvous store on `port` (0: any free one); returns the port the
        servers must be told. The store takes connections from now on, so there is no
        window between choosing a free port and binding it."""
        if self.store is not None:
            raise RuntimeError("the weight-update group is already listening")
        self.store = dist.TCPStore(
            host_name=address,
            port=port,
            world_size=world_size,
            is_master=True,
            timeout=self.timeout,
            wait_for_workers=False,  # the servers join later, during `join`
        )
        return self.store.port

    def join(self, address: str, port: int, world_size: int, group_name: str, backend: str) -> None:
        """Create the group as rank 0; blocks until all `world_size` ranks are in, so it
        must run while the servers' `/init_weights_update_group` requests are in flight.
        `listen` first, or this listens on `port` itself."""
        if backend not in BACKENDS:
            raise ValueError(f"weight-update group backend {backend!r}; choose one of {BACKENDS}")
        if self.group is not None:
            raise RuntimeError(f"already in weight-update group {group_name!r}")
        if self.store is None:
            self.listen(address, port, world_size)
        from torch.distributed.distributed_c10d import (  # private, as in SGLang itself
            Backend,
            PrefixStore,
            _new_process_group_helper,
            _world,
        )

        # The group name as key prefix, as the servers' side prefixes it: two groups on
        # one store (or a reused port) cannot read each other's keys.
        store = PrefixStore(group_name, self.store)
        group, _ = _new_process_group_helper(
            world_size, 0, [], Backend(backend), store, group_name=group_name, timeout=self.timeout
        )
        _world.pg_group_ranks[group] = {rank: rank for rank in range(world_size)}
        self.group, self.backend = group, backend

    def broadcast(self, tensors: Sequence[torch.Tensor]) -> None:
        """Send one bucket's tensors from rank 0, in order (the servers receive them in
        the order of the request's `names`)."""
        if self.group is None:
            raise RuntimeError("broadcast before joining the weight-update group")
        for tensor in tensors:
            tensor = tensor.detach()
            if self.backend == "nccl" and not tensor.is_cuda:
                tensor = tensor.to(torch.cuda.current_device())
            dist.broadcast(tensor.contiguous(), src=0, group=self.group)

    def close(self) -> None:
        """Leave the group (destroying this process's end of it) and stop the store."""
        if self.group is not None:
            dist.destroy_process_group(self.group)
        self.group, self.store, self.backend = None, None, ""
