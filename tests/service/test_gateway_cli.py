"""`referee serve gateway --config FILE` as a real process in front of a real verifiers
process, driven by `referee list`, `referee score` and `referee health`; and the shipped
example config, and config mistakes naming their key."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from gateway_kit import EXAMPLE, GOOD, NO_FORMAT, example_data
from service_kit import CliServer, run_cli

from referee.rewardsvc.gateway_compose import combine
from referee.rewardsvc.gateway_config import (
    Composite,
    GatewayConfigError,
    Route,
    load_gateway_config,
    parse_gateway_config,
)
from referee.testing import serve_process
from referee.types import Score, Status


def test_example_config_loads() -> None:
    cfg = load_gateway_config(EXAMPLE)
    assert cfg.upstreams["verifiers"].targets == ("127.0.0.1:50051",)
    assert isinstance(cfg.rewards["math"], Route) and cfg.rewards["math"].reward == "math"
    composite = cfg.rewards["math_with_format"]
    assert isinstance(composite, Composite)
    assert [(c.name, c.weight) for c in composite.components] == [("math", 0.9), ("format", 0.1)]
    assert [(g.component, g.min, g.else_value) for g in composite.gates] == [("format", 1.0, 0.0)]
    assert composite.on_failure == "fail"


def test_serve_gateway_end_to_end(cli_servers: Callable[..., CliServer], tmp_path: Path) -> None:
    verifiers = cli_servers(["--workers", "1", "--no-entrypoints"])
    config = tmp_path / "gateway.yaml"
    config.write_text(yaml.safe_dump(example_data(verifiers.address)))
    with serve_process(["gateway", "--config", str(config)]) as gw:
        listed = run_cli(["list", "--target", gw.address, "--json"])
        assert listed.returncode == 0, listed.stderr
        kinds = {r["name"]: r["kind"] for r in json.loads(listed.stdout)}
        assert kinds == {"math": "route", "format": "route", "math_with_format": "composite"}
        rows = [{"id": "good", "completion": GOOD, "reference": "4"},
                {"id": "noformat", "completion": NO_FORMAT, "reference": "4"}]
        scored = run_cli(["score", "--target", gw.address, "--reward", "math_with_format"],
                         input="".join(json.dumps(r) + "\n" for r in rows))
        assert scored.returncode == 0, scored.stderr
        good, noformat = (json.loads(line) for line in scored.stdout.splitlines())
        assert (good["status"], good["value"]) == ("OK", pytest.approx(1.0))
        assert (noformat["status"], noformat["value"]) == ("OK", 0.0)
        assert noformat["components"]["math"] == 1.0
        health = run_cli(["health", "--target", gw.address])
        assert (health.returncode, health.stdout.strip()) == (0, "SERVING")
    assert any("serving rewards: format, math, math_with_format" in line for line in gw.output)


def test_serve_gateway_bad_config_exits_2_naming_the_key(tmp_path: Path) -> None:
    data = example_data("127.0.0.1:1")
    data["rewards"]["math_with_format"]["gates"][0]["component"] = "fromat"
    config = tmp_path / "gateway.yaml"
    config.write_text(yaml.safe_dump(data))
    done = run_cli(["serve", "gateway", "--config", str(config), "--port", "0"])
    assert done.returncode == 2
    assert "rewards.math_with_format.gates.0.component: 'fromat' is not a component" in done.stderr


def _base() -> dict[str, Any]:
    return example_data("127.0.0.1:50051")


def _set(path: str, value: Any) -> dict[str, Any]:
    data = _base()
    *parents, last = path.split(".")
    node: Any = data
    for p in parents:
        node = node[int(p)] if isinstance(node, list) else node[p]
    node[last] = value
    return data


@pytest.mark.parametrize(
    ("data", "key", "text"),
    [
        ({"rewards": {}}, "upstreams", "is required"),
        (_set("upstreams.verifiers.adress", "x:1"), "upstreams.verifiers.adress",
         "did you mean 'address'"),
        (_set("upstreams.verifiers.address", 5), "upstreams.verifiers.address",
         "must be host:port"),
        (_set("upstreams.verifiers.timeout_s", "soon"), "upstreams.verifiers.timeout_s",
         "must be a finite number"),
        (_set("upstreams.verifiers.token_env", "REFEREE_TEST_NO_SUCH_VAR"),
         "upstreams.verifiers.token_env", "is not set"),
        (_set("rewards.math.upstream", "verifier"), "rewards.math.upstream",
         "did you mean 'verifiers'"),
        (_set("rewards.math", {"reward": "math"}), "rewards.math", "needs `upstream`"),
        (_set("rewards.math.components", []), "rewards.math.components", "not both"),
        (_set("rewards.math_with_format.components", []),
         "rewards.math_with_format.components", "at least one component"),
        (_set("rewards.math_with_format.components.1.name", "math"),
         "rewards.math_with_format.components.1.name", "names must be unique"),
        (_set("rewards.math_with_format.components.1.weight", "high"),
         "rewards.math_with_format.components.1.weight", "must be a finite number"),
        (_set("rewards.math_with_format.combine", "product"),
         "rewards.math_with_format.combine", "must be one of weighted_sum"),
        (_set("rewards.math_with_format.gates.0.min", None),
         "rewards.math_with_format.gates.0.min", "is required"),
        (_set("rewards.math_with_format.on_failure", "fallback"),
         "rewards.math_with_format.fallback_value", "is required with on_failure: fallback"),
        (_set("rewards.math_with_format.fallback_value", 0.0),
         "rewards.math_with_format.fallback_value", "only with on_failure: fallback"),
        (_set("rewards.math_with_format.components.0.params", [1]),
         "rewards.math_with_format.components.0.params", "must be a mapping"),
        (_set("health.interval_s", 0), "health.interval_s", "must be >= 0.05"),
    ],
)
def test_config_errors_name_the_key(data: dict[str, Any], key: str, text: str) -> None:
    with pytest.raises(GatewayConfigError) as info:
        parse_gateway_config(data)
    assert info.value.key == key, str(info.value)
    assert text in str(info.value)


def test_composite_version_follows_its_definition() -> None:
    before = parse_gateway_config(_base()).rewards["math_with_format"]
    after = parse_gateway_config(_set("rewards.math_with_format.components.1.weight", 0.2))
    assert before.version != after.rewards["math_with_format"].version  # type: ignore[union-attr]


def test_fallback_and_failures_in_combine() -> None:
    data = _set("rewards.math_with_format.on_failure", "fallback")
    data["rewards"]["math_with_format"]["fallback_value"] = 0.25
    c = parse_gateway_config(data).rewards["math_with_format"]
    assert isinstance(c, Composite)
    ok = Score("s", Status.OK, 1.0, {"tag:think": 1.0})
    down = Score("s", Status.TIMEOUT, None, reason="took too long")
    s = combine(c, "s", [down, ok])
    assert (s.status, s.value) == (Status.OK, 0.25)
    assert s.reason == "fallback value 0.25: component math (verifiers/math) TIMEOUT: took too long"
    assert s.components == {"format": 1.0, "format.tag:think": 1.0}
    failing = parse_gateway_config(_base()).rewards["math_with_format"]
    assert isinstance(failing, Composite)
    s = combine(failing, "s", [down, ok])
    assert (s.status, s.value) == (Status.TIMEOUT, None)
    # An OK score without a value breaks the contract: ERROR, not a number.
    s = combine(failing, "s", [Score("s", Status.OK, None), ok])
    assert (s.status, s.value) == (Status.ERROR, None)
