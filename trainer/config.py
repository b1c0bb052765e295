"""The trainer's configuration: typed sections, loaded from YAML with `--set` overrides.

>>> cfg = load_config("examples/configs/grpo_tiny.yaml", ["rollout.n=4"])  # doctest: +SKIP
>>> cfg.rollout.n                                                          # doctest: +SKIP
4

One dataclass per concern, a docstring under every field. Each section checks itself in
`__post_init__`; `TrainConfig.__post_init__` checks what spans sections (group size
against the advantage estimator, batch divisibility) and fills the derived fields (the
per-algorithm defaults, the run and checkpoint directories, the data seed, the rollout
staleness bound) in one place, so the YAML written into a run directory is the config the
run used. Every error is a `ConfigError` whose message starts with the dotted key and
says how to fix it.

Loading is strict (`config_load.py`): unknown keys, wrong types and missing required keys
fail at once. Reachability of the reward services is a separate check,
`check_reachable`, run by the trainer at start-up (loading a config must not need the
network).

Components take plain arguments, not these objects: the recipe reads the fields and
passes them on.
"""

from __future__ import annotations

import difflib
import importlib.util
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from referee.trainer.config_load import (
    ConfigError,
    apply_overrides,
    dump_yaml,
    from_dict,
    read_yaml,
)

__all__ = [
    "AlgorithmConfig",
    "CheckpointConfig",
    "ConfigError",
    "DataConfig",
    "DeepSpeedConfig",
    "EvalConfig",
    "KLConfig",
    "LoggingConfig",
    "LoraConfig",
    "ModelConfig",
    "OptimConfig",
    "PreferenceConfig",
    "RewardConfig",
    "RewardSourceConfig",
    "RolloutConfig",
    "SglangConfig",
    "TrainConfig",
    "check_reachable",
    "dump_config",
    "load_config",
    "save_config",
]

GROUP_ALGORITHMS = frozenset({"grpo", "dr_grpo", "rloo", "gspo"})
"""Advantage estimators that compare completions of the same prompt (they need n >= 2)."""

# Per-algorithm defaults for the fields left null: (clip_low, clip_high, aggregation).
# GSPO clips a sequence-level ratio, which moves far less than a token's: its paper uses
# 3e-4 / 4e-4. Dr.GRPO's point is dropping length normalisation.
_ALGORITHM_DEFAULTS: dict[str, tuple[float, float, str]] = {
    "grpo": (0.2, 0.2, "token_mean"),
    "dr_grpo": (0.2, 0.2, "seq_mean_token_sum_norm"),
    "rloo": (0.2, 0.2, "token_mean"),
    "reinforce_pp": (0.2, 0.2, "token_mean"),
    "gspo": (3e-4, 4e-4, "sequence_mean"),
}

# DeepSpeed keys built from other sections; `deepspeed.extra` may not set them.
_DERIVED_DS_KEYS = {
    "train_batch_size": "optim.batch_size or rollout.prompts_per_step/rollout.n",
    "train_micro_batch_size_per_gpu": "optim.micro_batch_size",
    "gradient_accumulation_steps": "optim.micro_batch_size (it is derived)",
    "gradient_clipping": "optim.max_grad_norm",
    "bf16": "model.dtype",
    "fp16": "model.dtype",
}

_TARGET = re.compile(r"^(\[[0-9a-fA-F:.]+\]|[A-Za-z0-9_.-]+):(\d{1,5})$")


def _installed(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


@dataclass
class LoraConfig:
    """Low-rank adapters through `peft`; merged into the weights for export."""

    enabled: bool = False
    """Train LoRA adapters instead of every weight."""

    r: int = 16
    """Adapter rank."""

    alpha: float = 32.0
    """Scaling numerator: the update is scaled by alpha / r."""

    dropout: float = 0.0
    """Dropout on the adapter input, in [0, 1)."""

    target_modules: list[str] = field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"]
    )
    """Names of the linear modules that get adapters (Llama/Qwen attention by default)."""

    def __post_init__(self) -> None:
        if self.r < 1:
            raise ConfigError("r", f"must be >= 1, got {self.r}")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError("dropout", f"must be in [0, 1), got {self.dropout}")
        if self.enabled and not self.target_modules:
            raise ConfigError("target_modules", "is empty; name the linear modules to adapt")
        if self.enabled and not _installed("peft"):
            raise ConfigError("enabled", "LoRA needs peft: `pip install peft`, or set it false")


@dataclass
class ModelConfig:
    """The policy model (and the frozen reference copy when KL is on)."""

    path: str
    """Hugging Face model directory (as written by `save_pretrained`), or `tiny:<preset>` for
    a small model built from a config in code. Nothing is downloaded."""

    tokenizer: str | None = None
    """Tokenizer directory; null uses `path`'s (a tiny preset builds its own)."""

    dtype: Literal["fp32", "bf16"] = "fp32"
    """Weights and training precision; DeepSpeed's bf16 mode follows it."""

    gradient_checkpointing: bool = False
    """Recompute activations in the backward pass: less memory, about a third more time."""

    lora: LoraConfig = field(default_factory=LoraConfig)
    """Low-rank adapters (off by default)."""

    def __post_init__(self) -> None:
        if self.path.startswith("tiny:"):
            _check_tiny_preset("path", self.path)
        else:
            _check_model_dir("path", self.path)
        if self.tokenizer is not None:
            _check_model_dir("tokenizer", self.tokenizer, what="tokenizer")

    @property
    def is_tiny(self) -> bool:
        return self.path.startswith("tiny:")

    @property
    def tiny_preset(self) -> str | None:
        """The preset name of a `tiny:<preset>` path, else None."""
        return self.path.split(":", 1)[1] if self.is_tiny else None


