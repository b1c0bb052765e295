"""A Bradley-Terry reward model on chosen/rejected pairs.

    referee train examples/configs/rm_tiny.yaml

The model is the base model with a one-output score head (`...ForSequenceClassification`,
`num_labels=1`): `tiny:<preset>` builds it, a causal LM directory gets a fresh head on
its trunk. Each step scores both sides of the batch's pairs, `render_conversation` of
(prompt, completion) right-padded, and minimises the Bradley-Terry loss
-log sigmoid(r_chosen - r_rejected - preference.margin), averaged over the optimiser
batch's pairs.

Where the score is read: the Hugging Face head takes the hidden state of the rightmost
token that is not the pad id. The recipe right-pads and refuses texts containing the
pad token (`score_tensors`), so that token is the last real one whatever the padding;
positions come from the attention mask. The same forward, unchanged, is what
`AutoModelForSequenceClassification.from_pretrained(<run_dir>/final)` runs, so a server
loading the export reproduces the scores reported here.

Reported: the training batch's pairwise accuracy and margin each step; held-out
pairwise accuracy (`eval/accuracy`: the fraction of pairs scored r_chosen > r_rejected)
before training, every `eval.every_steps` and at the end; summary.json's `eval_after`;
and each held-out pair's two scores in `<run_dir>/eval_scores.jsonl`. The export
(`<run_dir>/final`) holds the model and tokenizer. Engine, checkpoints and `--resume` are
the SFT recipe's.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import torch

from referee.trainer import distributed, tiny
from referee.trainer.algorithms import bradley_terry_loss, pairwise_accuracy
from referee.trainer.config import TrainConfig
from referee.trainer.data import PromptBatches
from referee.trainer.logprobs import position_ids_from_mask
from referee.trainer.observe import Stopwatch
from referee.trainer.preference_data import PreferencePair, score_tensors
from referee.trainer.recipes import common
from referee.trainer.recipes.pairs import chunks, load_pair_data

__all__ = ["EVAL_SCORES", "load_reward_model_and_tokenizer", "reward_scores", "train"]

EVAL_SCORES = "eval_scores.jsonl"
"""Per held-out pair: id, chosen and rejected score of the final model (run directory)."""


def load_reward_model_and_tokenizer(cfg: TrainConfig) -> tuple[torch.nn.Module, Any]:
    """The reward model (one-label score head, seeded by `cfg.seed`) and its tokenizer;
    `config.pad_token_id` is set to the tokenizer's, which the head's pooling reads."""
    m = cfg.model
    if m.is_tiny:
        tokenizer = tiny.load_tokenizer(m.tokenizer) if m.tokenizer else tiny.build_tokenizer()
        model = tiny.build_model(m.tiny_preset, tokenizer=tokenizer, seed=cfg.seed, head="score")
    else:
        tokenizer = tiny.load_tokenizer(m.tokenizer or m.path)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(cfg.seed)  # a fresh score head on a causal LM is seeded
            model = tiny.load_reward_model(m.path)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token  # score_tensors refuses a collision
    model.config.pad_token_id = tokenizer.pad_token_id
    if m.gradient_checkpointing:
        model.gradient_checkpointing_enable()
    model.train()
    return model, tokenizer


def reward_scores(
    model: Any,
    input_ids: torch.Tensor,  # [N, T] right-padded with the model's pad id
    attention_mask: torch.Tensor,  # [N, T]
) -> torch.Tensor:  # [N] float32
    """The reward model's score of each row (gradients flow when enabled)."""
    out = model(
        input_ids=input_ids,
        attention_mask=attention_mask,
        position_ids=position_ids_from_mask(attention_mask),
        use_cache=False,
    )
    return out.logits[:, 0].float()


def score_pairs(
    model: Any, cfg: TrainConfig, tokenizer: Any, pairs: list[PreferencePair], device: Any
) -> tuple[torch.Tensor, torch.Tensor]:
    """(chosen scores [B], rejected scores [B]) of `pairs`, without gradients, in chunks
    of `optim.micro_batch_size` pairs."""
    chosen, rejected = [], []
    with torch.no_grad():
        for part in chunks(pairs, cfg.optim.micro_batch_size):
            t = score_tensors(
                tokenizer,
                part,
                use_chat_template=cfg.data.chat_template,
                system_prompt=cfg.data.system_prompt,
            )
            s = reward_scores(model, t.input_ids.to(device), t.attention_mask.to(device))  # [2n]
            chosen.append(s[: len(part)].cpu())
            rejected.append(s[len(part) :].cpu())
    return torch.cat(chosen), torch.cat(rejected)


def evaluate(
    engine: Any, cfg: TrainConfig, tokenizer: Any, pairs: list[PreferencePair]
) -> tuple[dict[str, Any], torch.Tensor, torch.Tensor]:
    """(the eval row, chosen scores, rejected scores) on the held-out pairs."""
    was_training = engine.module.training
    engine.eval()
    try:
        chosen, rejected = score_pairs(engine, cfg, tokenizer, pairs, engine.device)
    finally:
        engine.train(was_training)
    out = bradley_terry_loss(chosen, rejected, cfg.preference.margin)
    row = {
        "eval/accuracy": float(out.accuracy),
        "eval/loss": float(out.loss),
        "eval/margin_mean": float(out.margins.mean()),
        "eval/chosen_score": float(chosen.mean()),
        "eval/rejected_score": float(rejected.mean()),
        "eval/pairs": len(pairs),
    }
    return row, chosen, rejected


