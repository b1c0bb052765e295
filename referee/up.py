"""`referee up`: the compose stack's topology as local processes, without Docker.

Each enabled service of an `UpConfig` is started with `start_service` (the trainer's
launcher: `referee serve NAME` in its own process group, its address read from the
"listening on" line, then health-waited), one after the other in dependency order: the
rollout server, the sandbox, the verifiers (given the sandbox's address), the reward
model, the judge (given the rollout server's /v1 when `endpoint: rollout`), and last the
gateway, whose config is generated from what is up: a route for every reward each reward
service lists, plus `math_with_format` when the verifiers are there. The addresses are
printed as `referee up: NAME ready at URL (pid N)` lines, then as a table.

Stopping (Ctrl-C, SIGTERM): each service, the last started first, gets SIGTERM, drains
for up to `grace_s`, is SIGKILLed if still there, and then its whole process group is
SIGKILLed (verifier workers included). `up` exits 0, or 1 when a service died meanwhile.

A service that dies while up is reported with its last output. By default the others
keep running (as with `docker compose up`: the gateway reports NOT_SERVING while a
required upstream is down); with `exit_on_failure` everything is stopped and `up`
exits 1. Nothing is restarted.

A service that cannot start stops `up` (after stopping what it started, exit 1) unless
the config says `required: false` (the sandbox's default, since bubblewrap needs user
namespaces): then the failure is printed and the rest come up without it.

Not protected: a `referee up` that is itself SIGKILLed leaves its services running
(each in its own session, so a terminal's Ctrl-C reaches only `up`); find them with
`ps -o pid,pgid,args -e | grep 'referee.cli serve'`. Services listen on `host` without
a token: keep it loopback on a shared machine.
"""

from __future__ import annotations

import signal
import sys
import tempfile
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from types import FrameType
from typing import Any, Literal

import yaml

from referee.trainer.local_services import LocalService, LocalServiceError, start_service
from referee.up_config import REWARD_SERVICES, ServiceConfig, UpConfig

#: Each upstream's deadline in the generated gateway config (a judge waits on an LLM).
_UPSTREAM_TIMEOUT_S = {"verifiers": 30.0, "reward-model": 60.0, "judge": 120.0}


class _Interrupted(BaseException):
    """A stop signal arrived while services were starting (raised from the handler, so
    that the health wait in progress is abandoned and its process stopped)."""


