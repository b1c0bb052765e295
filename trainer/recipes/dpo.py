"""Direct preference optimisation of the policy on chosen/rejected pairs.

    referee train examples/configs/dpo_tiny.yaml

DPO (Rafailov et al. 2023, arXiv:2305.18290) needs no reward model and no sampling: the
policy pi and a frozen reference pi_ref (the starting model) score both completions of
each pair, sum log pi(y | x) over the completion's tokens (and EOS), and the loss pushes
h = [log pi(y_c) - log pi_ref(y_c)] - [log pi(y_r) - log pi_ref(y_r)] up:

    for each optimiser step:
        pairs -> sequences (prompt with generation prompt + completion + EOS)   [2B, T]
        policy and reference log-probabilities summed over completion tokens   [2B]
        loss = PREFERENCE_LOSSES[preference.loss_type](..., beta, label_smoothing)
        backward, step

How this departs from the paper, or chooses where it is silent:

- The reference is either a frozen deep copy of the starting model, or (with
  `preference.precompute_reference`) its log-probabilities of every pair, computed once
  before training and saved next to the checkpoints, so a resumed run uses the same
  numbers rather than recomputing them from already-trained weights.
- `loss_type: ipo` swaps in IPO's squared loss on the same summed log-probabilities;
  `label_smoothing` is conservative DPO (see `algorithms/preference.py`).
- The loss is the mean over the optimiser batch's pairs, whatever the micro-batching.

Reported: per step the batch's loss, preference accuracy (implicit reward margin
beta * h > 0) and rewards; on the held-out pairs, before training, every
`eval.every_steps` and at the end, `eval/accuracy` (margin > 0: 0 before training, where
every margin is exactly 0), `eval/margin_mean`, the implicit rewards of both sides, and
`eval/logp_accuracy`, the reference-free fraction of pairs where log pi(y_c) > log pi(y_r)
(meaningful before training too). Engine, checkpoints, `--resume` and the export to
`<run_dir>/final` are the SFT recipe's.
"""

from __future__ import annotations

import copy
import json
import time
from pathlib import Path
from typing import Any

import torch

from referee.trainer import distributed
from referee.trainer.algorithms import PREFERENCE_LOSSES, PreferenceLoss, pairwise_accuracy
from referee.trainer.config import TrainConfig
from referee.trainer.config_load import ConfigError
from referee.trainer.data import PromptBatches
from referee.trainer.logprobs import sequence_logprobs
from referee.trainer.observe import Stopwatch
from referee.trainer.preference_data import PairTensors, PreferencePair, policy_pair_tensors
from referee.trainer.recipes import common
from referee.trainer.recipes.pairs import chunks, load_pair_data

__all__ = ["REFERENCE_FILE", "completion_logps", "pair_tensors", "train"]

REFERENCE_FILE = "reference_logprobs.pt"
"""Precomputed reference log-probabilities, under `checkpoint.dir`."""

Reference = Any
"""A frozen model, or {(split, pair id): (chosen, rejected) summed log-probabilities}."""


def pair_tensors(cfg: TrainConfig, tokenizer: Any, pairs: list[PreferencePair]) -> PairTensors:
    """`policy_pair_tensors` with the prompts rendered as the config says."""
    prompts = common.encode_prompts(cfg, tokenizer, [p.prompt_row for p in pairs])
    return policy_pair_tensors(tokenizer, prompts, pairs)


def completion_logps(
    model: Any, t: PairTensors, rows: torch.Tensor, device: Any
) -> torch.Tensor:  # [len(rows)] float32
    """sum_t log model(token t | tokens < t) over the completion tokens of `rows` of `t`
    (gradients flow when enabled)."""
    width = int(t.attention_mask[rows].sum(-1).max())
    mask = t.completion_mask[rows, :width].to(device)  # [n, w]
    logp = sequence_logprobs(
        model,
        t.input_ids[rows, :width].to(device),
        t.attention_mask[rows, :width].to(device),
        mask,
    )  # [n, w], 0 outside the mask
    return logp.sum(-1)