def train(cfg: TrainConfig, resume: bool = False) -> dict[str, Any]:
    """Runs the rm recipe `cfg`; returns summary.json's contents."""
    common.set_threads(cfg.torch_threads)
    distributed.seed_everything(cfg.seed)
    model, tokenizer = load_reward_model_and_tokenizer(cfg)
    splits = load_pair_data(cfg, tokenizer)
    assert cfg.optim.batch_size is not None  # checked by the config
    info = distributed.dist_info()
    batches = PromptBatches(splits.train, cfg.optim.batch_size, seed=cfg.data.seed)
    engine = common.build_engine(cfg, model, cfg.optim.steps)
    gas = cfg.grad_accum_steps(info.world_size)
    # Each micro-batch loss is its pairs' sum over (global pairs / micro-batches), so the
    # engine's mean over micro-batches and ranks is the mean over the optimiser batch.
    denom = cfg.optim.batch_size / engine.micro_batches_per_step
    do_eval = cfg.eval.enabled and bool(splits.eval)
    render = dict(use_chat_template=cfg.data.chat_template, system_prompt=cfg.data.system_prompt)

    resumed = resume or cfg.checkpoint.resume
    start = common.maybe_resume(cfg, resume, engine, batches)
    with common.make_run_log(cfg, start if resumed else None) as run:
        if do_eval and not resumed:
            run.log(0, evaluate(engine, cfg, tokenizer, splits.eval)[0])
        watch, last_saved = Stopwatch(), start
        for step in range(start + 1, cfg.optim.steps + 1):
            t0 = time.perf_counter()
            pairs = next(batches)
            mine = pairs[info.rank :: info.world_size]  # this rank's share
            t = score_tensors(tokenizer, mine, **render)  # [2B, T]
            n = len(mine)
            loss_sum, grad_norm = 0.0, float("nan")
            margins = []
            engine.train()
            with watch("train"):
                for micro in torch.arange(n).tensor_split(gas):
                    rows = torch.cat([micro, micro + n])  # chosen rows, then their rejected
                    width = int(t.attention_mask[rows].sum(-1).max())
                    scores = reward_scores(
                        engine,
                        t.input_ids[rows, :width].to(engine.device),
                        t.attention_mask[rows, :width].to(engine.device),
                    )  # [2m]
                    m = len(micro)
                    out = bradley_terry_loss(scores[:m], scores[m:], cfg.preference.margin)
                    loss = out.loss * m / denom
                    engine.backward(loss)
                    norm = engine.step()
                    grad_norm = norm if norm is not None else grad_norm
                    loss_sum += float(out.loss.detach()) * m
                    margins.append(out.margins.cpu())
            margin = torch.cat(margins)  # [B]
            metrics: dict[str, Any] = {
                "loss": distributed.all_reduce_mean(loss_sum / max(n, 1)),
                "accuracy": distributed.all_reduce_mean(float(pairwise_accuracy(margin))),
                "margin_mean": distributed.all_reduce_mean(float(margin.mean())),
                "grad_norm": grad_norm,
                "lr": engine.lr,
                "pairs_per_s": n * info.world_size / max(time.perf_counter() - t0, 1e-9),
                **watch.lap(),
            }
            if do_eval and common.due(step, cfg.eval.every_steps, -1) and step != cfg.optim.steps:
                metrics.update(evaluate(engine, cfg, tokenizer, splits.eval)[0])
            if do_eval and step == cfg.optim.steps:
                row, chosen, rejected = evaluate(engine, cfg, tokenizer, splits.eval)
                metrics.update(row)
                _write_scores(cfg, splits.eval, chosen, rejected, run)
            run.log(step, metrics)
            if common.due(step, cfg.checkpoint.every_steps, last_saved):
                common.save_checkpoint(cfg, engine, step, batches)
                last_saved = step
        if last_saved != cfg.optim.steps and start < cfg.optim.steps:
            common.save_checkpoint(cfg, engine, cfg.optim.steps, batches)
        common.finish(cfg, engine, tokenizer, run)
    path = Path(cfg.logging.run_dir or ".") / "summary.json"
    return json.loads(path.read_text()) if path.exists() else {}


def _write_scores(
    cfg: TrainConfig,
    pairs: list[PreferencePair],
    chosen: torch.Tensor,  # [B]
    rejected: torch.Tensor,  # [B]
    run: Any,
) -> None:
    if not distributed.is_main():
        return
    path = Path(cfg.logging.run_dir or ".") / EVAL_SCORES
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = [
        json.dumps({"id": p.id, "chosen": float(c), "rejected": float(r)})
        for p, c, r in zip(pairs, chosen.tolist(), rejected.tolist(), strict=True)
    ]
    path.write_text("".join(line + "\n" for line in lines))
    run.extra_summary["eval_scores"] = str(path.resolve())
