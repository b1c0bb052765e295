"""A recording stand-in for an SGLang server (native API subset), for client tests.

Answers the way SGLang's `http_server.py` does (commit 001067f, after v0.5.3rc2):
`/generate` builds its answer from the request (tokens derived from the input ids and
the `sampling_seed`), updates answer `{"success", "message"}` (HTTP 400 on failure),
`/flush_cache` answers 400 while "busy". Every request is recorded with its method,
path, JSON body and arrival time. Knobs are plain attributes set by the test.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass
class Recorded:
    method: str
    path: str
    body: Any
    time: float


@dataclass
class FakeState:
    records: list[Recorded] = field(default_factory=list)
    weight_version: str = "default"
    generate_delay_s: float = 0.0
    generate_failures: list[int] = field(default_factory=list)  # statuses to answer first
    hold_until_abort: bool = False
    flush_busy: int = 0  # answer 400 this many times first
    fail: dict[str, str] = field(default_factory=dict)  # endpoint -> failure message
    aborted: set[str] = field(default_factory=set)
    on_update: Callable[[str, Any], None] | None = None  # runs before an update answers
    lock: threading.Lock = field(default_factory=threading.Lock)

    def paths(self) -> list[str]:
        return [r.path for r in self.records]

    def bodies(self, path: str) -> list[Any]:
        return [r.body for r in self.records if r.path == path]


def fake_tokens(input_ids: list[int], seed: int, max_new_tokens: int) -> list[int]:
    """Three tokens (or fewer when capped) that depend on the prompt and the seed."""
    return [(sum(input_ids) + seed + k) % 97 + 3 for k in range(min(max_new_tokens, 3))]


def generate_answer(body: dict[str, Any], weight_version: str) -> dict[str, Any]:
    sp = body["sampling_params"]
    tokens = fake_tokens(body["input_ids"], sp.get("sampling_seed", 0), sp["max_new_tokens"])
    if sp["max_new_tokens"] <= 3:
        finish: dict[str, Any] = {"type": "length", "length": len(tokens)}
    else:
        finish = {"type": "stop", "matched": tokens[-1]}
    return {
        "text": " ".join(f"t{t}" for t in tokens),
        "output_ids": tokens,
        "meta_info": {
            "id": body.get("rid"),
            "finish_reason": finish,
            "prompt_tokens": len(body["input_ids"]),
            "completion_tokens": len(tokens),
            "output_token_logprobs": [[-0.5 * (k + 1), t, None] for k, t in enumerate(tokens)],
            "weight_version": weight_version,
        },
    }


def _make_handler(state: FakeState) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: Any) -> None:  # keep test output quiet
            pass

        def _send(self, status: int, payload: Any) -> None:
            if isinstance(payload, str):
                data, kind = payload.encode(), "text/plain"
            else:
                data, kind = json.dumps(payload).encode(), "application/json"
            self.send_response(status)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _record(self) -> Any:
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length) if length else b""
            body = json.loads(raw) if raw else None
            with state.lock:
                state.records.append(Recorded(self.command, self.path, body, time.monotonic()))
            return body

        def do_GET(self) -> None:
            self._record()
            if self.path == "/health_generate":
                self._send(200, "")
            else:
                self._send(404, {"error": "not found"})

        def do_POST(self) -> None:
            body = self._record()
            path = self.path
            if path == "/generate":
                return self._generate(body)
            if path in state.fail:
                return self._send(400, {"success": False, "message": state.fail[path]})
            if path == "/abort_request":
                with state.lock:
                    state.aborted.add(body.get("rid", ""))
                return self._send(200, "")
            if path in ("/pause_generation", "/continue_generation"):
                return self._send(200, {"message": "ok", "status": "ok"})
            if path == "/flush_cache":
                with state.lock:
                    busy = state.flush_busy > 0
                    state.flush_busy -= busy
                return self._send(400 if busy else 200, "Cache flushed.\n")
            if path.startswith("/update_weights_from_") or path == "/init_weights_update_group":
                if state.on_update is not None:
                    state.on_update(path, body)
                if "weight_version" in body:
                    state.weight_version = body["weight_version"]
                return self._send(200, {"success": True, "message": "Succeeded."})
            self._send(404, {"error": f"no route {path}"})

        def _generate(self, body: dict[str, Any]) -> None:
            with state.lock:
                failure = state.generate_failures.pop(0) if state.generate_failures else None
            if failure is not None:
                return self._send(failure, "server busy")
            if state.hold_until_abort:
                while body["rid"] not in state.aborted:
                    time.sleep(0.01)
                answer = generate_answer(body, state.weight_version)
                answer["output_ids"] = answer["output_ids"][:1]
                answer["meta_info"]["output_token_logprobs"] = answer["meta_info"][
                    "output_token_logprobs"
                ][:1]
                answer["meta_info"]["finish_reason"] = {"type": "abort", "message": "aborted"}
                return self._send(200, answer)
            time.sleep(state.generate_delay_s)
            self._send(200, generate_answer(body, state.weight_version))

    return Handler


class FakeSGLang:
    """A FakeState served on 127.0.0.1 in a background thread (port 0 unless given)."""

    def __init__(self, port: int = 0, state: FakeState | None = None) -> None:
        self.state = state or FakeState()
        self.server = ThreadingHTTPServer(("127.0.0.1", port), _make_handler(self.state))
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def __enter__(self) -> FakeSGLang:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()

