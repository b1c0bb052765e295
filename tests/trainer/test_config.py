"""The trainer config: every shipped YAML loads, and every mistake names its key.

Reachability is tested against real servers on port 0: a plain gRPC health server, a
real `referee serve verifiers` process, and a port nobody listens on.
"""

from __future__ import annotations

import dataclasses
import socket
import time
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path

import grpc
import pytest
import yaml
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from referee.trainer import config as config_module
from referee.trainer.config import (
    ConfigError,
    TrainConfig,
    check_reachable,
    dump_config,
    load_config,
    save_config,
)
from referee.trainer.config_load import field_docs, from_dict, parse_value

ROOT = Path(__file__).resolve().parents[2]
SHIPPED = sorted(
    p
    for pattern in ("*.yaml", "*.yml")
    for p in (ROOT / "examples").rglob(pattern)
    if not {"build", "node_modules"} & set(p.parts) and ".egg-info" not in str(p)
    # gateway and `referee up` configs are other schemas, loaded by
    # tests/service/test_gateway*.py and tests/test_up.py
    and not p.name.startswith(("gateway", "up"))
)
REWARD_SERVICE = "referee.v1.RewardService"


def base() -> dict:
    """The smallest valid grpo config, as plain data."""
    return {
        "recipe": "grpo",
        "model": {"path": "tiny:tiny"},
        "data": {"train_path": "prompts.jsonl", "eval_fraction": 0.1},
        "reward": {"sources": [{"target": "local", "reward": "math"}]},
    }


def write(tmp_path: Path, data: dict) -> Path:
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def error(tmp_path: Path, data: dict, overrides: list[str] | None = None) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, data), overrides or [])
    return info.value


# --- shipped configs ----------------------------------------------------------------


def test_there_are_shipped_configs() -> None:
    names = {p.name for p in SHIPPED}
    assert {"grpo_tiny.yaml", "sft_tiny.yaml"} <= names


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: str(p.relative_to(ROOT)))
def test_shipped_config_loads_and_round_trips(path: Path, tmp_path: Path) -> None:
    cfg = load_config(path)
    assert cfg.grad_accum_steps(world_size=1) >= 1
    assert cfg.deepspeed_dict(world_size=1)["train_batch_size"] == cfg.optimizer_batch_size
    again = load_config(save_config(cfg, tmp_path / "config.yaml"))
    assert again == cfg


def test_every_config_field_has_a_docstring() -> None:
    classes = [
        obj
        for obj in vars(config_module).values()
        if isinstance(obj, type)
        and dataclasses.is_dataclass(obj)
        and obj.__module__ == config_module.__name__
    ]
    assert len(classes) >= 12
    for cls in classes:
        docs = field_docs(cls)
        missing = [f.name for f in dataclasses.fields(cls) if not docs.get(f.name)]
        assert not missing, f"{cls.__name__} fields without a docstring: {missing}"


# --- strict loading -----------------------------------------------------------------


def test_unknown_key_names_the_dotted_key_with_a_suggestion(tmp_path: Path) -> None:
    data = base() | {"rollout": {"nn": 8}}
    e = error(tmp_path, data)
    assert e.key == "rollout.nn"
    assert "did you mean 'rollout.n'?" in str(e)
    assert "Valid keys under rollout: engine, n, prompts_per_step" in str(e)


def test_unknown_key_in_a_list_entry(tmp_path: Path) -> None:
    data = base()
    data["reward"]["sources"][0]["wieght"] = 2
    e = error(tmp_path, data)
    assert e.key == "reward.sources.0.wieght"
    assert "did you mean 'reward.sources.0.weight'?" in str(e)


def test_key_in_the_wrong_section_points_to_the_right_one(tmp_path: Path) -> None:
    e = error(tmp_path, base() | {"lr": 1e-5})
    assert e.key == "lr"
    assert "did you mean 'optim.lr'?" in str(e)
    assert "Valid keys at the top level: recipe, model, data" in str(e)


def test_unknown_key_without_a_close_match_lists_valid_keys(tmp_path: Path) -> None:
    e = error(tmp_path, base() | {"optim": {"zzz": 1}})
    assert str(e).startswith("optim.zzz: unknown key. Valid keys under optim: lr, betas")


