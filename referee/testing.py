"""Helpers for testing verifiers as services: start a real `referee serve ...` process.

>>> with serve_process(["verifiers", "--no-builtins", "--load", "my_mod:fn"]) as srv:  # doctest: +SKIP
...     SyncRewardClient(srv.address).score("fn", [{"completion": "x"}])
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

_LISTENING = re.compile(r"listening on (?:grpcs?|https?)://(\S+)")


@dataclass
class ServerProcess:
    address: str
    proc: subprocess.Popen[str]
    output: list[str] = field(default_factory=list)

    def stop(self, timeout: float = 30.0) -> int:
        """SIGTERM, then wait; returns the exit code (kills after `timeout`)."""
        return terminate(self.proc, timeout)


def terminate(proc: subprocess.Popen, timeout: float = 30.0) -> int:
    """SIGTERM (a server drains), wait up to `timeout`, then SIGKILL; the exit code."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
    return proc.returncode


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port free on `host` right now, for a test server or fake that must be told
    its port up front (one that can bind port 0 and report it should do that instead)."""
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def process_group_members(pgid: int) -> list[int]:
    """Live (not zombie) processes in process group `pgid`: what a test checks is empty
    after stopping a server that started children (its workers, its sandboxes)."""
    out = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] not in ("Z", "X"):
            out.append(int(entry.name))
    return out


@contextmanager
def serve_process(
    args: list[str],
    *,
    cwd: str | Path | None = None,
    env: Mapping[str, str] | None = None,
    ready_timeout: float = 90.0,
) -> Iterator[ServerProcess]:
    """Runs `referee serve ARGS --port 0` and yields once it prints its address."""
    cmd = [sys.executable, "-m", "referee.cli", "serve", *args]
    if "--port" not in args:
        cmd += ["--port", "0"]
    full_env = {**os.environ, **(env or {}), "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        cmd, cwd=cwd, env=full_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    output: list[str] = []
    found = threading.Event()
    address: list[str] = []

    def pump() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            output.append(line)
            m = _LISTENING.search(line)
            if m and not found.is_set():
                address.append(m.group(1))
                found.set()
        found.set()

    threading.Thread(target=pump, daemon=True).start()
    deadline = time.monotonic() + ready_timeout
    while not found.wait(0.1) and time.monotonic() < deadline:
        pass
    server = ServerProcess(address[0] if address else "", proc, output)
    try:
        if not address:
            server.stop(5)
            raise RuntimeError(f"server did not start: {' '.join(cmd)}\n{''.join(output)}")
        yield server
    finally:
        server.stop()
