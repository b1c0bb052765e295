"""A stand-in for the receiving side of SGLang's distributed weight update, in its own
process (run as a script): NOT SGLang, only the part of a server an `nccl` sync talks to.

    python sglang_group_fake.py   # prints "PORT <n>" once it listens on 127.0.0.1

* `/init_weights_update_group`: joins the group at rank `rank_offset` (one rank per
  server, as a tp=1 server), by the route SGLang's `init_custom_process_group` takes:
  rendezvous at tcp://master_address:master_port, the store prefixed by the group name,
  torch's `_new_process_group_helper` (so a trainer whose store layout differs from
  SGLang's fails here too). Any backend the request names (the tests use gloo).
* `/update_weights_from_distributed`: receives each tensor named in the request by
  broadcast from rank 0 (or one flat tensor with `load_format: flattened_bucket`) into
  buffers of the request's dtypes and shapes, and records a sha256 of each.
* `/pause_generation`, `/flush_cache`, `/continue_generation`: succeed.
* `GET /records`: every request's path, and for updates the names, weight_version
  and checksums, in arrival order.
"""

from __future__ import annotations

import hashlib
import json
import sys
import threading
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import torch
import torch.distributed as dist


def checksum(tensor: torch.Tensor) -> str:
    """sha256 of the tensor's bytes (the trainer side computes the same)."""
    raw = tensor.detach().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()
    return hashlib.sha256(raw).hexdigest()


class Engine:
    def __init__(self) -> None:
        self.groups: dict[str, dist.ProcessGroup] = {}
        self.records: list[dict[str, Any]] = []
        self.lock = threading.Lock()

    def init_group(self, body: dict[str, Any]) -> None:
        from torch.distributed.distributed_c10d import (
            Backend,
            PrefixStore,
            _new_process_group_helper,
            _world,
            rendezvous,
        )

        world, rank = body["world_size"], body["rank_offset"]
        timeout = timedelta(seconds=60)
        url = f"tcp://{body['master_address']}:{body['master_port']}"
        store, rank, world = next(rendezvous(url, rank, world, timeout=timeout))
        store.set_timeout(timeout)
        name = body.get("group_name", "weight_update_group")
        group, _ = _new_process_group_helper(
            world,
            rank,
            [],
            Backend(body.get("backend", "nccl")),
            PrefixStore(name, store),
            group_name=name,
            timeout=timeout,
        )
        _world.pg_group_ranks[group] = {i: i for i in range(world)}
        self.groups[name] = group

    def update(self, body: dict[str, Any]) -> dict[str, str]:
        group = self.groups[body.get("group_name", "weight_update_group")]
        dtypes = [getattr(torch, d) for d in body["dtypes"]]
        shapes = [tuple(s) for s in body["shapes"]]
        if body.get("load_format") == "flattened_bucket":
            assert len(set(dtypes)) == 1, "this stand-in takes one dtype per flat bucket"
            flat = torch.empty(sum(torch.Size(s).numel() for s in shapes), dtype=dtypes[0])
            dist.broadcast(flat, src=0, group=group)
            sizes = [torch.Size(s).numel() for s in shapes]
            tensors = [t.view(s) for t, s in zip(flat.split(sizes), shapes, strict=True)]
        else:
            tensors = []
            for dtype, shape in zip(dtypes, shapes, strict=True):
                buffer = torch.empty(shape, dtype=dtype)
                dist.broadcast(buffer, src=0, group=group)
                tensors.append(buffer)
        return {n: checksum(t) for n, t in zip(body["names"], tensors, strict=True)}


def make_handler(engine: Engine) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: Any) -> None:
            pass

        def _send(self, status: int, payload: Any) -> None:
            data = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self) -> None:
            if self.path == "/records":
                with engine.lock:
                    return self._send(200, engine.records)
            self._send(404, {"error": "not found"})

        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = json.loads(self.rfile.read(length)) if length else {}
            record: dict[str, Any] = {"path": self.path}
            with engine.lock:
                engine.records.append(record)
            try:
                if self.path == "/init_weights_update_group":
                    engine.init_group(body)
                elif self.path == "/update_weights_from_distributed":
                    record["names"] = body["names"]
                    record["weight_version"] = body.get("weight_version")
                    record["checksums"] = engine.update(body)
                elif self.path not in (
                    "/pause_generation", "/flush_cache", "/continue_generation",
                ):  # fmt: skip
                    return self._send(404, {"error": f"no route {self.path}"})
            except Exception as exc:  # reported to the trainer, as SGLang answers 400
                return self._send(400, {"success": False, "message": repr(exc)})
            self._send(200, {"success": True, "message": "Succeeded."})

    return Handler


def main() -> None:
    server = ThreadingHTTPServer(("127.0.0.1", 0), make_handler(Engine()))
    server.daemon_threads = True
    print(f"PORT {server.server_address[1]}", flush=True)
    try:
        server.serve_forever()
    finally:
        server.server_close()


if __name__ == "__main__":
    sys.exit(main())
