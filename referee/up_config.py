"""The YAML config of `referee up`: which services run, where, with which options.

    host: 127.0.0.1
    services:
      verifiers: {args: [--workers, "2"]}
      sandbox: {required: false}             # needs bubblewrap; skipped when it cannot start
      reward-model: {model: runs/rm/final}   # off unless a model is given
      rollout: {model: tiny:tiny}            # off unless a model is given
      judge: {endpoint: rollout}             # off unless an endpoint is given
      gateway: {port: 50050}                 # routes every reward of the services above

With no file, `UpConfig()` is verifiers + sandbox + gateway, which is what
`examples/configs/up.yaml` spells out. Mistakes raise `UpConfigError` naming the dotted
key (`services.judge.endpoint`) and saying how to fix it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from referee.rewardsvc.config_reader import KeyedConfigError, Section, read_yaml_file
from referee.trainer.local_services import RESERVED_OPTIONS

#: Start order: a service comes after those it calls (the judge after the rollout server
#: it may use, the verifiers after their sandbox, the gateway after every reward service).
SERVICES = ("rollout", "sandbox", "verifiers", "reward-model", "judge", "gateway")

#: The services a gateway routes to: every one that speaks referee.v1.RewardService.
REWARD_SERVICES = ("verifiers", "reward-model", "judge")


class UpConfigError(KeyedConfigError):
    """A `referee up` config mistake; `key` is the dotted key at fault."""


@dataclass(frozen=True)
class ServiceConfig:
    """One service of the topology, as `referee serve NAME` runs it."""

    name: str
    """verifiers, sandbox, reward-model, judge, gateway or rollout."""

    enabled: bool = True
    """Start it. Default: on for verifiers, sandbox and gateway; on for reward-model and
    rollout when `model` is set, and for judge when `endpoint` is."""

    port: int = 0
    """Port to bind on `host`; 0 picks a free one (the table shows it). Default 0, but
    50050 for the gateway: the one address a trainer config names."""

    args: tuple[str, ...] = ()
    """More options for `referee serve NAME`, e.g. [--workers, "4"]; not --host, --port,
    --token or --tls-* (a local cluster is plaintext on `host`)."""

    required: bool = True
    """When it cannot start, `up` stops what it started and fails. false: the failure is
    reported and the rest come up without it (the sandbox's default: it needs
    bubblewrap and user namespaces, which not every machine allows)."""

    model: str | None = None
    """reward-model: its model directory; rollout: a model directory or tiny:tiny; judge:
    the model name sent to the endpoint (default with `endpoint: rollout`: the rollout's)."""

    endpoint: str | None = None
    """judge: base URL of an OpenAI-compatible API (http://HOST:PORT/v1), or `rollout` for
    the /v1 routes of the rollout server started here."""

    config: Path | None = None
    """gateway: a gateway YAML to use instead of the generated one (relative to this
    file). An upstream whose `address` is a service name here (verifiers, reward-model,
    judge) is given that service's address."""


@dataclass(frozen=True)
class UpConfig:
    """The whole topology."""

    host: str = "127.0.0.1"
    """Address every service binds. Keep loopback unless the machine's network is
    trusted: nothing here requires a token."""

    grace_s: float = 10.0
    """On stop, how long each service may drain after SIGTERM before it is SIGKILLed."""

    ready_timeout_s: float = 120.0
    """How long each service may take to answer its health check once started."""

    services: dict[str, ServiceConfig] = field(default_factory=lambda: _default_services())
    """Every known service (enabled or not), in start order."""

    def enabled(self) -> list[ServiceConfig]:
        """The services to start, in start order."""
        return [s for s in self.services.values() if s.enabled]


def _default_services() -> dict[str, ServiceConfig]:
    return parse_up_config({}).services


def load_up_config(path: str | Path) -> UpConfig:
    """Reads and validates a `referee up` YAML file."""
    p = Path(path)
    return parse_up_config(read_yaml_file(p, UpConfigError), base_dir=p.parent)


def parse_up_config(data: Any, base_dir: Path | None = None) -> UpConfig:
    """Validates a config mapping (what the YAML holds)."""
    top = Section(data, "", UpConfigError)
    host = top.text("host", "127.0.0.1")
    if not host:
        top.fail("host", "must be an address to bind, e.g. 127.0.0.1")
    given = dict(top.sections("services", required=False))
    for name in given:
        if name not in SERVICES:
            top.fail(f"services.{name}", f"unknown service; known: {', '.join(SERVICES)}")
    services = {
        name: _service(name, given.get(name, Section({}, f"services.{name}", UpConfigError)),
                       base_dir or Path.cwd())
        for name in SERVICES
    }
    cfg = UpConfig(
        host=host,
        grace_s=top.number("grace_s", 10.0, low=0),
        ready_timeout_s=top.number("ready_timeout_s", 120.0, low=1),
        services=services,
    )
    top.done()
    _check_wiring(cfg)
    return cfg


def _service(name: str, sec: Section, base_dir: Path) -> ServiceConfig:
    model = endpoint = config = None
    if name in ("reward-model", "rollout", "judge"):
        model = sec.text("model", None)
    if name == "judge":
        endpoint = sec.text("endpoint", None)
    if name == "gateway":
        raw = sec.text("config", None)
        config = None if raw is None else (base_dir / raw if not Path(raw).is_absolute() else Path(raw))
    switch = {"reward-model": model, "rollout": model, "judge": endpoint}
    enabled = sec.boolean("enabled", name not in switch or switch[name] is not None)
    if enabled and name in switch and switch[name] is None:
        what = "endpoint" if name == "judge" else "model"
        hint = {"reward-model": "its model directory", "rollout": "a model directory or tiny:tiny",
                "judge": "an OpenAI-compatible base URL, or `rollout`"}[name]
        sec.fail(what, f"is required to enable {name}: {hint}")
    args = sec.get("args", [])
    if not isinstance(args, list) or not all(isinstance(a, (str, int, float)) for a in args):
        sec.fail("args", f'must be a list of command-line words, e.g. [--workers, "2"]; got {args!r}')
    args = [str(a) for a in args]
    for a in args:
        if a.split("=", 1)[0] in RESERVED_OPTIONS:
            sec.fail("args", f"may not contain {a.split('=', 1)[0]}: `referee up` sets where "
                     "services listen (use `host` and `port`), and runs them without TLS or token")
    svc = ServiceConfig(
        name=name,
        enabled=enabled,
        port=int(sec.number("port", 50050 if name == "gateway" else 0, low=0, integer=True)),
        args=tuple(args),
        required=sec.boolean("required", name != "sandbox"),
        model=model,
        endpoint=endpoint,
        config=config,
    )
    if svc.port > 65535:
        sec.fail("port", f"must be a TCP port (0 to 65535), got {svc.port}")
    sec.done()
    return svc


def _check_wiring(cfg: UpConfig) -> None:
    """Checks between services: what the judge and the gateway need is started."""
    s = cfg.services
    judge = s["judge"]
    if judge.enabled and judge.endpoint == "rollout" and not s["rollout"].enabled:
        raise UpConfigError("services.judge.endpoint", "is `rollout`, but the rollout service is "
                            "not enabled: give services.rollout.model, or a URL here")
    if judge.enabled and judge.endpoint != "rollout" and judge.model is None:
        raise UpConfigError("services.judge.model", "is required with an endpoint URL: the model "
                            "name to send it")
    gateway = s["gateway"]
    if (gateway.enabled and gateway.config is None
            and not any(s[n].enabled for n in REWARD_SERVICES)):
        raise UpConfigError("services.gateway.enabled", "the gateway needs a reward service to "
                            f"route to: enable one of {', '.join(REWARD_SERVICES)}, or set this "
                            "to false")