def _reference_logps(
    reference: Reference,
    split: str,
    pairs: list[PreferencePair],
    t: PairTensors,
    rows: torch.Tensor,
    device: Any,
) -> torch.Tensor:  # [len(rows)]: rows index t's 2B sequences (chosen first)
    if isinstance(reference, dict):
        n = len(pairs)
        return torch.tensor(
            [reference[(split, pairs[i % n].id)][0 if i < n else 1] for i in rows.tolist()],
            device=device,
        )
    with torch.no_grad():
        return completion_logps(reference, t, rows, device)


def _precompute(
    cfg: TrainConfig, model: Any, tokenizer: Any, splits: dict[str, list[PreferencePair]]
) -> dict[tuple[str, str], tuple[float, float]]:
    out: dict[tuple[str, str], tuple[float, float]] = {}
    model.eval()
    with torch.no_grad():
        for split, pairs in splits.items():
            for part in chunks(pairs, cfg.optim.micro_batch_size):
                t = pair_tensors(cfg, tokenizer, part)
                logps = completion_logps(model, t, torch.arange(2 * len(part)), "cpu")  # [2n]
                for i, p in enumerate(part):
                    out[(split, p.id)] = (float(logps[i]), float(logps[len(part) + i]))
    model.train()
    return out


def _reference(
    cfg: TrainConfig, model: Any, tokenizer: Any, splits: Any, resuming: bool
) -> Reference:
    """The frozen reference: a copy of `model` as loaded, or its precomputed numbers
    (computed now, or on resume read back from the checkpoint directory)."""
    if not cfg.preference.precompute_reference:
        ref = copy.deepcopy(model).eval()
        ref.requires_grad_(False)
        return ref
    path = Path(cfg.checkpoint.dir or ".") / REFERENCE_FILE
    if resuming:
        if not path.exists():
            raise ConfigError(
                "preference.precompute_reference",
                f"{path} is missing, so the reference of the run being resumed is lost; "
                "start a new run",
            )
        return torch.load(path, weights_only=False)
    table = _precompute(cfg, model, tokenizer, {"train": splits.train, "eval": splits.eval})
    if distributed.is_main():
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save(table, path)
    return table


def _loss(cfg: TrainConfig, policy: torch.Tensor, ref: torch.Tensor) -> PreferenceLoss:
    n = policy.shape[0] // 2  # [2n]: chosen, then rejected
    p = cfg.preference
    return PREFERENCE_LOSSES[p.loss_type](
        policy[:n], policy[n:], ref[:n], ref[n:], beta=p.beta, label_smoothing=p.label_smoothing
    )


def evaluate(
    engine: Any,
    reference: Reference,
    cfg: TrainConfig,
    tokenizer: Any,
    pairs: list[PreferencePair],
) -> dict[str, Any]:
    """The held-out eval row: implicit-reward accuracy and margins, logp accuracy."""
    was_training = engine.module.training
    engine.eval()
    sums: dict[str, list[torch.Tensor]] = {"pol_c": [], "pol_r": [], "ref_c": [], "ref_r": []}
    try:
        with torch.no_grad():
            for part in chunks(pairs, cfg.optim.micro_batch_size):
                t = pair_tensors(cfg, tokenizer, part)
                rows, k = torch.arange(2 * len(part)), len(part)
                policy = completion_logps(engine, t, rows, engine.device).cpu()  # [2k]
                ref = _reference_logps(reference, "eval", part, t, rows, engine.device).cpu()
                sums["pol_c"].append(policy[:k])
                sums["pol_r"].append(policy[k:])
                sums["ref_c"].append(ref[:k])
                sums["ref_r"].append(ref[k:])
    finally:
        engine.train(was_training)
    pol_c, pol_r, ref_c, ref_r = (torch.cat(v) for v in sums.values())  # [B] each
    out = _loss(cfg, torch.cat([pol_c, pol_r]), torch.cat([ref_c, ref_r]))
    return {
        "eval/accuracy": float(out.accuracy),
        "eval/loss": float(out.loss),
        "eval/margin_mean": float(out.margins.mean()),
        "eval/chosen_reward": float(out.chosen_rewards.mean()),
        "eval/rejected_reward": float(out.rejected_rewards.mean()),
        "eval/logp_accuracy": float(pairwise_accuracy(pol_c - pol_r)),
        "eval/pairs": len(pairs),
    }