def _check_tiny_preset(key: str, path: str) -> None:
    # Imported here: tiny pulls in torch and transformers, which only tiny paths need.
    from referee.trainer.tiny import PRESETS

    preset = path.split(":", 1)[1]
    if preset not in PRESETS:
        close = difflib.get_close_matches(preset, list(PRESETS), n=1)
        hint = f"did you mean tiny:{close[0]}? " if close else ""
        raise ConfigError(
            key,
            f"{path!r} is not a preset; {hint}choose one of "
            + ", ".join(f"tiny:{p}" for p in PRESETS),
        )


def _check_model_dir(key: str, path: str, what: str = "model") -> None:
    p = Path(path).expanduser()
    hint = (
        "give a Hugging Face model directory or tiny:<preset>"
        if what == "model"
        else "give the directory holding tokenizer.json / tokenizer_config.json"
    )
    if not p.exists():
        raise ConfigError(key, f"{path} does not exist; {hint} (nothing is downloaded)")
    if not p.is_dir():
        raise ConfigError(key, f"{path} is a file, not a directory; {hint}")
    if what == "model" and not (p / "config.json").exists():
        raise ConfigError(
            key, f"{path} has no config.json; give a directory written by save_pretrained"
        )


@dataclass
class DataConfig:
    """Where prompts come from and how they become model input."""

    train_path: str
    """Training prompts: a .jsonl or .parquet file (a local path; never the hub)."""

    eval_path: str | None = None
    """Held-out prompts in their own file; excludes `eval_fraction`."""

    eval_fraction: float = 0.0
    """Fraction of `train_path` held out for evaluation, chosen by a hash of each row's id
    (stable across seeds and row order)."""

    seed: int | None = None
    """Seed of the per-epoch shuffle; null uses the top-level `seed`."""

    max_prompt_tokens: int = 512
    """Prompts longer than this once rendered are dropped (and counted); 0 keeps all."""

    chat_template: bool = True
    """Render prompts with the tokenizer's chat template when it has one (with the
    generation prompt); otherwise, or when false, the raw text is the model input."""

    system_prompt: str | None = None
    """System message put before each chat prompt that has none."""

    id_field: str = "id"
    """Column with each row's id; rows without one are numbered from 0."""

    prompt_field: str = "prompt"
    """Column with the prompt: text, or a list of {role, content} messages."""

    reference_field: str = "reference"
    """Column with the reference answer handed to the reward services."""

    metadata_field: str = "metadata"
    """Column with the per-row metadata object handed to the reward services."""

    completion_field: str | None = None
    """Column with the target completion; the sft recipe needs it."""

    chosen_field: str = "chosen"
    """Column with the preferred completion of a pair (rm and dpo recipes)."""

    rejected_field: str = "rejected"
    """Column with the dispreferred completion of a pair (rm and dpo recipes)."""

    def __post_init__(self) -> None:
        for key in ("train_path", "eval_path"):
            path = getattr(self, key)
            if path is not None and not path.endswith((".jsonl", ".parquet")):
                raise ConfigError(
                    key, f"{path} is neither .jsonl nor .parquet; convert it to one of them"
                )
        if not 0.0 <= self.eval_fraction < 1.0:
            raise ConfigError("eval_fraction", f"must be in [0, 1), got {self.eval_fraction}")
        if self.eval_path is not None and self.eval_fraction > 0:
            raise ConfigError(
                "eval_fraction", "is set as well as data.eval_path; keep one of the two"
            )
        if self.max_prompt_tokens < 0:
            raise ConfigError("max_prompt_tokens", f"must be >= 0, got {self.max_prompt_tokens}")
        for key in (
            "id_field",
            "prompt_field",
            "reference_field",
            "metadata_field",
            "chosen_field",
            "rejected_field",
        ):
            if not getattr(self, key):
                raise ConfigError(key, "is empty; name the column")

    @property
    def has_eval_split(self) -> bool:
        return self.eval_path is not None or self.eval_fraction > 0


@dataclass
class SglangConfig:
    """The SGLang engine: HTTP to servers (or a router) that the trainer keeps in sync."""

    urls: list[str] = field(default_factory=list)
    """Base URLs of SGLang servers or of one router, e.g. http://127.0.0.1:30000; or
    ["local"] for a `referee serve rollout` started for the run."""

    weight_sync: Literal["disk", "nccl", "tensor"] = "disk"
    """How new weights reach the servers after each step: disk (save, then
    /update_weights_from_disk), nccl (broadcast to the servers' GPUs), tensor (CUDA IPC
    to colocated servers)."""

    weight_sync_dir: str = ""
    """For weight_sync disk: a directory every server can read at the same path; each
    synced version is saved under it. Empty: a folder in the run directory."""

    bucket_mb: float = 512.0
    """For nccl and tensor: parameters are sent in buckets of about this many MiB (and
    gathered per bucket under ZeRO-3)."""

    master_address: str = "127.0.0.1"
    """For nccl: the trainer's address as the servers reach it; the trainer is rank 0 of
    the weight-update group and hosts its rendezvous there. 127.0.0.1 only reaches
    servers on the trainer's own machine."""

    master_port: int = 0
    """For nccl: the rendezvous port of the weight-update group; 0 picks a free one."""

    group_backend: Literal["nccl", "gloo"] = "nccl"
    """For nccl: the weight-update group's torch.distributed backend; nccl between GPUs,
    gloo between CPU processes (tests and debugging)."""

    server_ranks: list[int] = field(default_factory=list)
    """For nccl: ranks each server takes in the weight-update group (its GPUs: tp size),
    one entry per URL in urls; empty: 1 per server. The urls must then name every server,
    not a router: each one joins the group."""

    health_timeout_s: float = 300.0
    """How long to wait at start for every server's /health_generate to answer."""

    retry_total_s: float = 600.0
    """How long one request keeps retrying a server that is down or answers 5xx before
    the run stops with an error (no partial batch is ever trained on)."""

    timeout_s: float = 600.0
    """Deadline for one generation request."""

    @property
    def is_local(self) -> bool:
        return self.urls == ["local"]

    def __post_init__(self) -> None:
        for i, url in enumerate(self.urls):
            if url == "local":
                if len(self.urls) > 1:
                    raise ConfigError(f"urls.{i}", '"local" cannot be mixed with URLs')
                continue
            if not url.startswith(("http://", "https://")):
                raise ConfigError(f"urls.{i}", f"{url!r} needs http:// or https://")
        for key in ("bucket_mb", "health_timeout_s", "retry_total_s", "timeout_s"):
            value = getattr(self, key)
            if not value > 0:
                raise ConfigError(key, f"must be > 0, got {value}")
        if self.is_local and self.weight_sync != "disk":
            raise ConfigError(
                "weight_sync", f"{self.weight_sync} needs GPU servers; a local server takes disk"
            )
        if not self.master_address:
            raise ConfigError("master_address", "is empty; give the trainer's address")
        if not 0 <= self.master_port <= 65535:
            raise ConfigError(
                "master_port", f"must be in 0..65535 (0: a free one), got {self.master_port}"
            )
        for i, ranks in enumerate(self.server_ranks):
            if ranks < 1:
                raise ConfigError(
                    f"server_ranks.{i}", f"must be >= 1 (the server's GPUs), got {ranks}"
                )
        if self.server_ranks and len(self.server_ranks) != len(self.urls):
            raise ConfigError(
                "server_ranks",
                f"has {len(self.server_ranks)} entries for {len(self.urls)} urls; give one "
                "per server, or leave it empty for 1 rank each",
            )

    def engine_ranks(self) -> list[int]:
        """Ranks of each server in the nccl weight-update group (`server_ranks`, or 1 each)."""
        return list(self.server_ranks) or [1] * len(self.urls)


