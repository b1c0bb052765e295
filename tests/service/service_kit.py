"""Helpers for the service tests: real servers (a `referee serve verifiers` subprocess,
or the server skeleton in-process), request builders and metric readers.

Everything waits on a bounded condition, never a fixed sleep: these tests must pass on
a loaded 2-core machine.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from referee.convert import dict_to_struct
from referee.rewardsvc.config import ServerConfig, VerifierPoolConfig
from referee.rewardsvc.server import ServerHandle, create_server
from referee.rewardsvc.verifier_service import VerifierService
from referee.testing import terminate
from referee.v1 import reward_pb2 as pb

SERVICE_DIR = Path(__file__).resolve().parent
CUSTOM = "fixture_verifiers:ALL"
READY_TIMEOUT_S = 60.0
CLI_TIMEOUT_S = 60.0
_LISTENING = re.compile(r"listening on (grpcs?)://(\S+)")


def referee_cmd() -> list[str]:
    """The installed `referee` console script (beside this interpreter), else `-m`."""
    script = Path(sys.executable).with_name("referee")
    if script.exists():
        return [str(script)]
    found = shutil.which("referee")
    return [found] if found else [sys.executable, "-m", "referee.cli"]


def cli_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """The environment for a CLI subprocess: no inherited token, this folder importable."""
    env = {k: v for k, v in os.environ.items() if k != "REFEREE_TOKEN"}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(SERVICE_DIR), env.get("PYTHONPATH")) if p)
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra or {})
    return env


def run_cli(
    args: Sequence[str],
    env: dict[str, str] | None = None,
    input: str = "",
    timeout: float = CLI_TIMEOUT_S,
) -> subprocess.CompletedProcess[str]:
    """Runs one `referee ...` command to completion (stdin: `input`)."""
    return subprocess.run(
        [*referee_cmd(), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env or cli_env(),
        cwd=SERVICE_DIR,
        input=input,
    )


class CliServer:
    """`referee serve verifiers --port 0 ARGS` as a subprocess, with its output collected."""

    def __init__(self, args: Sequence[str], env: dict[str, str] | None = None) -> None:
        self.args = list(args)
        self.proc = subprocess.Popen(
            [*referee_cmd(), "serve", "verifiers", "--port", "0", *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env or cli_env(),
            cwd=SERVICE_DIR,
        )
        self._lines: dict[str, list[str]] = {"stdout": [], "stderr": []}
        self._cond = threading.Condition()
        self._readers = [
            threading.Thread(target=self._drain, args=(name, stream), daemon=True)
            for name, stream in (("stdout", self.proc.stdout), ("stderr", self.proc.stderr))
        ]
        for t in self._readers:
            t.start()
        self.address = ""

    def _drain(self, name: str, stream: Any) -> None:
        for line in stream:
            with self._cond:
                self._lines[name].append(line.rstrip("\n"))
                self._cond.notify_all()
        with self._cond:
            self._lines[name].append("")  # EOF marker: wakes waiters
            self._cond.notify_all()

    def output(self) -> str:
        with self._cond:
            return "\n".join(f"[{k}] {line}" for k, v in self._lines.items() for line in v)

    def wait_line(
        self, pattern: str, stream: str = "stdout", timeout: float = READY_TIMEOUT_S
    ) -> re.Match[str]:
        """The first line of `stream` matching `pattern`; fails if none within `timeout`."""
        rx = re.compile(pattern)
        deadline = time.monotonic() + timeout
        seen = 0
        with self._cond:
            while True:
                lines = self._lines[stream]
                for line in lines[seen:]:
                    m = rx.search(line)
                    if m:
                        return m
                seen = len(lines)
                left = deadline - time.monotonic()
                eof = bool(lines) and lines[-1] == "" and self.proc.poll() is not None
                if left <= 0 or eof:
                    break
                self._cond.wait(min(left, 0.5))
        raise AssertionError(
            f"no line matching {pattern!r} on {stream} within {timeout:g}s "
            f"(exit code {self.proc.poll()}):\n{self.output()}"
        )

    def wait_ready(self, timeout: float = READY_TIMEOUT_S) -> str:
        self.address = self.wait_line(_LISTENING.pattern, timeout=timeout).group(2)
        return self.address

    def stop(self, timeout: float = 30.0) -> int:
        """SIGTERM, then wait (SIGKILL if it will not go); returns the exit code."""
        code = terminate(self.proc, timeout)
        for t in self._readers:
            t.join(5)
        return code


def start_cli_server(args: Sequence[str], env: dict[str, str] | None = None) -> CliServer:
    """Starts a CLI server and waits (bounded) for its "listening on" line."""
    server = CliServer(args, env)
    try:
        server.wait_ready()
    except BaseException:
        server.stop(5)
        raise
    return server


def custom_args(workers: int = 1, *extra: str) -> list[str]:
    """CLI arguments serving only the fixture verifiers."""
    return [
        "--no-builtins",
        "--no-entrypoints",
        "--load",
        CUSTOM,
        "--workers",
        str(workers),
        *extra,
    ]


async def start_inprocess(
    specs: Iterable[str] = (CUSTOM,),
    pool: VerifierPoolConfig | None = None,
    **server: Any,
) -> ServerHandle:
    """Builds and starts the real skeleton with a VerifierService on port 0."""
    service = VerifierService(list(specs), pool or VerifierPoolConfig(workers=1))
    try:
        handle = create_server(ServerConfig(port=0, **server), [service])
    except BaseException:
        await service.close()
        raise
    await handle.start()
    return handle


def sample(
    sid: str,
    completion: str | None,
    reference: str = "",
    **metadata: Any,
) -> pb.Sample:
    msg = pb.Sample(id=sid, reference=reference)
    if completion is not None:
        msg.completion = completion
    if metadata:
        msg.metadata.CopyFrom(dict_to_struct(metadata, "metadata"))
    return msg


def request(
    reward: str,
    samples: Iterable[pb.Sample],
    params: dict[str, Any] | None = None,
    request_id: str = "",
) -> pb.ScoreRequest:
    req = pb.ScoreRequest(reward=reward, samples=list(samples), request_id=request_id)
    if params:
        req.params.CopyFrom(dict_to_struct(params, "params"))
    return req


def status_names(resp: pb.ScoreResponse) -> list[str]:
    return [pb.Status.Name(s.status) for s in resp.scores]


def metric(handle: ServerHandle, name: str, labels: dict[str, str] | None = None) -> float:
    """A sample from the server's own registry (0 when it was never incremented)."""
    value = handle.metrics.registry.get_sample_value(name, labels or {})
    return 0.0 if value is None else value


def scrape(port: int, name: str, timeout: float = 10.0) -> float:
    """One unlabelled sample read over HTTP from the metrics side port."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=timeout) as r:
        text = r.read().decode()
    m = re.search(rf"^{re.escape(name)} (\S+)$", text, re.MULTILINE)
    if m is None:
        raise AssertionError(f"{name} not in the metrics page:\n{text}")
    return float(m.group(1))