class _Signals:
    """SIGINT/SIGTERM handling for one `up`: abort start-up, end the watch, then ignore."""

    def __init__(self) -> None:
        self.event = threading.Event()
        self.received: int | None = None
        self.mode: Literal["starting", "up", "stopping"] = "starting"

    def handle(self, signum: int, frame: FrameType | None) -> None:
        if self.mode == "stopping":
            _say("already stopping; each service gets its grace period, then SIGKILL")
            return
        self.received = signum
        self.event.set()
        if self.mode == "starting":
            self.mode = "stopping"
            raise _Interrupted(signum)

    @contextmanager
    def installed(self) -> Iterator[_Signals]:
        previous = {s: signal.signal(s, self.handle) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield self
        finally:
            for s, h in previous.items():
                signal.signal(s, h)


def run_up(cfg: UpConfig, *, exit_on_failure: bool = False, show_logs: bool = True) -> int:
    """Starts the topology, waits for a stop signal (or a death with `exit_on_failure`),
    stops everything. Returns the exit status: 0 stopped on request, 1 a service failed."""
    running: dict[str, LocalService] = {}
    skipped: dict[str, str] = {}
    signals = _Signals()
    with tempfile.TemporaryDirectory(prefix="referee-up-") as tmp, signals.installed():
        try:
            for spec in cfg.enabled():
                try:
                    args = _service_args(spec, cfg, running, Path(tmp))
                    svc = start_service(
                        spec.name,  # type: ignore[arg-type]
                        args,
                        host=cfg.host,
                        port=spec.port,
                        ready_timeout_s=cfg.ready_timeout_s,
                        on_output=_echo(spec.name) if show_logs else None,
                    )
                except LocalServiceError as e:
                    if spec.required:
                        _say(f"{spec.name} could not start; stopping the others.\n{e}", err=True)
                        signals.mode = "stopping"
                        _stop_all(running, cfg.grace_s)
                        return 1
                    skipped[spec.name] = str(e).splitlines()[0]
                    _say(f"{spec.name} could not start (required: false, going on without "
                         f"it).\n{e}", err=True)
                    continue
                running[spec.name] = svc
                _say(f"{spec.name} ready at {svc.url} (pid {svc.proc.pid})")
            signals.mode = "up"
        except _Interrupted:
            _say("stop requested while starting")
            _stop_all(running, cfg.grace_s)
            return 0
        _print_table(cfg, running, skipped)
        _say("up; Ctrl-C stops every service")
        failed = _watch(running, signals, exit_on_failure)
        signals.mode = "stopping"
        if signals.received is not None:
            _say(f"{signal.Signals(signals.received).name}: stopping")
        _stop_all(running, cfg.grace_s)
        return 1 if failed else 0


def _watch(running: dict[str, LocalService], signals: _Signals, exit_on_failure: bool) -> bool:
    """Waits for a stop signal, reporting services that die. True when one died."""
    dead: set[str] = set()
    while not signals.event.wait(0.5):
        for name, svc in running.items():
            if name in dead or svc.alive:
                continue
            dead.add(name)
            code = svc.stop(0)  # reaps what is left of its process group
            tail = "".join(list(svc.output_lines)[-20:]).rstrip() or "(no output)"
            _say(f"{name} (pid {svc.proc.pid}) EXITED with status {code} while up; its last "
                 f"output:\n{tail}", err=True)
            if exit_on_failure:
                _say("--exit-on-failure: stopping the others", err=True)
                return True
            if len(dead) == len(running):
                _say("no service is left running", err=True)
                return True
            _say(f"{name} is not restarted; the others keep running (the gateway reports "
                 "NOT_SERVING while a required upstream is down). Ctrl-C stops them.", err=True)
    return bool(dead)


def _stop_all(running: dict[str, LocalService], grace_s: float) -> None:
    """Stops the services, the last started first (the gateway before its upstreams)."""
    for name, svc in reversed(list(running.items())):
        code = svc.stop(grace_s)
        _say(f"{name} stopped (pid {svc.proc.pid}, status {code})")


def _service_args(spec: ServiceConfig, cfg: UpConfig, running: dict[str, LocalService],
                  tmp: Path) -> list[str]:
    """The `referee serve NAME` options for `spec`, wired to what is already running."""
    args = list(spec.args)
    if spec.name == "verifiers":
        sandbox = running.get("sandbox")
        if sandbox is not None and not any(a.split("=", 1)[0] == "--sandbox" for a in args):
            args += ["--sandbox", sandbox.address]
    elif spec.name in ("reward-model", "rollout"):
        args = ["--model", str(spec.model), *args]
    elif spec.name == "judge":
        endpoint, model = spec.endpoint, spec.model
        if endpoint == "rollout":
            if "rollout" not in running:
                raise LocalServiceError("judge: its endpoint is the rollout server, which is not running")
            endpoint = f"{running['rollout'].url}/v1"
            model = model or cfg.services["rollout"].model
        args = ["--endpoint", str(endpoint), "--model", str(model), *args]
    elif spec.name == "gateway":
        path = tmp / "gateway.yaml"
        if spec.config is not None:
            data = _resolve_gateway_config(spec.config, running)
        else:
            data = generate_gateway_config({n: running[n].address for n in REWARD_SERVICES
                                            if n in running})
        path.write_text(yaml.safe_dump(data, sort_keys=False))
        args = ["--config", str(path), *args]
    return args


def generate_gateway_config(upstreams: dict[str, str]) -> dict[str, Any]:
    """A gateway config routing to `upstreams` (name -> host:port): a route for every
    reward each one lists (`NAME/reward` when two offer the same name), and the
    `math_with_format` composite of examples/configs/gateway.yaml over the verifiers."""
    from referee.rewardsvc.client import RewardCallError, SyncRewardClient

    if not upstreams:
        raise LocalServiceError("gateway: no reward service is running to route to")
    rewards: dict[str, Any] = {}
    for name, address in upstreams.items():
        try:
            with SyncRewardClient(address, timeout_s=10.0) as client:
                infos = client.list_rewards()
        except RewardCallError as e:
            raise LocalServiceError(f"gateway: cannot list the rewards of {name} at {address}: {e}") from None
        for info in infos:
            key = info.name if info.name not in rewards else f"{name}/{info.name}"
            rewards[key] = {"upstream": name, "reward": info.name}
    verifiers = {k for k, r in rewards.items() if r["upstream"] == "verifiers"}
    if {"math", "format"} <= verifiers and "math_with_format" not in rewards:
        rewards["math_with_format"] = {
            "description": "0.9 * math + 0.1 * format; 0 unless the format check passes",
            "components": [
                {"name": "math", "upstream": "verifiers", "reward": "math", "weight": 0.9},
                {"name": "format", "upstream": "verifiers", "reward": "format", "weight": 0.1,
                 "params": {"strict": False}},
            ],
            "gates": [{"component": "format", "min": 1.0, "else_value": 0.0}],
        }
    return {
        "health": {"interval_s": 2, "timeout_s": 2},
        "upstreams": {n: {"address": a, "timeout_s": _UPSTREAM_TIMEOUT_S[n]}
                      for n, a in upstreams.items()},
        "rewards": rewards,
    }


def _resolve_gateway_config(path: Path, running: dict[str, LocalService]) -> dict[str, Any]:
    """The user's gateway config with service names as addresses replaced by addresses
    (and a relative `tls_ca` made absolute, since the copy is written elsewhere)."""
    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as e:
        raise LocalServiceError(f"gateway: cannot read services.gateway.config {path}: {e}") from None
    upstreams = data.get("upstreams") if isinstance(data, dict) else None
    for name, up in (upstreams or {}).items():
        if not isinstance(up, dict):
            continue  # the gateway names the mistake when it reads the file
        address = up.get("address")
        if address in REWARD_SERVICES:
            if address not in running:
                raise LocalServiceError(f"gateway: upstream {name} of {path} is the {address} "
                                        "service, which is not running")
            up["address"] = running[address].address
        ca = up.get("tls_ca")
        if isinstance(ca, str) and not Path(ca).is_absolute():
            up["tls_ca"] = str(path.parent / ca)
    return data


def _print_table(cfg: UpConfig, running: dict[str, LocalService], skipped: dict[str, str]) -> None:
    rows = []
    for spec in cfg.enabled():
        svc = running.get(spec.name)
        if svc is not None:
            rows.append((spec.name, svc.url, str(svc.proc.pid), _summary(svc)))
        elif spec.name in skipped:
            rows.append((spec.name, "-", "-", f"NOT STARTED: {skipped[spec.name]}"))
    try:
        from rich.console import Console
        from rich.table import Table
    except ImportError:  # rich comes with the trainer extra; a services-only install may lack it
        for row in rows:
            print("  ".join(row), flush=True)
        return
    table = Table(title="referee up")
    for column in ("service", "address", "pid", "serving"):
        table.add_column(column, overflow="fold")
    for row in rows:
        table.add_row(*row)
    Console().print(table)
    sys.stdout.flush()


def _summary(svc: LocalService) -> str:
    """What the service said it serves: its first line that is not the address (without
    the sandbox's JSON self-description)."""
    for line in svc.output_lines:
        if "listening on" not in line and line.strip():
            return line.split(" {", 1)[0].strip()
    return ""


def _echo(name: str) -> Callable[[str], None]:
    def echo(line: str) -> None:
        sys.stdout.write(f"{name:>12} | {line}")
        sys.stdout.flush()

    return echo


def _say(message: str, err: bool = False) -> None:
    print(f"referee up: {message}", file=sys.stderr if err else sys.stdout, flush=True)