@dataclass
class RolloutConfig:
    """Sampling completions from the policy."""

    engine: Literal["hf", "sglang"] = "hf"
    """hf: in-process transformers generation (the CPU default); sglang: SGLang servers."""

    n: int = 8
    """Completions sampled per prompt (the group size)."""

    prompts_per_step: int = 16
    """Prompts per rollout batch; a step trains on prompts_per_step * n completions."""

    temperature: float = 1.0
    """Sampling temperature; must be > 0 (greedy decoding is for eval: eval.greedy)."""

    top_p: float = 1.0
    """Nucleus sampling mass, in (0, 1]; 1 disables."""

    top_k: int = -1
    """Sample among the k likeliest tokens; -1 disables."""

    max_new_tokens: int = 256
    """Longest completion; one cut here has finish reason `length`."""

    stop: list[str] = field(default_factory=list)
    """Strings that end a completion (kept out of the returned text)."""

    sglang: SglangConfig = field(default_factory=SglangConfig)
    """Settings of the sglang engine."""

    off_policy_steps: int = 0
    """0: synchronous, every batch is generated by the weights it trains. 1: one-step
    off-policy (verl's one_step_off_policy): batch k+1 is generated and scored while batch
    k trains, so each batch after the first was sampled by weights one rollout step
    (algorithm.ppo_epochs x mini_batches optimiser steps) behind the trainer. Needs
    engine sglang: the hf engine generates with the trainer's own module. pi_old is the
    trainer's forward pass before the update; algorithm.tis_cap corrects for the older
    rollout policy (recommended with 1)."""

    max_staleness: int | None = None
    """Most optimiser steps a sample's weight_version may lag the trainer's step when it
    trains; a batch with an older sample stops the run (StaleRolloutError) before
    anything trains on it. Null: what off_policy_steps produces (off_policy_steps x
    algorithm.ppo_epochs x algorithm.mini_batches; 0 when synchronous)."""

    def __post_init__(self) -> None:
        if self.off_policy_steps not in (0, 1):
            raise ConfigError(
                "off_policy_steps",
                f"is {self.off_policy_steps}; 0 (synchronous) and 1 (one-step "
                "off-policy) are implemented",
            )
        if self.off_policy_steps and self.engine == "hf":
            raise ConfigError(
                "off_policy_steps",
                "is 1 but engine is hf, which generates with the trainer's own module in "
                "this process and cannot run while it trains; set rollout.engine=sglang "
                '(sglang.urls: ["local"] starts a rollout server) or off_policy_steps=0',
            )
        if self.max_staleness is not None and self.max_staleness < 0:
            raise ConfigError("max_staleness", f"must be >= 0 or null, got {self.max_staleness}")
        if self.n < 1:
            raise ConfigError("n", f"must be >= 1, got {self.n}")
        if self.prompts_per_step < 1:
            raise ConfigError("prompts_per_step", f"must be >= 1, got {self.prompts_per_step}")
        if not self.temperature > 0:
            raise ConfigError(
                "temperature",
                f"must be > 0, got {self.temperature}; rollouts must explore "
                "(use eval.greedy for greedy decoding)",
            )
        if not 0 < self.top_p <= 1:
            raise ConfigError("top_p", f"must be in (0, 1], got {self.top_p}")
        if self.top_k == 0 or self.top_k < -1:
            raise ConfigError("top_k", f"must be >= 1, or -1 to disable, got {self.top_k}")
        if self.max_new_tokens < 1:
            raise ConfigError("max_new_tokens", f"must be >= 1, got {self.max_new_tokens}")
        for i, s in enumerate(self.stop):
            if not s:
                raise ConfigError(f"stop.{i}", "is empty; an empty stop string ends at once")
        if self.engine == "sglang" and not self.sglang.urls:
            raise ConfigError(
                "sglang.urls",
                'is empty; the sglang engine needs server URLs (or ["local"] to start one)',
            )

    @property
    def batch_completions(self) -> int:
        """Completions per rollout batch."""
        return self.prompts_per_step * self.n


