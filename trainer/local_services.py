"""Services started by the trainer for one run: the `target: local` reward sources, and
the rollout server of `rollout.sglang.urls: [local]`.

>>> with start_local_services(cfg.reward.sources) as local:          # doctest: +SKIP
...     with RewardScorer(cfg.reward.sources, local.targets(cfg.reward.sources)) as scorer:
...         ...

Each distinct `(service, local_args)` among the local sources becomes one
`python -m referee.cli serve <service> --host 127.0.0.1 --port 0 ...` subprocess, shared
by every source that names it. The port is the one the server prints on its
"listening on" line, so two runs on one machine never collide. A service is used only
after its gRPC health service answers SERVING.

`start_service("rollout", ["--model", DIR])` starts `referee serve rollout` the same way;
it prints an `http://` address and is ready once `GET /health_generate` answers 200 (a
one-token generation, so the model has loaded and runs). `referee up` starts every other
service (reward-model, judge, gateway) through `start_service` too, on its own host/port.

A verifiers service that serves the `code` reward needs a sandbox service: when a source
asks for `code` (or its `local_args` say `--sandbox local`) and names no sandbox of its
own, one `referee serve sandbox` is started too and its address passed as `--sandbox`.

Each service runs in its own process group, so a Ctrl-C in the terminal reaches the
trainer only (which then stops the services in order), and `stop` can reap what a
killed server leaves behind (its verifier workers). Stopping is SIGTERM (the server
drains its calls), SIGKILL after a grace period, then SIGKILL to the rest of the group.

Not protected: a trainer that is itself SIGKILLed leaves its services running (they
listen on loopback only, on an ephemeral port); nothing here restarts a service that
dies mid-run (the reward client marks its samples UNAVAILABLE and the trainer masks
them).
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Literal, Protocol

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

Service = Literal["verifiers", "sandbox", "reward-model", "judge", "gateway", "rollout"]

#: The proto service each gRPC `referee serve` subcommand serves, as its health service
#: knows it.
HEALTH_NAMES: dict[str, str] = {
    "verifiers": "referee.v1.RewardService",
    "sandbox": "referee.v1.SandboxService",
    "reward-model": "referee.v1.RewardService",
    "judge": "referee.v1.RewardService",
    # SERVING only while its required upstreams answer: waited for, it is usable.
    "gateway": "referee.v1.RewardService",
}

#: HTTP services and the route that answers 200 once they can serve (SGLang's).
HTTP_HEALTH: dict[str, str] = {"rollout": "/health_generate"}

#: Rewards that run code, so their verifiers service needs a sandbox.
SANDBOX_REWARDS = frozenset({"code"})

#: Options a local service may not be given: where it listens is ours to choose, and
#: a local service is plaintext without a token (a token never goes in the YAML).
RESERVED_OPTIONS = ("--host", "--port", "--tls-cert", "--tls-key", "--token")

_LISTENING = re.compile(r"listening on (grpcs?|https?)://(\S+)")
_OUTPUT_LINES = 200


class LocalServiceError(RuntimeError):
    """A local service could not be started (or was misconfigured); the message has
    the command and what the process printed."""


class LocalSource(Protocol):
    """What this module reads from a reward source (`RewardSourceConfig` is one)."""

    name: str
    reward: str
    service: str
    local_args: list[str]

    @property
    def is_local(self) -> bool: ...

    @property
    def replicas(self) -> list[str]: ...


def default_workers() -> int:
    """Verifier workers for a local service: half the cores (at least 1), since the
    trainer's own generation and training share the machine with it."""
    return max(1, (os.cpu_count() or 2) // 2)


@dataclass
class LocalService:
    """One running `referee serve` subprocess."""

    service: str
    command: list[str]
    address: str
    """`127.0.0.1:PORT`, as the server printed it."""
    proc: subprocess.Popen[str]
    scheme: str = "grpc"
    """As printed before the address: grpc for the reward services, http for rollout."""
    output_lines: deque[str] = field(default_factory=lambda: deque(maxlen=_OUTPUT_LINES))
    """The last lines it printed (stdout and stderr together)."""
    _pump: threading.Thread | None = field(default=None, repr=False)

    @property
    def output(self) -> str:
        return "".join(self.output_lines)

    @property
    def url(self) -> str:
        """`scheme://address`, e.g. `http://127.0.0.1:PORT` for the rollout server."""
        return f"{self.scheme}://{self.address}"

    @property
    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self, grace_s: float = 10.0) -> int | None:
        """SIGTERM, wait `grace_s`, SIGKILL; then SIGKILL whatever is left of its process
        group (workers of a server that was killed). Returns the exit code. Idempotent."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(grace_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        # The group id is the server's pid (start_new_session). Linux does not hand out
        # a pid that is still some group's id, so this reaches only our leftovers.
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        if self._pump is not None:
            self._pump.join(5)
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        return self.proc.returncode


def start_service(
    service: Service,
    args: Sequence[str] = (),
    *,
    workers: int | None = None,
    env: Mapping[str, str] | None = None,
    cwd: str | Path | None = None,
    ready_timeout_s: float = 60.0,
    host: str = "127.0.0.1",
    port: int = 0,
    on_output: Callable[[str], None] | None = None,
) -> LocalService:
    """Starts `referee serve SERVICE` (on loopback, a free port, by default) and returns
    once it is healthy.

    `workers` (verifiers only; default `default_workers()`) is passed as `--workers`
    unless `args` has its own. `env` is added to this process's environment (e.g.
    PYTHONPATH for a `--load` module). `on_output` is called with each line the service
    prints (from a reader thread), e.g. to show its log. Raises `LocalServiceError`, with
    the command and the process output, when it exits, prints no address, or is not
    healthy (gRPC SERVING, or HTTP 200 on its health route) within `ready_timeout_s`.
    """
    known = [*HEALTH_NAMES, *HTTP_HEALTH]
    if service not in known:
        raise ValueError(f"unknown service {service!r}; expected one of {', '.join(known)}")
    args = list(args)
    for a in args:
        if a.split("=", 1)[0] in RESERVED_OPTIONS:
            raise LocalServiceError(
                f"local_args may not contain {a.split('=', 1)[0]}: a local service listens on "
                "127.0.0.1 on a free port, in plaintext; use a host:port target to control those"
            )
    cmd = [
        sys.executable,
        "-m",
        "referee.cli",
        "serve",
        service,
        "--host",
        host,
        "--port",
        str(port),
    ]
    if service == "verifiers" and not _has_option(args, "--workers"):
        cmd += ["--workers", str(workers or default_workers())]
    cmd += args
    proc = subprocess.Popen(
        cmd,
        cwd=cwd,
        env={**os.environ, **(env or {}), "PYTHONUNBUFFERED": "1"},
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    svc = LocalService(service, cmd, "", proc)
    found = threading.Event()

    def pump() -> None:
        # Reads until the process closes its output: a full pipe would block the server.
        assert proc.stdout is not None
        for line in proc.stdout:
            svc.output_lines.append(line)
            if on_output is not None:
                on_output(line)
            m = _LISTENING.search(line)
            if m and not found.is_set():
                svc.scheme, svc.address = m.group(1), m.group(2)
                found.set()
        found.set()

    svc._pump = threading.Thread(target=pump, name=f"local-{service}-output", daemon=True)
    svc._pump.start()
    deadline = time.monotonic() + ready_timeout_s
    try:
        if not found.wait(ready_timeout_s):
            raise LocalServiceError(
                _failure(svc, f"printed no 'listening on' line within {ready_timeout_s:g}s")
            )
        if not svc.address:  # its output ended: it is exiting
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                pass
            code = proc.poll()
            why = "closed its output" if code is None else f"exited with status {code}"
            raise LocalServiceError(_failure(svc, why + " before printing its address"))
        if service in HTTP_HEALTH:
            _wait_http_healthy(svc, HTTP_HEALTH[service], deadline)
        else:
            _wait_serving(svc, deadline)
    except BaseException:
        svc.stop(grace_s=2.0)
        raise
    return svc


def _has_option(args: Sequence[str], name: str) -> bool:
    return any(a == name or a.startswith(name + "=") for a in args)


def _failure(svc: LocalService, why: str) -> str:
    out = svc.output.strip() or "(no output)"
    return f"local {svc.service} service {why}: {' '.join(svc.command)}\n{out}"


def _wait_serving(svc: LocalService, deadline: float) -> None:
    """Polls the server's health service until it says SERVING for its service."""
    request = health_pb2.HealthCheckRequest(service=HEALTH_NAMES[svc.service])
    last = "no answer"
    with grpc.insecure_channel(svc.address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while True:
            if not svc.alive:
                raise LocalServiceError(_failure(svc, f"exited with status {svc.proc.returncode}"))
            left = deadline - time.monotonic()
            if left <= 0:
                raise LocalServiceError(_failure(svc, f"is not healthy at {svc.address} ({last})"))
            try:
                resp = stub.Check(request, timeout=min(2.0, left))
            except grpc.RpcError as e:
                last = f"{e.code().name}: {e.details()}"
            else:
                if resp.status == health_pb2.HealthCheckResponse.SERVING:
                    return
                last = health_pb2.HealthCheckResponse.ServingStatus.Name(resp.status)
            time.sleep(0.05)


def _wait_http_healthy(svc: LocalService, route: str, deadline: float) -> None:
    """Polls `GET route` on an HTTP service until it answers 200."""
    import httpx

    last = "no answer"
    with httpx.Client() as client:
        while True:
            if not svc.alive:
                raise LocalServiceError(_failure(svc, f"exited with status {svc.proc.returncode}"))
            left = deadline - time.monotonic()
            if left <= 0:
                raise LocalServiceError(_failure(svc, f"is not healthy at {svc.url} ({last})"))
            try:
                response = client.get(svc.url + route, timeout=min(20.0, max(left, 0.1)))
            except httpx.TransportError as e:
                last = f"{route}: {type(e).__name__}: {e}"
            else:
                if response.status_code == 200:
                    return
                last = f"{route}: HTTP {response.status_code}"
            time.sleep(0.05)


@dataclass
class LocalServices:
    """The services started for a run; a context manager that stops them all."""

    by_source: dict[str, LocalService] = field(default_factory=dict)
    """The service each local source calls, by source name."""
    services: list[LocalService] = field(default_factory=list)
    """Every process started, in start order (a sandbox before its verifiers)."""
    grace_s: float = 10.0

    def targets(self, sources: Iterable[LocalSource]) -> dict[str, list[str]]:
        """Addresses to call for each source, by name: a local source's service, or a
        remote source's own replicas."""
        out: dict[str, list[str]] = {}
        for src in sources:
            if src.is_local:
                if src.name not in self.by_source:
                    raise KeyError(f"reward source {src.name!r} is local but was not started here")
                out[src.name] = [self.by_source[src.name].address]
            else:
                out[src.name] = list(src.replicas)
        return out

    def exited(self) -> list[LocalService]:
        """The services that have died (to log with their `output`); none is restarted."""
        return [svc for svc in self.services if not svc.alive]

    def stop(self) -> None:
        """Stops every service, the last started first (verifiers before their sandbox)."""
        for svc in reversed(self.services):
            svc.stop(self.grace_s)

    def __enter__(self) -> LocalServices:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def start_local_services(
    sources: Iterable[LocalSource],
    *,
    workers: int | None = None,
    sandbox_args: Sequence[str] = (),
    env: Mapping[str, str] | None = None,
    cwd: str | Path | None = None,
    ready_timeout_s: float = 60.0,
    grace_s: float = 10.0,
) -> LocalServices:
    """Starts one service per distinct `(service, local_args)` among the local sources.

    Returns a `LocalServices` (use it as a context manager); with no local source it
    starts nothing. `sandbox_args` go to the sandbox service started for `code`
    rewards (e.g. `["--backend", "docker"]`). When one service fails to start, those
    already started are stopped and `LocalServiceError` says which source needed it.
    """
    local = [s for s in sources if s.is_local]
    specs: dict[tuple[str, tuple[str, ...]], list[LocalSource]] = {}
    for src in local:
        specs.setdefault((src.service, tuple(src.local_args)), []).append(src)
    started = LocalServices(grace_s=grace_s)
    try:
        sandbox: LocalService | None = None
        for (service, args), users in specs.items():
            args_list = list(args)
            if service == "verifiers" and _wants_local_sandbox(args_list, users):
                if sandbox is None:
                    sandbox = start_service(
                        "sandbox", sandbox_args, env=env, cwd=cwd, ready_timeout_s=ready_timeout_s
                    )
                    started.services.append(sandbox)
                args_list = _with_sandbox(args_list, sandbox.address)
            try:
                svc = start_service(
                    service,  # type: ignore[arg-type]
                    args_list,
                    workers=workers,
                    env=env,
                    cwd=cwd,
                    ready_timeout_s=ready_timeout_s,
                )
            except LocalServiceError as e:
                names = ", ".join(repr(u.name) for u in users)
                raise LocalServiceError(f"reward source {names} (target: local): {e}") from None
            started.services.append(svc)
            for u in users:
                started.by_source[u.name] = svc
    except BaseException:
        started.stop()
        raise
    return started


def _wants_local_sandbox(args: list[str], users: Sequence[LocalSource]) -> bool:
    """`--sandbox local` asks for one; a `code` reward gets one unless it names its own."""
    given = _option_value(args, "--sandbox")
    if given is not None:
        return given == "local"
    return any(u.reward in SANDBOX_REWARDS for u in users)


def _option_value(args: list[str], name: str) -> str | None:
    for i, a in enumerate(args):
        if a == name and i + 1 < len(args):
            return args[i + 1]
        if a.startswith(name + "="):
            return a.split("=", 1)[1]
    return None


def _with_sandbox(args: list[str], address: str) -> list[str]:
    """`args` with `--sandbox local` replaced by (or `--sandbox ADDR` added for) `address`."""
    out: list[str] = []
    skip = False
    for i, a in enumerate(args):
        if skip:
            skip = False
            continue
        if a == "--sandbox" and i + 1 < len(args):
            skip = True
            continue
        if a.startswith("--sandbox="):
            continue
        out.append(a)
    return [*out, "--sandbox", address]