def train(cfg: TrainConfig, resume: bool = False) -> dict[str, Any]:
    """Runs the dpo recipe `cfg`; returns summary.json's contents."""
    common.set_threads(cfg.torch_threads)
    distributed.seed_everything(cfg.seed)
    model, tokenizer = common.load_model_and_tokenizer(cfg)
    splits = load_pair_data(cfg, tokenizer)
    assert cfg.optim.batch_size is not None  # checked by the config
    info = distributed.dist_info()
    resumed = resume or cfg.checkpoint.resume
    reference = _reference(cfg, model, tokenizer, splits, resumed)  # before the engine
    batches = PromptBatches(splits.train, cfg.optim.batch_size, seed=cfg.data.seed)
    engine = common.build_engine(cfg, model, cfg.optim.steps)
    if isinstance(reference, torch.nn.Module):
        reference.to(engine.device)
    gas = cfg.grad_accum_steps(info.world_size)
    denom = cfg.optim.batch_size / engine.micro_batches_per_step  # see the rm recipe
    do_eval = cfg.eval.enabled and bool(splits.eval)

    start = common.maybe_resume(cfg, resume, engine, batches)
    with common.make_run_log(cfg, start if resumed else None) as run:
        if do_eval and not resumed:
            run.log(0, evaluate(engine, reference, cfg, tokenizer, splits.eval))
        watch, last_saved = Stopwatch(), start
        for step in range(start + 1, cfg.optim.steps + 1):
            t0 = time.perf_counter()
            pairs = next(batches)
            mine = pairs[info.rank :: info.world_size]  # this rank's share
            t = pair_tensors(cfg, tokenizer, mine)  # [2B, T]
            n = len(mine)
            loss_sum, grad_norm = 0.0, float("nan")
            margins, chosen, rejected = [], [], []
            engine.train()
            with watch("train"):
                for micro in torch.arange(n).tensor_split(gas):
                    rows = torch.cat([micro, micro + n])  # chosen rows, then their rejected
                    ref = _reference_logps(reference, "train", mine, t, rows, engine.device)
                    policy = completion_logps(engine, t, rows, engine.device)  # [2m]
                    out = _loss(cfg, policy, ref)
                    engine.backward(out.loss * len(micro) / denom)
                    norm = engine.step()
                    grad_norm = norm if norm is not None else grad_norm
                    loss_sum += float(out.loss.detach()) * len(micro)
                    margins.append(out.margins.cpu())
                    chosen.append(out.chosen_rewards.cpu())
                    rejected.append(out.rejected_rewards.cpu())
            margin = torch.cat(margins)  # [B]
            metrics: dict[str, Any] = {
                "loss": distributed.all_reduce_mean(loss_sum / max(n, 1)),
                "accuracy": distributed.all_reduce_mean(float(pairwise_accuracy(margin))),
                "margin_mean": distributed.all_reduce_mean(float(margin.mean())),
                "chosen_reward": distributed.all_reduce_mean(float(torch.cat(chosen).mean())),
                "rejected_reward": distributed.all_reduce_mean(float(torch.cat(rejected).mean())),
                "grad_norm": grad_norm,
                "lr": engine.lr,
                "pairs_per_s": n * info.world_size / max(time.perf_counter() - t0, 1e-9),
                **watch.lap(),
            }
            if do_eval and (common.due(step, cfg.eval.every_steps, -1) or step == cfg.optim.steps):
                metrics.update(evaluate(engine, reference, cfg, tokenizer, splits.eval))
            run.log(step, metrics)
            if common.due(step, cfg.checkpoint.every_steps, last_saved):
                common.save_checkpoint(cfg, engine, step, batches)
                last_saved = step
        if last_saved != cfg.optim.steps and start < cfg.optim.steps:
            common.save_checkpoint(cfg, engine, cfg.optim.steps, batches)
        common.finish(cfg, engine, tokenizer, run)
    path = Path(cfg.logging.run_dir or ".") / "summary.json"
    return json.loads(path.read_text()) if path.exists() else {}