@dataclass
class RewardSourceConfig:
    """One reward: which service computes it, with which params, and its weight."""

    target: str | list[str]
    """Where the service listens: `host:port`; replicas as a list or comma-separated; or
    `local`, which starts `referee serve <service>` on loopback for the run."""

    reward: str
    """The reward's name on the service (`referee list` shows them)."""

    service: Literal["verifiers"] = "verifiers"
    """The service to start for target "local"."""

    name: str = ""
    """Name in logs and in eval.reward; empty means `reward`. Unique among sources."""

    params: dict[str, Any] = field(default_factory=dict)
    """Reward params, sent with every call."""

    weight: float = 1.0
    """The training reward is the weighted sum of every source's score."""

    timeout_s: float = 60.0
    """Deadline for scoring one group, retries included."""

    local_args: list[str] = field(default_factory=list)
    """Extra arguments for the local service, e.g. ["--workers", "2", "--load", "m:fn"]."""

    token_env: str | None = None
    """Environment variable holding the bearer token (a token never goes in the YAML)."""

    tls_ca: str | None = None
    """PEM file of the CA to trust; enables TLS."""

    def __post_init__(self) -> None:
        if not self.reward:
            raise ConfigError("reward", "is empty; name the reward (`referee list` shows them)")
        if not self.name:
            self.name = self.reward
        replicas = self.replicas
        if not replicas and not self.is_local:
            raise ConfigError("target", 'is empty; give "host:port", a list of them, or "local"')
        if self.is_local and self.tls_ca is not None:
            raise ConfigError("tls_ca", "applies to remote targets; a local service is plaintext")
        for addr in replicas:
            if addr == "local":
                raise ConfigError("target", '"local" cannot be mixed with addresses')
            if not (_TARGET.match(addr) or addr.startswith("unix:")):
                raise ConfigError(
                    "target", f'{addr!r} is not host:port (e.g. 127.0.0.1:50051) or "local"'
                )
        if self.local_args and not self.is_local:
            raise ConfigError("local_args", 'only applies with target: "local"')
        if not math.isfinite(self.weight):
            raise ConfigError("weight", f"must be finite, got {self.weight}")
        if self.timeout_s <= 0:
            raise ConfigError("timeout_s", f"must be > 0, got {self.timeout_s}")
        if self.tls_ca is not None and not Path(self.tls_ca).is_file():
            raise ConfigError("tls_ca", f"{self.tls_ca} is not a file; give the CA's PEM file")

    @property
    def is_local(self) -> bool:
        return self.target == "local" or self.target == ["local"]

    @property
    def replicas(self) -> list[str]:
        """The addresses to call; empty for a local target (known once it has started)."""
        if self.is_local:
            return []
        parts = self.target.split(",") if isinstance(self.target, str) else self.target
        return [p.strip() for p in parts if p.strip()]


@dataclass
class RewardConfig:
    """Reward sources and what happens to samples whose score failed."""

    sources: list[RewardSourceConfig] = field(default_factory=list)
    """The rewards summed (by weight) into the training reward."""

    mask: Literal["sample", "group"] = "sample"
    """A sample with any non-OK score is left out of the loss; "group" leaves out its whole
    group (its advantage baseline would be computed without it)."""

    def __post_init__(self) -> None:
        seen: dict[str, int] = {}
        for i, src in enumerate(self.sources):
            if src.name in seen:
                raise ConfigError(
                    f"sources.{i}.name",
                    f"{src.name!r} is also sources.{seen[src.name]}'s "
                    "name; give each source a distinct name",
                )
            seen[src.name] = i


@dataclass
class KLConfig:
    """A penalty on drifting from the frozen reference model. Off by default."""

    coef: float = 0.0
    """Weight of the penalty; 0 turns it off (and no reference model is kept)."""

    estimator: Literal["k1", "k2", "k3"] = "k3"
    """Per-token estimator of KL(policy || reference): k1 = log ratio, k2 = half its square,
    k3 = exp(-x) - 1 + x (unbiased, non-negative)."""

    placement: Literal["loss", "reward"] = "loss"
    """Add the penalty to the loss, or subtract it from the reward before advantages."""

    def __post_init__(self) -> None:
        if not self.coef >= 0:
            raise ConfigError("coef", f"must be >= 0, got {self.coef}")


@dataclass
class AlgorithmConfig:
    """Advantage estimator and policy loss. Null fields take the algorithm's defaults."""

    name: Literal["grpo", "dr_grpo", "rloo", "reinforce_pp", "gspo"] = "grpo"
    """Advantage estimator and loss family."""

    clip_low: float | None = None
    """PPO ratio clip below 1 (ratio >= 1 - clip_low); null: 0.2, or 3e-4 for gspo."""

    clip_high: float | None = None
    """PPO ratio clip above 1 (ratio <= 1 + clip_high); DAPO's clip-higher sets it above
    clip_low (0.28). Null: 0.2, or 4e-4 for gspo."""

    aggregation: Literal["token_mean", "sequence_mean", "seq_mean_token_sum_norm"] | None = None
    """How token losses become one number: mean over all tokens of the batch; mean over
    sequences of each sequence's token mean; or mean over sequences of token sums divided
    by a constant (rollout.max_new_tokens). Null: seq_mean_token_sum_norm for dr_grpo,
    sequence_mean for gspo, token_mean otherwise."""

    kl: KLConfig = field(default_factory=KLConfig)
    """KL penalty to the reference model."""

    entropy_coef: float = 0.0
    """Weight of the entropy bonus (entropy is logged either way)."""

    dynamic_sampling: bool = False
    """DAPO: drop groups whose rewards are all equal (no signal) and refill the batch."""

    max_refill_rounds: int = 3
    """Extra rollout rounds dynamic sampling may spend filling one batch."""

    overlong_filter: bool = False
    """Leave completions cut at max_new_tokens out of the loss."""

    ppo_epochs: int = 1
    """Passes over each rollout batch."""

    mini_batches: int = 1
    """Optimiser steps per pass; each uses the old-policy log-probs for its ratio."""

    tis_cap: float | None = None
    """Truncated importance sampling against the rollout engine's mismatch: each token's
    loss is weighted by min(pi_trainer / pi_rollout, tis_cap), pi_trainer from the
    trainer's own forward pass of the sampling weights (e.g. 2.0). Null: off."""

    def __post_init__(self) -> None:
        low, high, aggregation = _ALGORITHM_DEFAULTS[self.name]
        self.clip_low = low if self.clip_low is None else self.clip_low
        self.clip_high = high if self.clip_high is None else self.clip_high
        self.aggregation = aggregation if self.aggregation is None else self.aggregation
        if not 0 < self.clip_low < 1:
            raise ConfigError("clip_low", f"must be in (0, 1), got {self.clip_low}")
        if self.clip_high < self.clip_low:
            raise ConfigError(
                "clip_high",
                f"{self.clip_high} is below clip_low {self.clip_low}; clip-higher "
                "only widens the upper bound: set clip_high >= clip_low (DAPO: 0.28 with 0.2)",
            )
        if self.entropy_coef < 0:
            raise ConfigError("entropy_coef", f"must be >= 0 (a bonus), got {self.entropy_coef}")
        if self.max_refill_rounds < 0:
            raise ConfigError("max_refill_rounds", f"must be >= 0, got {self.max_refill_rounds}")
        if self.ppo_epochs < 1:
            raise ConfigError("ppo_epochs", f"must be >= 1, got {self.ppo_epochs}")
        if self.mini_batches < 1:
            raise ConfigError("mini_batches", f"must be >= 1, got {self.mini_batches}")
        if self.tis_cap is not None and not self.tis_cap >= 1:
            raise ConfigError(
                "tis_cap",
                f"must be >= 1 (it caps the ratio pi_trainer / pi_rollout; 2.0 is usual), "
                f"got {self.tis_cap}; null turns the correction off",
            )

    @property
    def group_based(self) -> bool:
        """Whether advantages compare completions of the same prompt."""
        return self.name in GROUP_ALGORITHMS