@pytest.mark.parametrize(
    ("section", "value", "key", "expected"),
    [
        ("rollout", {"n": "eight"}, "rollout.n", "expected an integer, got 'eight' (str)"),
        ("rollout", {"n": 2.5}, "rollout.n", "expected an integer, got 2.5 (float)"),
        ("rollout", {"n": True}, "rollout.n", "expected an integer, got True (bool)"),
        ("deepspeed", {"enabled": "yes"}, "deepspeed.enabled", "expected true or false"),
        ("deepspeed", {"enabled": 1}, "deepspeed.enabled", "expected true or false, got 1"),
        ("rollout", {"engine": "hff"}, "rollout.engine", "did you mean 'hf'?"),
        (
            "algorithm",
            {"aggregation": "tokenmean"},
            "algorithm.aggregation",
            "did you mean 'token_mean'?",
        ),
        ("rollout", {"stop": "END"}, "rollout.stop", "expected a list of text, got 'END'"),
        ("rollout", {"stop": ["a", 3]}, "rollout.stop.1", "expected text, got 3 (int)"),
        ("optim", {"lr": "fast"}, "optim.lr", "expected a number, got 'fast' (str)"),
        ("optim", {"betas": [0.9]}, "optim.betas", "expected 2 values"),
        ("algorithm", {"kl": 0.1}, "algorithm.kl", "expected a section with keys (coef,"),
        ("data", {"seed": "x"}, "data.seed", "expected an integer, got 'x'"),
    ],
)
def test_wrong_type_names_key_expected_type_and_value(
    tmp_path: Path, section: str, value: dict, key: str, expected: str
) -> None:
    data = base()
    data.setdefault(section, {}).update(value)
    e = error(tmp_path, data)
    assert e.key == key
    assert expected in str(e)


def test_wrong_type_inside_a_union_reports_the_inner_key(tmp_path: Path) -> None:
    data = base()
    data["reward"]["sources"][0]["target"] = ["127.0.0.1:1", 5]
    e = error(tmp_path, data)
    assert e.key == "reward.sources.0.target.1"
    assert "expected text, got 5 (int)" in str(e)


def test_safe_coercions(tmp_path: Path) -> None:
    # PyYAML reads 1e-5 as a string; ints are fine for floats; integral floats for ints.
    cfg = load_config(
        write(tmp_path, base() | {"optim": {"lr": "1e-5", "max_grad_norm": 2, "steps": 10.0}})
    )
    assert cfg.optim.lr == 1e-5 and isinstance(cfg.optim.lr, float)
    assert cfg.optim.max_grad_norm == 2.0 and isinstance(cfg.optim.max_grad_norm, float)
    assert cfg.optim.steps == 10 and isinstance(cfg.optim.steps, int)
    assert cfg.optim.betas == (0.9, 0.999)


def test_missing_required_key_names_it(tmp_path: Path) -> None:
    data = base()
    del data["model"]["path"]
    e = error(tmp_path, data)
    assert e.key == "model.path"
    assert "required key is missing (Hugging Face model directory" in str(e)
    del data["model"]
    assert error(tmp_path, data).key == "model"
    data = base()
    del data["reward"]["sources"][0]["reward"]
    assert error(tmp_path, data).key == "reward.sources.0.reward"


def test_empty_or_non_mapping_file(tmp_path: Path) -> None:
    (tmp_path / "empty.yaml").write_text("")
    with pytest.raises(ConfigError, match="recipe: required key is missing"):
        load_config(tmp_path / "empty.yaml")
    (tmp_path / "list.yaml").write_text("- a\n")
    with pytest.raises(ConfigError, match="must hold a mapping"):
        load_config(tmp_path / "list.yaml")
    (tmp_path / "bad.yaml").write_text("a: [\n")
    with pytest.raises(ConfigError, match="is not valid YAML"):
        load_config(tmp_path / "bad.yaml")


# --- __post_init__ checks -----------------------------------------------------------


def test_missing_model_directory(tmp_path: Path) -> None:
    e = error(tmp_path, base(), ["model.path=/x/does-not-exist"])
    assert str(e) == (
        "model.path: /x/does-not-exist does not exist; give a Hugging Face model directory "
        "or tiny:<preset> (nothing is downloaded)"
    )


def test_model_directory_needs_config_json(tmp_path: Path) -> None:
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    e = error(tmp_path, base(), [f"model.path={model_dir}"])
    assert e.key == "model.path" and "has no config.json" in str(e)
    (model_dir / "config.json").write_text("{}")
    assert load_config(write(tmp_path, base()), [f"model.path={model_dir}"]).model.path == str(
        model_dir
    )


