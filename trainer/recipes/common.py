"""What every recipe sets up the same way: threads, model, engine, rewards, eval, checkpoints.

Functions, not a base class: a recipe calls the ones it needs and keeps its own loop.
Everything here takes the config sections it reads and returns plain objects.

CPU threads: torch's default (one thread per core) is the wrong choice for the tiny
models this project trains on a laptop. Their matmuls are too small to split, and with
the reward service's worker on the other core the threads contend: measured on the
quickstart model, one thread was ~100x faster than two under that load. So on CPU the
recipes run with `torch.set_num_threads(1)` unless `torch_threads` says otherwise (a
bigger model on a many-core machine wants more). On CUDA torch's default is left alone.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from referee.trainer import checkpoint, distributed
from referee.trainer.config import TrainConfig, check_reachable, dump_config
from referee.trainer.config_load import ConfigError
from referee.trainer.data import PromptRow, drop_long_prompts, load_splits, render_prompt
from referee.trainer.engine import TrainEngine, apply_lora, create_engine
from referee.trainer.evaluate import eval_metrics
from referee.trainer.observe import RunLog
from referee.trainer.rollout.base import RolloutEngine, SamplingParams

__all__ = [
    "Splits",
    "build_engine",
    "encode_prompts",
    "evaluate",
    "load_data",
    "load_model_and_tokenizer",
    "make_run_log",
    "maybe_resume",
    "reward_scorer",
    "sampling_params",
    "set_threads",
    "step_seed",
]


def set_threads(threads: int | None) -> int:
    """Sets torch's intra-op threads: `threads` when given, else 1 on CPU (see the module
    docstring); CUDA runs keep torch's default. Also points DeepSpeed at the CPU
    accelerator when there is no GPU. Returns the thread count in use."""
    if not torch.cuda.is_available():
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
        torch.set_num_threads(threads or 1)
    elif threads:
        torch.set_num_threads(threads)
    return torch.get_num_threads()


def step_seed(seed: int, step: int, purpose: str) -> int:
    """A seed for one purpose at one step, independent of anything consumed before it, so a
    resumed run draws exactly what the uninterrupted one drew."""
    h = 1469598103934665603
    for part in (str(seed), str(step), purpose):
        for byte in part.encode() + b"\0":
            h = ((h ^ byte) * 1099511628211) % 2**64
    return h % 2**62


# --- model ---------------------------------------------------------------------------


def load_model_and_tokenizer(cfg: TrainConfig) -> tuple[torch.nn.Module, Any]:
    """The policy and its tokenizer: `tiny:<preset>` builds both (seeded by `cfg.seed`),
    otherwise they load from `model.path` (and `model.tokenizer`). Nothing is downloaded.
    LoRA adapters are applied when `model.lora.enabled`."""
    from referee.trainer import tiny

    m = cfg.model
    if m.is_tiny:
        tokenizer = tiny.load_tokenizer(m.tokenizer) if m.tokenizer else tiny.build_tokenizer()
        model = tiny.build_model(m.tiny_preset, tokenizer=tokenizer, seed=cfg.seed)
    else:
        tokenizer = tiny.load_tokenizer(m.tokenizer or m.path)
        model = tiny.load_model(m.path)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    if m.gradient_checkpointing:
        model.gradient_checkpointing_enable()
    if m.lora.enabled:
        model = apply_lora(
            model,
            r=m.lora.r,
            alpha=m.lora.alpha,
            dropout=m.lora.dropout,
            target_modules=list(m.lora.target_modules),
        )
    model.train()
    return model, tokenizer


def build_engine(
    cfg: TrainConfig, model: torch.nn.Module, total_optimizer_steps: int
) -> TrainEngine:
    """The training engine for `model` from the optim, model and deepspeed sections."""
    o, ds = cfg.optim, cfg.deepspeed
    world = distributed.dist_info().world_size
    return create_engine(
        model,
        lr=o.lr,
        betas=tuple(o.betas),
        weight_decay=o.weight_decay,
        warmup_steps=o.warmup_steps,
        scheduler=o.scheduler,
        total_steps=total_optimizer_steps if o.scheduler != "constant" else None,
        max_grad_norm=o.max_grad_norm,
        grad_accum_steps=cfg.grad_accum_steps(world),
        micro_batch_size=o.micro_batch_size,
        dtype=cfg.model.dtype,
        use_deepspeed=ds.enabled,
        zero_stage=ds.zero_stage,
        offload_optimizer=ds.offload_optimizer,
        ds_extra=dict(ds.extra),
    )


# --- data ----------------------------------------------------------------------------


@dataclass
class Splits:
    """Training and held-out rows, long prompts dropped."""

    train: list[PromptRow]
    eval: list[PromptRow]
    dropped: int
    """Rows dropped for exceeding data.max_prompt_tokens (both splits)."""


def load_data(cfg: TrainConfig, tokenizer: Any) -> Splits:
    d = cfg.data
    train, held_out = load_splits(
        d.train_path,
        eval_path=d.eval_path,
        eval_fraction=d.eval_fraction,
        id_field=d.id_field,
        prompt_field=d.prompt_field,
        reference_field=d.reference_field,
        metadata_field=d.metadata_field,
        completion_field=d.completion_field,
    )
    train, n1 = drop_long_prompts(
        train, tokenizer, d.max_prompt_tokens, d.chat_template, d.system_prompt
    )
    held_out, n2 = drop_long_prompts(
        held_out, tokenizer, d.max_prompt_tokens, d.chat_template, d.system_prompt
    )
    if not train:
        raise ConfigError(
            "data.max_prompt_tokens",
            f"{d.max_prompt_tokens} drops every training prompt; raise it (0 keeps all)",
        )
    if cfg.eval.num_samples:
        held_out = held_out[: cfg.eval.num_samples]
    return Splits(train, held_out, n1 + n2)


def encode_prompts(cfg: TrainConfig, tokenizer: Any, rows: Sequence[PromptRow]) -> list[list[int]]:
    """Token ids of each rendered prompt. A chat template writes its own special tokens;
    raw text gets the tokenizer's."""
    d = cfg.data
    templated = d.chat_template and bool(getattr(tokenizer, "chat_template", None))
    return [
        tokenizer(
            render_prompt(tokenizer, r, d.chat_template, d.system_prompt),
            add_special_tokens=not templated,
        )["input_ids"]
        for r in rows
    ]