@dataclass
class OptimConfig:
    """The optimiser (AdamW), its schedule and the batch it steps on."""

    lr: float = 1e-6
    """Peak learning rate."""

    betas: tuple[float, float] = (0.9, 0.999)
    """AdamW betas."""

    weight_decay: float = 0.0
    """AdamW decoupled weight decay."""

    warmup_steps: int = 0
    """Linear warm-up from 0 to lr over this many optimiser steps."""

    scheduler: Literal["constant", "linear", "cosine"] = "constant"
    """Learning rate after warm-up: constant, or decaying to 0 at the last step."""

    max_grad_norm: float = 1.0
    """Clip the global gradient norm to this; 0 disables."""

    steps: int = 100
    """Training steps: rollout batches for RL recipes, optimiser steps for sft, rm and dpo."""

    micro_batch_size: int = 4
    """Sequences (pairs for rm and dpo) per forward/backward on each process; gradient
    accumulation is derived from it (optimiser batch / (micro_batch_size * processes))."""

    batch_size: int | None = None
    """Sequences per optimiser step for sft, pairs for rm and dpo. RL recipes derive it:
    rollout.prompts_per_step * rollout.n / algorithm.mini_batches."""

    def __post_init__(self) -> None:
        if not self.lr > 0:
            raise ConfigError("lr", f"must be > 0, got {self.lr}")
        for i, b in enumerate(self.betas):
            if not 0 <= b < 1:
                raise ConfigError(f"betas.{i}", f"must be in [0, 1), got {b}")
        if self.weight_decay < 0:
            raise ConfigError("weight_decay", f"must be >= 0, got {self.weight_decay}")
        if self.steps < 1:
            raise ConfigError("steps", f"must be >= 1, got {self.steps}")
        if not 0 <= self.warmup_steps:
            raise ConfigError("warmup_steps", f"must be >= 0, got {self.warmup_steps}")
        if self.max_grad_norm < 0:
            raise ConfigError(
                "max_grad_norm", f"must be >= 0 (0 disables), got {self.max_grad_norm}"
            )
        if self.micro_batch_size < 1:
            raise ConfigError("micro_batch_size", f"must be >= 1, got {self.micro_batch_size}")
        if self.batch_size is not None and self.batch_size < 1:
            raise ConfigError("batch_size", f"must be >= 1, got {self.batch_size}")


@dataclass
class PreferenceConfig:
    """Training on chosen/rejected pairs: the rm (Bradley-Terry) and dpo recipes."""

    margin: float = 0.0
    """rm: the Bradley-Terry loss is -log sigmoid(r_chosen - r_rejected - margin); a
    positive margin keeps pushing pairs until their scores are that far apart."""

    beta: float = 0.1
    """dpo: strength of the tie to the reference model; the implicit reward of a
    completion is beta * (log pi - log pi_ref). Smaller lets the policy drift further."""

    loss_type: Literal["sigmoid", "ipo"] = "sigmoid"
    """dpo: sigmoid is DPO's -log sigmoid(beta * h); ipo regresses h to 1 / (2 beta)."""

    label_smoothing: float = 0.0
    """dpo (sigmoid): the assumed probability that a pair's label is flipped
    (conservative DPO), in [0, 0.5); 0 is plain DPO."""

    precompute_reference: bool = False
    """dpo: compute the reference log-probabilities of every pair once, before training,
    instead of keeping a frozen copy of the model (saves its memory; costs one pass over
    the data at start)."""

    def __post_init__(self) -> None:
        if not math.isfinite(self.margin) or self.margin < 0:
            raise ConfigError("margin", f"must be >= 0, got {self.margin}")
        if not self.beta > 0:
            raise ConfigError("beta", f"must be > 0 (0.1 is usual), got {self.beta}")
        if not 0.0 <= self.label_smoothing < 0.5:
            raise ConfigError(
                "label_smoothing", f"must be in [0, 0.5) (0: plain DPO), got {self.label_smoothing}"
            )
        if self.loss_type == "ipo" and self.label_smoothing:
            raise ConfigError(
                "label_smoothing",
                "applies to the sigmoid loss; IPO has none: set it to 0 or loss_type=sigmoid",
            )