def test_tiny_preset_typo(tmp_path: Path) -> None:
    e = error(tmp_path, base(), ["model.path=tiny:smal"])
    assert e.key == "model.path"
    assert "did you mean tiny:small?" in str(e)


def test_clip_high_below_clip_low(tmp_path: Path) -> None:
    e = error(tmp_path, base(), ["algorithm.clip_low=0.2", "algorithm.clip_high=0.1"])
    assert e.key == "algorithm.clip_high"
    assert "set clip_high >= clip_low" in str(e)


def test_algorithm_defaults_are_derived_once() -> None:
    cfg = from_dict(TrainConfig, base())
    assert (cfg.algorithm.clip_low, cfg.algorithm.clip_high) == (0.2, 0.2)
    assert cfg.algorithm.aggregation == "token_mean"
    data = base() | {"algorithm": {"name": "gspo"}}
    gspo = from_dict(TrainConfig, data)
    assert (gspo.algorithm.clip_low, gspo.algorithm.clip_high) == (3e-4, 4e-4)
    assert gspo.algorithm.aggregation == "sequence_mean"
    data = base() | {"algorithm": {"name": "dr_grpo"}}
    assert from_dict(TrainConfig, data).algorithm.aggregation == "seq_mean_token_sum_norm"
    assert cfg.data.seed == cfg.seed == 0
    assert cfg.logging.run_dir == "runs/run"
    assert cfg.checkpoint.dir == "runs/run/checkpoints"


def test_group_advantage_needs_a_group(tmp_path: Path) -> None:
    e = error(tmp_path, base(), ["rollout.n=1"])
    assert e.key == "rollout.n"
    assert "algorithm.name=reinforce_pp" in str(e)
    cfg = load_config(
        write(tmp_path, base()),
        ["rollout.n=1", "algorithm.name=reinforce_pp", "optim.micro_batch_size=1"],
    )
    assert cfg.rollout.n == 1


def test_micro_batch_must_divide_the_optimiser_batch(tmp_path: Path) -> None:
    # 4 prompts x 6 completions / 2 mini-batches = 12 sequences per optimiser step.
    overrides = ["rollout.prompts_per_step=4", "rollout.n=6", "algorithm.mini_batches=2"]
    e = error(tmp_path, base(), [*overrides, "optim.micro_batch_size=5"])
    assert e.key == "optim.micro_batch_size"
    assert "5 does not divide the 12 sequences" in str(e)
    assert "pick one of [1, 2, 3, 4, 6, 12]" in str(e)
    e = error(tmp_path, base(), [*overrides, "algorithm.mini_batches=5"])
    assert e.key == "algorithm.mini_batches"
    cfg = load_config(write(tmp_path, base()), [*overrides, "optim.micro_batch_size=3"])
    assert cfg.grad_accum_steps(world_size=1) == 4
    assert cfg.grad_accum_steps(world_size=2) == 2
    with pytest.raises(ConfigError, match="3 x 3 processes does not divide"):
        cfg.grad_accum_steps(world_size=3)


def test_sft_needs_completions_and_a_batch(tmp_path: Path) -> None:
    data = base() | {"recipe": "sft", "eval": {"enabled": False}}
    assert error(tmp_path, data).key == "data.completion_field"
    data["data"]["completion_field"] = "completion"
    assert error(tmp_path, data).key == "optim.batch_size"
    data["optim"] = {"batch_size": 8, "micro_batch_size": 4}
    assert load_config(write(tmp_path, data)).grad_accum_steps(1) == 2
    assert error(tmp_path, base(), ["optim.batch_size=8"]).key == "optim.batch_size"


def test_eval_needs_held_out_data_and_a_known_reward(tmp_path: Path) -> None:
    e = error(tmp_path, base(), ["data.eval_fraction=0"])
    assert e.key == "eval.enabled" and "data.eval_fraction" in str(e)
    e = error(tmp_path, base(), ["eval.reward=maths"])
    assert e.key == "eval.reward" and "choose one of math" in str(e)
    e = error(tmp_path, base(), ["eval.k=4"])
    assert e.key == "eval.k" and "eval.greedy=false" in str(e)
    assert load_config(write(tmp_path, base()), ["eval.k=4", "eval.greedy=false"]).eval.k == 4


