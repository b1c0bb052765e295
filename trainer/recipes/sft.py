"""Supervised fine-tuning on (prompt, completion) rows: the loss is on completion tokens only.

    referee train examples/configs/sft_tiny.yaml

Each row becomes `render(prompt) + completion + eos`: the prompt as the policy will see
it in the GRPO recipe (chat template with the generation prompt), the target completion,
and the tokenizer's EOS (`<|im_end|>` for the tiny tokenizer: the end of an assistant
turn), so the model learns to stop. The loss is the negative log-likelihood averaged over
every completion token of the optimiser batch (prompt tokens are context only), with
that token count as the denominator of every micro-batch (divided by
`engine.micro_batches_per_step`), so gradient accumulation gives the big-batch loss.

Same plumbing as the GRPO recipe: the engine (DeepSpeed or plain torch), checkpoints
every `checkpoint.every_steps` with the data position, `--resume`, the run directory,
optional held-out eval through the reward services (`eval.enabled`), and the export to
`<run_dir>/final`.
"""

from __future__ import annotations

import contextlib
import json
import time
from pathlib import Path
from typing import Any

import torch

from referee.trainer import distributed
from referee.trainer.algorithms import token_mean
from referee.trainer.config import TrainConfig
from referee.trainer.data import PromptBatches, PromptRow
from referee.trainer.logprobs import sequence_logprobs
from referee.trainer.observe import Stopwatch
from referee.trainer.recipes import common
from referee.trainer.rollout.hf import HFEngine

__all__ = ["sft_tensors", "train"]


def sft_tensors(
    cfg: TrainConfig, tokenizer: Any, rows: list[PromptRow]
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(input_ids, attention_mask, completion_mask), right-padded `[B, T]`: rendered
    prompt + completion + EOS per row; the mask is True on completion and EOS tokens."""
    prompts = common.encode_prompts(cfg, tokenizer, rows)
    eos = tokenizer.eos_token_id
    completions = [
        tokenizer(r.completion or "", add_special_tokens=False)["input_ids"] + [eos] for r in rows
    ]
    width = max(len(p) + len(c) for p, c in zip(prompts, completions, strict=True))
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos
    ids = torch.full((len(rows), width), pad, dtype=torch.long)  # [B, T]
    attn = torch.zeros((len(rows), width), dtype=torch.long)  # [B, T]
    target = torch.zeros((len(rows), width), dtype=torch.bool)  # [B, T]
    for i, (p, c) in enumerate(zip(prompts, completions, strict=True)):
        ids[i, : len(p) + len(c)] = torch.tensor(p + c)
        attn[i, : len(p) + len(c)] = 1
        target[i, len(p) : len(p) + len(c)] = True
    return ids, attn, target


def train(cfg: TrainConfig, resume: bool = False) -> dict[str, Any]:
    """Runs the sft recipe `cfg`; returns summary.json's contents."""
    common.set_threads(cfg.torch_threads)
    distributed.seed_everything(cfg.seed)
    model, tokenizer = common.load_model_and_tokenizer(cfg)
    splits = common.load_data(cfg, tokenizer)
    assert cfg.optim.batch_size is not None  # checked by the config
    info = distributed.dist_info()
    batches = PromptBatches(splits.train, cfg.optim.batch_size, seed=cfg.data.seed)
    engine = common.build_engine(cfg, model, cfg.optim.steps)
    gas = cfg.grad_accum_steps(info.world_size)
    per_step = engine.micro_batches_per_step
    scoring = common.reward_scorer(cfg) if cfg.eval.enabled else contextlib.nullcontext()

    with scoring as scorer:
        rollout = HFEngine(engine.module, tokenizer) if scorer is not None else None

        def evaluate(step: int) -> dict[str, Any]:
            seed = common.step_seed(cfg.seed, step, "eval")
            return common.evaluate(cfg, rollout, tokenizer, splits.eval, scorer, seed=seed)

        resumed = resume or cfg.checkpoint.resume
        start = common.maybe_resume(cfg, resume, engine, batches)
        with common.make_run_log(cfg, start if resumed else None) as run:
            if scorer is not None and not resumed:
                run.log(0, evaluate(0))
            watch, last_saved = Stopwatch(), start
            for step in range(start + 1, cfg.optim.steps + 1):
                t0 = time.perf_counter()
                rows = next(batches)
                # This rank's share of the optimiser batch, then its micro-batches.
                mine = rows[info.rank :: info.world_size]
                ids, attn, target = sft_tensors(cfg, tokenizer, mine)  # [B, T]
                n_tokens = distributed.all_reduce_mean(float(target.sum())) * info.world_size
                denom = max(n_tokens, 1.0) / per_step
                loss_sum, grad_norm = 0.0, float("nan")
                engine.train()
                with watch("train"):
                    for micro in torch.arange(len(mine)).tensor_split(gas):
                        width = int(attn[micro].sum(-1).max())
                        m = target[micro, :width].to(engine.device)  # [n, t]
                        logp = sequence_logprobs(
                            engine,
                            ids[micro, :width].to(engine.device),
                            attn[micro, :width].to(engine.device),
                            m,
                        )  # [n, t]
                        loss = -token_mean(logp, m, num_tokens=denom)
                        engine.backward(loss)
                        norm = engine.step()
                        grad_norm = norm if norm is not None else grad_norm
                        loss_sum += float(loss.detach())
                metrics: dict[str, Any] = {
                    "loss": distributed.all_reduce_mean(loss_sum / gas),
                    "grad_norm": grad_norm,
                    "lr": engine.lr,
                    "tokens_per_s": float(attn.sum()) / max(time.perf_counter() - t0, 1e-9),
                    **watch.lap(),
                }
                if scorer is not None and (
                    common.due(step, cfg.eval.every_steps, -1) or step == cfg.optim.steps
                ):
                    metrics.update(evaluate(step))
                run.log(step, metrics)
                if common.due(step, cfg.checkpoint.every_steps, last_saved):
                    common.save_checkpoint(cfg, engine, step, batches)
                    last_saved = step
            if last_saved != cfg.optim.steps and start < cfg.optim.steps:
                common.save_checkpoint(cfg, engine, cfg.optim.steps, batches)
            common.finish(cfg, engine, tokenizer, run)
    path = Path(cfg.logging.run_dir or ".") / "summary.json"
    return json.loads(path.read_text()) if path.exists() else {}