@dataclass
class DeepSpeedConfig:
    """DeepSpeed ZeRO. Batch sizes, clipping and precision come from optim and model."""

    enabled: bool = True
    """Train through deepspeed.initialize; false uses plain torch (for debugging)."""

    zero_stage: int = 2
    """ZeRO stage: 0 plain data parallel, 1 shards optimiser state, 2 also gradients,
    3 also parameters."""

    offload_optimizer: bool = False
    """Keep optimiser state (and its step) in CPU memory; needs zero_stage >= 1."""

    extra: dict[str, Any] = field(default_factory=dict)
    """Merged last into the generated DeepSpeed config (nested keys merge), for settings
    this section does not name."""

    def __post_init__(self) -> None:
        if self.zero_stage not in (0, 1, 2, 3):
            raise ConfigError("zero_stage", f"must be 0, 1, 2 or 3, got {self.zero_stage}")
        if self.offload_optimizer and self.zero_stage == 0:
            raise ConfigError("offload_optimizer", "needs zero_stage 1, 2 or 3 (it is 0)")
        for key, source in _DERIVED_DS_KEYS.items():
            if key in self.extra:
                raise ConfigError(f"extra.{key}", f"is derived; set {source} instead")
        if self.enabled and not _installed("deepspeed"):
            raise ConfigError(
                "enabled",
                "deepspeed is not installed: `pip install --no-build-isolation "
                "deepspeed`, or set deepspeed.enabled=false for the plain-torch path",
            )

    def to_dict(
        self,
        *,
        micro_batch_size: int,
        grad_accum_steps: int,
        world_size: int,
        max_grad_norm: float,
        bf16: bool,
    ) -> dict[str, Any]:
        """The config dict for `deepspeed.initialize` (the optimiser is passed separately)."""
        zero: dict[str, Any] = {"stage": self.zero_stage}
        if self.offload_optimizer:
            zero["offload_optimizer"] = {"device": "cpu", "pin_memory": False}
        ds: dict[str, Any] = {
            "train_batch_size": micro_batch_size * grad_accum_steps * world_size,
            "train_micro_batch_size_per_gpu": micro_batch_size,
            "gradient_accumulation_steps": grad_accum_steps,
            "gradient_clipping": max_grad_norm,
            "bf16": {"enabled": bf16},
            "zero_optimization": zero,
            # The recipe's torch AdamW steps on the CPU copy; set true in `extra` to
            # insist on DeepSpeedCPUAdam (a compiled op).
            "zero_force_ds_cpu_optimizer": False,
            "steps_per_print": 2**31 - 1,
            "wall_clock_breakdown": False,
        }
        return _merge(ds, self.extra)


def _merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in extra.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


@dataclass
class CheckpointConfig:
    """Saving and resuming."""

    dir: str | None = None
    """Where checkpoints go; null: <run_dir>/checkpoints."""

    every_steps: int = 50
    """Save every this many steps (and at the end); 0 saves only at the end."""

    keep_last: int = 2
    """Checkpoints kept (older ones are deleted); 0 keeps all."""

    resume: bool = False
    """Continue from the latest checkpoint in `dir` (model, optimiser, RNG, data position)."""

    export_final: bool = True
    """Write the final model as a plain Hugging Face directory (<run_dir>/final)."""

    def __post_init__(self) -> None:
        if self.every_steps < 0:
            raise ConfigError("every_steps", f"must be >= 0, got {self.every_steps}")
        if self.keep_last < 0:
            raise ConfigError("keep_last", f"must be >= 0 (0 keeps all), got {self.keep_last}")


@dataclass
class LoggingConfig:
    """The run directory and where metrics go."""

    run_dir: str | None = None
    """Directory of this run (metrics.jsonl, summary.json, config.yaml, plot); null:
    runs/<name>."""

    every_steps: int = 1
    """Write metrics every this many steps."""

    tensorboard: bool = True
    """Also write TensorBoard event files under <run_dir>/tb."""

    wandb: bool = False
    """Also log to Weights & Biases (needs the wandb package)."""

    wandb_project: str = "referee"
    """W&B project name."""

    progress_bar: bool = True
    """Show a live progress bar (step, reward, KL, throughput)."""

    def __post_init__(self) -> None:
        if self.every_steps < 1:
            raise ConfigError("every_steps", f"must be >= 1, got {self.every_steps}")
        if self.wandb and not _installed("wandb"):
            raise ConfigError(
                "wandb", "the wandb package is not installed; install it or set false"
            )


@dataclass
class EvalConfig:
    """Held-out evaluation through the same reward services."""

    enabled: bool = True
    """Evaluate before training, every `every_steps`, and after training."""

    every_steps: int = 0
    """Evaluate every this many steps; 0: only before and after."""

    num_samples: int = 0
    """Eval prompts used (the first of the split); 0 uses all."""

    k: int = 1
    """Completions per eval prompt; pass@k counts a prompt solved when any is correct."""

    greedy: bool = True
    """Greedy decoding (needs k = 1); otherwise rollout's sampling settings."""

    reward: str | None = None
    """Name of the reward source that decides correctness; null: the first source."""

    correct_threshold: float = 1.0
    """A completion is correct when that reward's score is >= this."""

    def __post_init__(self) -> None:
        if self.every_steps < 0:
            raise ConfigError("every_steps", f"must be >= 0, got {self.every_steps}")
        if self.num_samples < 0:
            raise ConfigError("num_samples", f"must be >= 0 (0: all), got {self.num_samples}")
        if self.k < 1:
            raise ConfigError("k", f"must be >= 1, got {self.k}")
        if self.greedy and self.k > 1:
            raise ConfigError(
                "k",
                f"is {self.k} with greedy decoding, which gives the same completion "
                "every time; set eval.greedy=false or eval.k=1",
            )