@pytest.mark.parametrize(
    ("override", "key", "text"),
    [
        ("rollout.temperature=0", "rollout.temperature", "use eval.greedy"),
        ("rollout.top_k=0", "rollout.top_k", "-1 to disable"),
        ("rollout.engine=sglang", "rollout.sglang.urls", "needs server URLs"),
        ("reward.sources.0.target=localhost", "reward.sources.0.target", "is not host:port"),
        ("reward.sources.0.target=[local, a:1]", "reward.sources.0.target", "cannot be mixed"),
        ("reward.mask=groups", "reward.mask", "did you mean 'group'?"),
        ("data.train_path=p.csv", "data.train_path", "neither .jsonl nor .parquet"),
        ("data.eval_path=e.jsonl", "data.eval_fraction", "keep one of the two"),
        ("deepspeed.zero_stage=4", "deepspeed.zero_stage", "must be 0, 1, 2 or 3"),
        ("deepspeed.extra={train_batch_size: 3}", "deepspeed.extra.train_batch_size", "is derived"),
        ("algorithm.kl.coef=-1", "algorithm.kl.coef", "must be >= 0"),
        ("algorithm.tis_cap=0.5", "algorithm.tis_cap", "null turns the correction off"),
        ("name=my run", "name", "must be letters"),
    ],
)
def test_post_init_checks_name_the_key(tmp_path: Path, override: str, key: str, text: str) -> None:
    e = error(tmp_path, base(), [override])
    assert e.key == key
    assert text in str(e)


def test_duplicate_reward_names(tmp_path: Path) -> None:
    data = base()
    data["reward"]["sources"].append({"target": "local", "reward": "math", "weight": 0.5})
    e = error(tmp_path, data)
    assert e.key == "reward.sources.1.name" and "distinct name" in str(e)
    data["reward"]["sources"][1]["name"] = "math_lenient"
    assert [s.name for s in load_config(write(tmp_path, data)).reward.sources] == [
        "math",
        "math_lenient",
    ]


# --- overrides ----------------------------------------------------------------------


def test_overrides_parse_yaml_values_and_index_lists(tmp_path: Path) -> None:
    cfg = load_config(
        write(tmp_path, base()),
        [
            "rollout.n=4",
            "reward.sources.0.weight=0.5",
            "reward.sources.0.params.strict=false",
            r'rollout.stop=["\n\n", END]',  # YAML double quotes read escapes
            "deepspeed.zero_stage=1",
            "data.system_prompt=Answer: with a number",
            "checkpoint.resume=true",
        ],
    )
    assert cfg.rollout.n == 4
    assert cfg.reward.sources[0].weight == 0.5
    assert cfg.reward.sources[0].params == {"strict": False}
    assert cfg.rollout.stop == ["\n\n", "END"]
    assert cfg.deepspeed.zero_stage == 1
    assert cfg.data.system_prompt == "Answer: with a number"
    assert cfg.checkpoint.resume is True


def test_override_appends_a_list_entry(tmp_path: Path) -> None:
    cfg = load_config(
        write(tmp_path, base()),
        ["reward.sources.1.target=127.0.0.1:5000,127.0.0.1:5001", "reward.sources.1.reward=format"],
    )
    assert cfg.reward.sources[1].replicas == ["127.0.0.1:5000", "127.0.0.1:5001"]


@pytest.mark.parametrize(
    ("override", "key", "text"),
    [
        ("rollout.n", "--set", "expects KEY=VALUE"),
        ("=3", "--set", "expects KEY=VALUE"),
        ("reward.sources.3.weight=1", "reward.sources", "index 3 is out of range (use 1"),
        ("reward.sources.x.weight=1", "reward.sources", "index it with a number"),
        ("model.path.x=1", "model.path", "not a section or a list"),
        ("rollout.nn=8", "rollout.nn", "did you mean 'rollout.n'?"),
        ("rollout.n=eight", "rollout.n", "expected an integer"),
    ],
)
def test_bad_overrides(tmp_path: Path, override: str, key: str, text: str) -> None:
    e = error(tmp_path, base(), [override])
    assert e.key == key
    assert text in str(e)


def test_parse_value() -> None:
    assert parse_value("8") == 8
    assert parse_value("0.5") == 0.5
    assert parse_value("[a, b]") == ["a", "b"]
    assert parse_value("{a: 1}") == {"a": 1}
    assert parse_value("null") is None
    assert parse_value("Answer: 42") == "Answer: 42"
    assert parse_value("[unclosed") == "[unclosed"