def sampling_params(cfg: TrainConfig, *, seed: int, eval_mode: bool = False) -> SamplingParams:
    """Rollout sampling settings; for eval, greedy with n=1 or sampling with n=eval.k."""
    r = cfg.rollout
    greedy = eval_mode and cfg.eval.greedy
    return SamplingParams(
        n=(1 if greedy else cfg.eval.k) if eval_mode else r.n,
        temperature=0.0 if greedy else r.temperature,
        top_p=r.top_p,
        top_k=r.top_k,
        max_new_tokens=r.max_new_tokens,
        stop=tuple(r.stop),
        seed=seed,
    )


# --- rewards -------------------------------------------------------------------------


@contextlib.contextmanager
def reward_scorer(cfg: TrainConfig) -> Iterator[Any]:
    """Starts the `local` reward services, opens a `RewardScorer` on every source and
    checks, before anything trains, that each target answers and serves its reward.
    Fails with a `ConfigError` naming `reward.sources.<i>.target` (or `.reward`)."""
    from referee.trainer.local_services import start_local_services
    from referee.trainer.rewards import RewardScorer

    check_reachable(cfg)  # remote targets: fail before starting anything
    with start_local_services(cfg.reward.sources) as local:
        with RewardScorer(
            cfg.reward.sources, local.targets(cfg.reward.sources), mask=cfg.reward.mask
        ) as scorer:
            scorer.check()
            yield scorer


# --- evaluation ----------------------------------------------------------------------


def evaluate(
    cfg: TrainConfig,
    rollout: RolloutEngine,
    tokenizer: Any,
    rows: Sequence[PromptRow],
    scorer: Any,
    *,
    seed: int,
) -> dict[str, Any]:
    """The held-out eval row (`eval/accuracy`, `eval/mean_reward`, `eval/pass@k`, status
    counts): generate for `rows` (greedy by default), score through the same reward
    services as training, judge correctness by `cfg.eval_reward`'s score."""
    if not rows:
        return {}
    params = sampling_params(cfg, seed=seed, eval_mode=True)
    batch = scorer.score_while_generating(
        rollout, rows, encode_prompts(cfg, tokenizer, rows), params
    )
    name = cfg.eval_reward
    groups = [g.scores[name] for g in batch.group_scores]
    return eval_metrics(groups, k=params.n, threshold=cfg.eval.correct_threshold)


# --- run directory and checkpoints ------------------------------------------------------


def make_run_log(cfg: TrainConfig, resume_step: int | None) -> RunLog:
    lg = cfg.logging
    return RunLog(
        lg.run_dir,
        total_steps=cfg.optim.steps,
        recipe=cfg.recipe,
        config=dump_config(cfg),
        is_main=distributed.is_main(),
        resume_step=resume_step,
        every_steps=lg.every_steps,
        tensorboard=lg.tensorboard,
        wandb=lg.wandb,
        wandb_project=lg.wandb_project,
        progress_bar=lg.progress_bar,
    )


def maybe_resume(cfg: TrainConfig, resume: bool, engine: TrainEngine, data: Any) -> int:
    """Restores the latest checkpoint under `checkpoint.dir` when resuming; returns the
    step it holds (0 for a fresh run)."""
    if not (resume or cfg.checkpoint.resume):
        return 0
    assert cfg.checkpoint.dir is not None
    try:
        state = checkpoint.resume(cfg.checkpoint.dir, engine, data=data)
    except FileNotFoundError as e:
        raise ConfigError("checkpoint.dir", f"{e}") from None
    return state.step


def save_checkpoint(cfg: TrainConfig, engine: TrainEngine, step: int, data: Any) -> Path:
    assert cfg.checkpoint.dir is not None
    return checkpoint.save_checkpoint(
        cfg.checkpoint.dir, engine, step=step, data=data, keep_last=cfg.checkpoint.keep_last
    )


def due(step: int, every: int, last: int) -> bool:
    """Whether a periodic action (every `every` steps, 0 = never) falls on `step`."""
    return every > 0 and step % every == 0 and step != last


def finish(cfg: TrainConfig, engine: TrainEngine, tokenizer: Any, run: RunLog) -> Path | None:
    """Exports `<run_dir>/final` (when checkpoint.export_final) and notes it in the summary."""
    if not cfg.checkpoint.export_final:
        return None
    out = checkpoint.export_hf(engine, Path(cfg.logging.run_dir or ".") / "final", tokenizer)
    if out is not None:
        run.extra_summary["final_model"] = str(out.resolve())
    return out


def write_json(path: str | os.PathLike[str], obj: Any) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(obj, indent=2) + "\n")