@dataclass
class TrainConfig:
    """A training run: the recipe and every section it reads."""

    recipe: Literal["grpo", "sft", "rm", "dpo"]
    """grpo: the GRPO-family RL loop (estimator and loss from `algorithm`); sft: supervised
    fine-tuning on the data's completions (loss on completion tokens only); rm: a
    Bradley-Terry reward model on chosen/rejected pairs; dpo: direct preference
    optimisation of the policy on those pairs (settings of both in `preference`)."""

    model: ModelConfig
    """The policy model."""

    data: DataConfig
    """Prompts and their rendering."""

    name: str = "run"
    """Run name; the default run directory is runs/<name>."""

    seed: int = 0
    """Seed for initialisation, sampling and (unless data.seed is set) data order."""

    torch_threads: int = 0
    """torch intra-op threads; 0: 1 on CPU (tiny matmuls run fastest single-threaded,
    next to the reward workers), torch's default on CUDA."""

    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    """Sampling completions (also used by eval)."""

    reward: RewardConfig = field(default_factory=RewardConfig)
    """Reward sources."""

    algorithm: AlgorithmConfig = field(default_factory=AlgorithmConfig)
    """Advantage estimator and policy loss (grpo recipe)."""

    preference: PreferenceConfig = field(default_factory=PreferenceConfig)
    """Pairwise losses (rm and dpo recipes)."""

    optim: OptimConfig = field(default_factory=OptimConfig)
    """Optimiser, schedule and batch."""

    deepspeed: DeepSpeedConfig = field(default_factory=DeepSpeedConfig)
    """DeepSpeed ZeRO."""

    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    """Checkpoints and resume."""

    logging: LoggingConfig = field(default_factory=LoggingConfig)
    """Run directory and metrics."""

    eval: EvalConfig = field(default_factory=EvalConfig)
    """Held-out evaluation."""

    def __post_init__(self) -> None:
        if not re.fullmatch(r"[A-Za-z0-9_.-]+", self.name):
            raise ConfigError("name", f"{self.name!r} must be letters, digits, '_', '.', '-'")
        if self.torch_threads < 0:
            raise ConfigError(
                "torch_threads", f"must be >= 0 (0: automatic), got {self.torch_threads}"
            )
        # Derived fields, all here.
        if self.data.seed is None:
            self.data.seed = self.seed
        if self.logging.run_dir is None:
            self.logging.run_dir = f"runs/{self.name}"
        if self.checkpoint.dir is None:
            self.checkpoint.dir = f"{self.logging.run_dir}/checkpoints"
        if self.rollout.max_staleness is None:
            self.rollout.max_staleness = self.rollout.off_policy_steps * self.steps_per_batch
        if self.recipe == "grpo":
            self._check_rl()
        elif self.recipe == "sft":
            self._check_sft()
        else:
            self._check_pairs()
        self._check_eval()

    def _check_rl(self) -> None:
        if not self.reward.sources:
            raise ConfigError(
                "reward.sources",
                "is empty; the grpo recipe needs at least one, e.g. "
                "[{target: local, reward: math}]",
            )
        algo, n = self.algorithm, self.rollout.n
        if algo.group_based and n < 2:
            raise ConfigError(
                "rollout.n",
                f"is {n}, but {algo.name} compares completions of the same prompt; "
                "set rollout.n >= 2, or algorithm.name=reinforce_pp (batch-normalised)",
            )
        if algo.dynamic_sampling and n < 2:
            raise ConfigError(
                "algorithm.dynamic_sampling",
                "drops groups whose rewards are all equal, which "
                "every group of one is; set rollout.n >= 2 or turn it off",
            )
        if self.optim.batch_size is not None:
            raise ConfigError(
                "optim.batch_size",
                "is for sft; the grpo recipe steps on rollout.prompts_per_step "
                "* rollout.n / algorithm.mini_batches sequences: remove it",
            )
        total = self.rollout.batch_completions
        if total % algo.mini_batches:
            raise ConfigError(
                "algorithm.mini_batches",
                f"{algo.mini_batches} does not divide the {total} "
                f"completions of a rollout batch (rollout.prompts_per_step "
                f"{self.rollout.prompts_per_step} x rollout.n {n}); try {_divisors(total)}",
            )
        lag = self.rollout.off_policy_steps * self.steps_per_batch
        if self.rollout.max_staleness is not None and self.rollout.max_staleness < lag:
            raise ConfigError(
                "rollout.max_staleness",
                f"is {self.rollout.max_staleness}, but with rollout.off_policy_steps "
                f"{self.rollout.off_policy_steps} every batch after the first lags {lag} "
                f"optimiser steps (algorithm.ppo_epochs x mini_batches) and would be "
                f"refused; set it >= {lag} or null",
            )
        self.grad_accum_steps(world_size=1)

    def _check_sft(self) -> None:
        if self.data.completion_field is None:
            raise ConfigError(
                "data.completion_field",
                "is null; sft trains on target completions: name the "
                "column holding them (e.g. completion)",
            )
        if self.optim.batch_size is None:
            raise ConfigError("optim.batch_size", "is null; sft needs sequences per optimiser step")
        self.grad_accum_steps(world_size=1)

    def _check_pairs(self) -> None:
        if self.optim.batch_size is None:
            raise ConfigError(
                "optim.batch_size", f"is null; {self.recipe} needs pairs per optimiser step"
            )
        if self.data.chosen_field == self.data.rejected_field:
            raise ConfigError(
                "data.rejected_field",
                f"is {self.data.rejected_field!r}, the same column as data.chosen_field; "
                "name the column holding the dispreferred completion",
            )
        if self.model.lora.enabled and self.recipe == "rm":
            raise ConfigError(
                "model.lora.enabled",
                "is not supported by the rm recipe (its score head must train in full); "
                "set it false",
            )
        self.grad_accum_steps(world_size=1)

    def _check_eval(self) -> None:
        if not self.eval.enabled:
            return
        if not self.data.has_eval_split:
            raise ConfigError(
                "eval.enabled",
                "is true but there is no held-out data: set data.eval_fraction "
                "(e.g. 0.1) or data.eval_path, or eval.enabled=false",
            )
        if self.is_pairwise:
            return  # held-out pairwise accuracy needs no reward service
        names = [s.name for s in self.reward.sources]
        if not names:
            raise ConfigError(
                "eval.enabled",
                "is true but reward.sources is empty; eval scores completions "
                "through the reward services: add a source or set eval.enabled=false",
            )
        if self.eval.reward is not None and self.eval.reward not in names:
            raise ConfigError(
                "eval.reward",
                f"{self.eval.reward!r} is not a reward source; choose one of {', '.join(names)}",
            )

    @property
    def is_pairwise(self) -> bool:
        """Whether the recipe trains on chosen/rejected pairs (rm, dpo)."""
        return self.recipe in ("rm", "dpo")

    @property
    def steps_per_batch(self) -> int:
        """Optimiser steps per rollout batch (grpo): ppo_epochs x mini_batches."""
        return self.algorithm.ppo_epochs * self.algorithm.mini_batches

    @property
    def optimizer_batch_size(self) -> int:
        """Sequences (pairs for rm and dpo) per optimiser step, across all processes."""
        if self.recipe != "grpo":
            assert self.optim.batch_size is not None
            return self.optim.batch_size
        return self.rollout.batch_completions // self.algorithm.mini_batches

    def grad_accum_steps(self, world_size: int) -> int:
        """Micro-batches accumulated per optimiser step on each of `world_size` processes."""
        batch, micro = self.optimizer_batch_size, self.optim.micro_batch_size
        if batch % (micro * world_size):
            source = (
                "optim.batch_size"
                if self.recipe != "grpo"
                else f"rollout.prompts_per_step {self.rollout.prompts_per_step} x rollout.n "
                f"{self.rollout.n} / algorithm.mini_batches {self.algorithm.mini_batches}"
            )
            per = f" x {world_size} processes" if world_size > 1 else ""
            fits = [d for d in _divisor_list(batch) if batch % (d * world_size) == 0]
            raise ConfigError(
                "optim.micro_batch_size",
                f"{micro}{per} does not divide the {batch} sequences "
                f"of an optimiser step ({source}); pick one of {fits or 'none: change the batch'}",
            )
        return batch // (micro * world_size)

    def deepspeed_dict(self, world_size: int) -> dict[str, Any]:
        """The DeepSpeed config for this run on `world_size` processes."""
        return self.deepspeed.to_dict(
            micro_batch_size=self.optim.micro_batch_size,
            grad_accum_steps=self.grad_accum_steps(world_size),
            world_size=world_size,
            max_grad_norm=self.optim.max_grad_norm,
            bf16=self.model.dtype == "bf16",
        )

    @property
    def eval_reward(self) -> str | None:
        """The reward source name that decides eval correctness."""
        if self.eval.reward is not None:
            return self.eval.reward
        return self.reward.sources[0].name if self.reward.sources else None