# --- DeepSpeed dict -----------------------------------------------------------------


def test_deepspeed_dict_derives_batch_clip_and_precision() -> None:
    data = base() | {
        "model": {"path": "tiny:tiny", "dtype": "bf16"},
        "rollout": {"prompts_per_step": 4, "n": 8},
        "algorithm": {"mini_batches": 2},
        "optim": {"micro_batch_size": 2, "max_grad_norm": 0.5},
        "deepspeed": {
            "zero_stage": 2,
            "offload_optimizer": True,
            "extra": {"zero_optimization": {"overlap_comm": True}, "steps_per_print": 10},
        },
    }
    ds = from_dict(TrainConfig, data).deepspeed_dict(world_size=2)
    assert ds["train_batch_size"] == 16
    assert ds["train_micro_batch_size_per_gpu"] == 2
    assert ds["gradient_accumulation_steps"] == 4
    assert ds["gradient_clipping"] == 0.5
    assert ds["bf16"] == {"enabled": True}
    assert ds["zero_optimization"]["stage"] == 2
    assert ds["zero_optimization"]["offload_optimizer"]["device"] == "cpu"
    assert ds["zero_optimization"]["overlap_comm"] is True  # extra merged, nested
    assert ds["steps_per_print"] == 10


def test_dump_is_the_resolved_config() -> None:
    cfg = from_dict(TrainConfig, base() | {"algorithm": {"name": "gspo"}})
    dumped = yaml.safe_load(dump_config(cfg))
    assert dumped["algorithm"]["clip_low"] == 3e-4
    assert dumped["checkpoint"]["dir"] == "runs/run/checkpoints"
    assert dumped["optim"]["betas"] == [0.9, 0.999]
    assert from_dict(TrainConfig, dumped) == cfg


# --- reachability -------------------------------------------------------------------


@pytest.fixture
def health_server() -> Iterator[tuple[str, health.HealthServicer]]:
    """A plain gRPC server with only the health service, on a free loopback port."""
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    servicer = health.HealthServicer()
    servicer.set(REWARD_SERVICE, health_pb2.HealthCheckResponse.SERVING)
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield f"127.0.0.1:{port}", servicer
    finally:
        server.stop(grace=None)


