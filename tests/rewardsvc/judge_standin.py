"""`ScriptedJudge`: a STAND-IN for an OpenAI-compatible chat endpoint, not a model.

A real HTTP server (stdlib, in a thread, on a free loopback port) that answers
``POST /v1/chat/completions`` with whatever the test's script says: a reply text, an HTTP
error, a delay, a refusal. Each request body and its headers are recorded, so a test can
check what the judge was asked. Used for the verdict-parsing cases, where a real model's
reply could not be chosen; the real-model path is tested against `referee serve rollout`.

A script is a list of replies, used in order (the last one repeats), or a function of
the request body returning one. A reply is a `Say`, or a plain string (a 200 answer).
"""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass
class Say:
    """One scripted answer."""

    content: str | None = ""
    status: int = 200
    delay_s: float = 0.0
    finish_reason: str = "stop"
    refusal: str | None = None
    headers: dict[str, str] = field(default_factory=dict)
    usage: tuple[int, int] | None = None
    """(prompt_tokens, completion_tokens); default: word counts of prompt and reply."""


Script = Sequence["Say | str"] | Callable[[dict[str, Any]], "Say | str"]


def user_text(body: dict[str, Any]) -> str:
    """The (one) user message of a request."""
    return next(m["content"] for m in body["messages"] if m["role"] == "user")


def fenced(body: dict[str, Any], label: str) -> str:
    """The text the judge fenced under `label` (e.g. ``RESPONSE A``) in a request."""
    text = user_text(body)
    m = re.search(rf"<<<{label} ([0-9a-f]+)>>>\n(.*?)\n<<<END {label} \1>>>", text, re.S)
    if m is None:
        raise AssertionError(f"no {label} fence in the request:\n{text}")
    return m.group(2)


class ScriptedJudge:
    """The stand-in server. Use as a context manager; `url` is its ``.../v1`` base."""

    def __init__(self, script: Script) -> None:
        self.script = script
        self.requests: list[dict[str, Any]] = []
        self.headers: list[dict[str, str]] = []
        self.in_flight = 0
        self.max_in_flight = 0
        self._lock = threading.Lock()
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        )

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._httpd.server_address[1]}/v1"

    def __enter__(self) -> ScriptedJudge:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()

    def _next(self, body: dict[str, Any], index: int) -> Say:
        if callable(self.script):
            said = self.script(body)
        else:
            said = self.script[min(index, len(self.script) - 1)]
        return Say(said) if isinstance(said, str) else said

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        judge = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:  # keep test output clean
                pass

            def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
                if self.path != "/v1/chat/completions":
                    self.send_error(404, f"no route {self.path}")
                    return
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with judge._lock:
                    index = len(judge.requests)
                    judge.requests.append(body)
                    judge.headers.append({k.lower(): v for k, v in self.headers.items()})
                    judge.in_flight += 1
                    judge.max_in_flight = max(judge.max_in_flight, judge.in_flight)
                try:
                    say = judge._next(body, index)
                    time.sleep(say.delay_s)
                    self._answer(body, say)
                except OSError:  # the client gave up (timeout test)
                    pass
                finally:
                    with judge._lock:
                        judge.in_flight -= 1

            def _answer(self, body: dict[str, Any], say: Say) -> None:
                if say.status != 200:
                    data = json.dumps({"error": {"message": f"scripted HTTP {say.status}"}})
                else:
                    prompt_tokens, completion_tokens = say.usage or (
                        len(user_text(body).split()), len((say.content or "").split())
                    )
                    message: dict[str, Any] = {"role": "assistant", "content": say.content}
                    if say.refusal is not None:
                        message["refusal"] = say.refusal
                    data = json.dumps({
                        "id": f"chatcmpl-standin-{time.monotonic_ns()}",
                        "object": "chat.completion",
                        "model": body.get("model"),
                        "choices": [{"index": 0, "message": message,
                                     "finish_reason": say.finish_reason}],
                        "usage": {"prompt_tokens": prompt_tokens,
                                  "completion_tokens": completion_tokens,
                                  "total_tokens": prompt_tokens + completion_tokens},
                    })
                raw = data.encode()
                self.send_response(say.status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(raw)))
                for k, v in say.headers.items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(raw)

        return Handler