def _divisor_list(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


def _divisors(n: int) -> str:
    return ", ".join(map(str, _divisor_list(n)))


# --- loading, saving, checking ------------------------------------------------------


def load_config(path: str | Path, overrides: list[str] | None = None) -> TrainConfig:
    """Reads a YAML config, applies ``a.b=c`` overrides, and checks everything.

    Raises `ConfigError` naming the dotted key (and how to fix it) on the first problem.
    """
    data = apply_overrides(read_yaml(path), list(overrides or []))
    return from_dict(TrainConfig, data)


def dump_config(cfg: TrainConfig) -> str:
    """The resolved config as YAML (derived fields filled in); `load_config` reads it back."""
    return dump_yaml(cfg)


def save_config(cfg: TrainConfig, path: str | Path) -> Path:
    """Writes `dump_config(cfg)` to `path` (the run directory's config.yaml)."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(dump_config(cfg))
    return p


def check_reachable(cfg: TrainConfig, timeout_s: float = 3.0) -> None:
    """Asks every replica of every non-local reward source whether it serves rewards.

    Each replica's gRPC health service is asked about `referee.v1.RewardService`, all at
    once, with `timeout_s` each. Raises `ConfigError` naming the source key and every
    unreachable replica; returns None when all answer SERVING. Run at trainer start-up,
    after the local services have started.
    """
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    from referee.v1 import reward_pb2

    service = reward_pb2.DESCRIPTOR.services_by_name["RewardService"].full_name
    probes = []
    for i, src in enumerate(cfg.reward.sources):
        for addr in src.replicas:
            if src.tls_ca is not None:
                creds = grpc.ssl_channel_credentials(Path(src.tls_ca).read_bytes())
                channel = grpc.secure_channel(addr, creds)
            else:
                channel = grpc.insecure_channel(addr)
            call = health_pb2_grpc.HealthStub(channel).Check.future(
                health_pb2.HealthCheckRequest(service=service), timeout=timeout_s
            )
            probes.append((f"reward.sources.{i}.target", addr, channel, call))
    problems: list[tuple[str, str]] = []
    for key, addr, channel, call in probes:
        try:
            resp = call.result()
        except grpc.RpcError as e:
            code = e.code()
            if code == grpc.StatusCode.NOT_FOUND:
                why = f"{addr} answers but does not serve {service} (is it another service?)"
            elif code == grpc.StatusCode.UNIMPLEMENTED:
                why = f"{addr} has no gRPC health service; is it a referee service?"
            else:
                why = f"{addr} is unreachable ({code.name}: {e.details()})"
            problems.append((key, why))
        else:
            if resp.status != health_pb2.HealthCheckResponse.SERVING:
                status = health_pb2.HealthCheckResponse.ServingStatus.Name(resp.status)
                problems.append((key, f"{addr} answers {status} (shutting down or not ready)"))
        finally:
            channel.close()
    if problems:
        lines = [f"{k}: {why}" for k, why in problems]
        raise ConfigError(
            problems[0][0],
            problems[0][1]
            + "".join(f"\n{line}" for line in lines[1:])
            + "\nStart `referee serve verifiers` there, fix the address, or use target: local",
        )