def dead_address() -> str:
    """A loopback port nobody listens on (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{s.getsockname()[1]}"


def with_targets(*targets: str | list[str]) -> TrainConfig:
    data = base()
    data["reward"]["sources"] = [
        {"target": t, "reward": "math", "name": f"r{i}"} for i, t in enumerate(targets)
    ]
    return from_dict(TrainConfig, data)


def test_reachable_targets_pass(health_server: tuple[str, health.HealthServicer]) -> None:
    address, _ = health_server
    check_reachable(with_targets(address, "local", [address, address]))


def test_dead_target_fails_fast_naming_it(
    health_server: tuple[str, health.HealthServicer],
) -> None:
    address, _ = health_server
    dead = dead_address()
    cfg = with_targets(address, f"{address},{dead}")
    start = time.monotonic()
    with pytest.raises(ConfigError) as info:
        check_reachable(cfg, timeout_s=5.0)
    assert time.monotonic() - start < 2.0
    assert info.value.key == "reward.sources.1.target"
    assert f"{dead} is unreachable (UNAVAILABLE" in str(info.value)
    assert "reward.sources.0" not in str(info.value)


def test_target_not_serving_or_without_the_reward_service(
    health_server: tuple[str, health.HealthServicer],
) -> None:
    address, servicer = health_server
    servicer.set(REWARD_SERVICE, health_pb2.HealthCheckResponse.NOT_SERVING)
    with pytest.raises(ConfigError, match="answers NOT_SERVING"):
        check_reachable(with_targets(address))
    servicer.set(REWARD_SERVICE, health_pb2.HealthCheckResponse.SERVING)
    check_reachable(with_targets(address))


def test_every_unreachable_target_is_listed() -> None:
    a, b = dead_address(), dead_address()
    with pytest.raises(ConfigError) as info:
        check_reachable(with_targets(a, b), timeout_s=2.0)
    assert info.value.key == "reward.sources.0.target"
    assert f"reward.sources.1.target: {b} is unreachable" in str(info.value)


@pytest.mark.slow
def test_real_verifiers_service_is_reachable() -> None:
    from referee.testing import serve_process

    with serve_process(["verifiers", "--workers", "1", "--no-entrypoints"]) as server:
        check_reachable(with_targets(server.address))


@pytest.mark.parametrize(
    ("override", "key", "text"),
    [
        ("rollout.sglang.bucket_mb=0", "rollout.sglang.bucket_mb", "must be > 0"),
        ("rollout.sglang.retry_total_s=-1", "rollout.sglang.retry_total_s", "must be > 0"),
        ("rollout.sglang.health_timeout_s=0", "rollout.sglang.health_timeout_s", "must be > 0"),
        ("rollout.sglang.urls=[local, http://h:1]", "rollout.sglang.urls.0", "cannot be mixed"),
        ("rollout.sglang.urls=[h:1]", "rollout.sglang.urls.0", "needs http://"),
        (
            "rollout.sglang={urls: [local], weight_sync: nccl}",
            "rollout.sglang.weight_sync",
            "local server takes disk",
        ),
        ("rollout.sglang.weight_sync=ipc", "rollout.sglang.weight_sync", "tensor"),
        ("rollout.sglang.master_port=70000", "rollout.sglang.master_port", "0..65535"),
        ("rollout.sglang.master_address=''", "rollout.sglang.master_address", "is empty"),
        ("rollout.sglang.group_backend=mpi", "rollout.sglang.group_backend", "gloo"),
        (
            "rollout.sglang={urls: [http://a:1, http://b:1], server_ranks: [2]}",
            "rollout.sglang.server_ranks",
            "one per server",
        ),
        (
            "rollout.sglang={urls: [http://a:1], server_ranks: [0]}",
            "rollout.sglang.server_ranks.0",
            "must be >= 1",
        ),
    ],
)
def test_sglang_settings_checked(tmp_path: Path, override: str, key: str, text: str) -> None:
    e = error(tmp_path, base(), [override])
    assert e.key == key
    assert text in str(e)


def test_sglang_engine_settings_load(tmp_path: Path) -> None:
    cfg = load_config(
        write(tmp_path, base()),
        [
            "rollout.engine=sglang",
            "rollout.sglang.urls=[http://127.0.0.1:30000, http://127.0.0.1:30001]",
            "rollout.sglang.weight_sync=nccl",
            "rollout.sglang.bucket_mb=64",
        ],
    )
    assert cfg.rollout.sglang.urls[1] == "http://127.0.0.1:30001"
    assert cfg.rollout.sglang.weight_sync == "nccl" and cfg.rollout.sglang.bucket_mb == 64
    s = cfg.rollout.sglang
    assert (s.master_address, s.master_port, s.group_backend) == ("127.0.0.1", 0, "nccl")
    assert s.engine_ranks() == [1, 1]
    ranked = load_config(
        write(tmp_path, base()),
        [
            "rollout.sglang={urls: [http://h:1, http://h:2], server_ranks: [2, 4]}",
            "rollout.sglang.master_port=29600",
            "rollout.sglang.group_backend=gloo",
        ],
    )
    assert ranked.rollout.sglang.engine_ranks() == [2, 4]
    assert ranked.rollout.sglang.master_port == 29600
    local = load_config(
        write(tmp_path, base()), ["rollout.engine=sglang", "rollout.sglang.urls=[local]"]
    )
    assert local.rollout.sglang.is_local


def test_recipe_takes_nccl_and_refuses_tensor(tmp_path: Path) -> None:
    from referee.trainer.recipes.rollouts import check_sglang

    sglang = ["rollout.engine=sglang", "rollout.sglang.urls=[http://127.0.0.1:30000]"]
    check_sglang(load_config(write(tmp_path, base()), [*sglang, "rollout.sglang.weight_sync=nccl"]))
    tensor = load_config(write(tmp_path, base()), [*sglang, "rollout.sglang.weight_sync=tensor"])
    with pytest.raises(ConfigError, match="colocated on the trainer's CUDA") as info:
        check_sglang(tensor)
    assert info.value.key == "rollout.sglang.weight_sync"
    lora = [*sglang, "rollout.sglang.weight_sync=nccl", "model.lora.enabled=true"]
    with pytest.raises(ConfigError, match="disk .which merges LoRA"):
        check_sglang(load_config(write(tmp_path, base()), lora))
