"""The GRPO family in one loop: rollout, reward, advantage, loss, step.

    referee train examples/configs/grpo_tiny.yaml --set rollout.n=4

Every step samples `rollout.n` completions for each of `rollout.prompts_per_step` prompts
with the in-process `hf` engine (which shares the policy's module: generation always uses
the current weights) or the `sglang` engine (SGLang servers, or a `referee serve rollout`
started for the run, brought to the new weights by a disk sync after every batch's
optimiser steps: see rollouts.py). Each prompt's group goes to the reward services the
moment it is complete, so scoring hides behind the groups still generating. With
`rollout.off_policy_steps: 1` (sglang only) the next batch is generated and scored in the
background while this one trains, and is complete before the sync (off_policy.py; verl's
one-step off-policy). Then advantages from
(rewards, valid), and `algorithm.ppo_epochs` passes of `algorithm.mini_batches` optimiser
steps, each accumulated over micro-batches through the training engine (DeepSpeed or
plain torch). `algorithm.name` picks the estimator and the loss:

    grpo, dr_grpo, rloo, reinforce_pp -> that advantage estimator + PPO-clip loss
    gspo                              -> GRPO advantages + GSPO's sequence-ratio loss

Where this departs from the papers (DeepSeekMath's GRPO, DAPO, Dr. GRPO, GSPO):

* A failed reward is not a score. A sample whose reward did not come back OK has reward
  NaN and `valid` False: it is left out of its group's mean and std and out of the loss
  mask, and counted under `reward_status/...`. A group with fewer than two valid samples
  has no baseline and trains nothing.
* No KL term by default (`algorithm.kl.coef` 0, like DAPO and Dr. GRPO; GRPO as
  published uses k3 in the loss). When on, the reference is a frozen copy of the initial
  policy, the estimator is k1/k2/k3 and it goes in the loss (token-averaged like the
  policy loss) or is subtracted from the reward before the advantages (summed over the
  response, computed from the old-policy logprobs).
* Old logprobs: with one PPO epoch and the `hf` engine the engine's own sampling
  logprobs are pi_old (same module, same `log_softmax(logits / T)` in fp32, see
  rollout/base.py), so no extra forward pass is spent. Otherwise (several epochs, the
  `sglang` engine, whose logprobs are pi_rollout from another process's copy of the
  weights, or TIS) they are recomputed by the training forward pass under no_grad before
  the first update, so the first ratio is exactly 1 and the clip measures policy
  movement, not kernel differences between the rollout engine and the trainer. This
  holds off-policy too, as in verl and slime: pi_old is the trainer's current weights,
  one rollout step newer than the behaviour policy that sampled the batch; the engine's
  pi_rollout enters only through TIS, which is what corrects for that lag.
* Train/rollout mismatch: whenever old logprobs are recomputed, the per-token gap to the
  engine's is logged (`rollout/logprob_gap_mean`, `_max`, `rollout/importance_ratio_mean`;
  ~1e-7 in fp32 with synced weights). `algorithm.tis_cap` weights each token's loss by
  min(pi_old / pi_rollout, cap) (truncated importance sampling, algorithms/mismatch.py).
  Each sample's `weight_version` is compared with the trainer's step when it trains
  (`rollout/staleness_min`, `_max`: 0 when synchronous with every server in sync; one
  rollout step, ppo_epochs x mini_batches, off-policy). A batch holding a sample more
  than `rollout.max_staleness` steps behind stops the run before it trains.
* The loss is normalised over the global mini-batch: the token (or sequence) count of
  the whole mini-batch, divided by `engine.micro_batches_per_step`, is every
  micro-batch's denominator, so accumulation gives exactly the loss of one big batch.
* DAPO dynamic sampling keeps the batch size fixed: groups whose valid rewards are all
  equal are set aside, up to `max_refill_rounds` extra rounds sample new prompts for
  the shortfall, and if the batch is still short it is filled with set-aside groups that
  stay out of the loss. Overlong filtering drops truncated samples from the loss but
  keeps their rewards in the group statistics.
* Sampling is seeded per step (`step_seed`), so a resumed run regenerates exactly what
  the uninterrupted one did (off-policy: the batch in flight at the checkpoint is
  regenerated from the same prompts and seed, by the checkpoint's newer weights).
* A rollout server that goes away is waited for (`rollout.sglang.retry_total_s`); past
  that the run stops with `SGLangUnavailableError` naming the server, before anything
  trains on the incomplete batch.

Not supported yet (refused by `check_supported` with the key to change): more than one
process (each rank would need its share of the prompts), and the nccl and tensor weight
syncs of the sglang engine.
"""

from __future__ import annotations

import copy
import functools
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from referee.trainer import distributed
from referee.trainer.algorithms import (
    ADVANTAGE_ESTIMATORS,
    AGGREGATIONS,
    KL_ESTIMATORS,
    expand_group_mask,
    gspo_loss,
    informative_groups,
    kl_penalized_rewards,
    logprob_gap,
    loss_mask,
    masked_mean,
    overlong_mask,
    ppo_clip_loss,
    tis_weights,
)
from referee.trainer.config import TrainConfig
from referee.trainer.config_load import ConfigError
from referee.trainer.data import PromptBatches
from referee.trainer.logprobs import sequence_logprobs, sequence_logprobs_with_entropy
from referee.trainer.observe import Stopwatch
from referee.trainer.recipes import common, off_policy, rollouts
from referee.trainer.rewards import ScoredBatch, ScoringTiming
from referee.trainer.rollout.base import RolloutEngine

__all__ = ["check_supported", "train"]

# gspo standardises rewards within the group as GRPO does; only its loss differs.
_ESTIMATOR = {"gspo": "grpo"}


def check_supported(cfg: TrainConfig) -> None:
    """Refuses settings this recipe does not implement yet, naming the key."""
    rollouts.check_sglang(cfg)
    if distributed.dist_info().world_size > 1:
        raise ConfigError(
            "deepspeed",
            "the grpo recipe runs as one process for now (rollouts are not sharded "
            "across ranks); launch it without torchrun/deepspeed --num_gpus",
        )


def train(cfg: TrainConfig, resume: bool = False) -> dict[str, Any]:
    """Runs the GRPO-family recipe `cfg` (resuming from its latest checkpoint when
    `resume` or `checkpoint.resume`); returns summary.json's contents."""
    check_supported(cfg)
    common.set_threads(cfg.torch_threads)
    distributed.seed_everything(cfg.seed)
    algo, G = cfg.algorithm, cfg.rollout.n

    model, tokenizer = common.load_model_and_tokenizer(cfg)
    reference = _frozen_copy(model) if algo.kl.coef > 0 else None
    splits = common.load_data(cfg, tokenizer)
    prompts = PromptBatches(splits.train, cfg.rollout.prompts_per_step, seed=cfg.data.seed)
    optimizer_steps = cfg.optim.steps * algo.ppo_epochs * algo.mini_batches
    engine = common.build_engine(cfg, model, optimizer_steps)
    pad_id = tokenizer.pad_token_id  # set (to EOS if need be) by load_model_and_tokenizer

    estimate_advantages = ADVANTAGE_ESTIMATORS[_ESTIMATOR.get(algo.name, algo.name)]
    policy_loss = gspo_loss if algo.name == "gspo" else ppo_clip_loss
    kl_estimator = KL_ESTIMATORS[algo.kl.estimator]
    # The engine's sampling logprobs are pi_old when the engine is the policy's own module
    # and nothing updates between sampling and their last use (see docstring).
    reuse_rollout_logprobs = (
        cfg.rollout.engine == "hf" and algo.ppo_epochs == 1 and algo.tis_cap is None
    )
    temperature = cfg.rollout.temperature  # == SamplingParams.logprob_temperature (> 0)

    def encode(rows: Any) -> list[list[int]]:
        return common.encode_prompts(cfg, tokenizer, rows)

    def evaluate(step: int) -> dict[str, Any]:
        seed = common.step_seed(cfg.seed, step, "eval")
        return common.evaluate(cfg, rollout, tokenizer, splits.eval, scorer, seed=seed)

    with common.reward_scorer(cfg) as scorer:
        resumed = resume or cfg.checkpoint.resume
        start = common.maybe_resume(cfg, resume, engine, prompts)
        with (
            rollouts.open_rollout(
                cfg, engine, tokenizer, micro_batch_prompts=_gen_chunk(cfg)
            ) as rollout,
            common.make_run_log(cfg, start if resumed else None) as run,
            # Batch `step` is collected at the start of its step, or (one-step off-policy)
            # in the background while step - 1 trains: see off_policy.py.
            off_policy.CollectAhead(
                lambda s: _collect(cfg, rollout, scorer, prompts, encode, s),
                prompts,
                ahead=cfg.rollout.off_policy_steps > 0,
                last_step=cfg.optim.steps,
                cancel=rollout.close,
            ) as batches,
        ):
            if splits.dropped:
                run.warn(f"{splits.dropped} prompts over data.max_prompt_tokens were dropped")
            if cfg.eval.enabled and not resumed:
                run.log(0, evaluate(0))
            watch, last_saved = Stopwatch(), start

            for step in range(start + 1, cfg.optim.steps + 1):
                t_step = time.perf_counter()
                # 1. Rollout and reward: n completions per prompt, each group scored as it
                #    completes (and DAPO's refill of uninformative groups when enabled).
                with watch("rollout"):
                    scored, refill = batches.take(step)
                batch = scored.rollout.to_tensors(pad_id)  # input_ids etc. [N, T]
                rewards, valid = scored.rewards, scored.valid  # [N], NaN where not valid
                trained_at = engine.global_step  # the weights this batch trains from
                off_policy.check_staleness(
                    batch.weight_version, trained_at, cfg.rollout.max_staleness
                )

                # 2. Which samples train: a valid reward, (DAPO) an informative group,
                #    (DAPO) not cut at max_new_tokens. Statistics still see every valid one.
                keep = valid.clone()  # [N]
                if algo.dynamic_sampling:
                    keep &= expand_group_mask(informative_groups(rewards, valid, G), G)
                if algo.overlong_filter:
                    keep &= overlong_mask(batch.truncated)
                mask = loss_mask(batch.response_mask, keep)  # [N, T]

                # 3. Old-policy and reference logprobs (no gradient); the engine's own
                #    logprobs are pi_rollout, compared with the trainer's pi_old.
                with watch("logprobs"), torch.no_grad():
                    old_logp = batch.rollout_logprobs  # [N, T]
                    if not reuse_rollout_logprobs:
                        old_logp = _score(engine, batch, mask, temperature, cfg)
                    ref_logp = None
                    if reference is not None:
                        ref_logp = _score(reference, batch, mask, temperature, cfg)  # [N, T]
                    tis = None  # [N, T] truncated importance weights
                    if algo.tis_cap is not None:
                        tis = tis_weights(old_logp, batch.rollout_logprobs, mask, algo.tis_cap)
                mismatch_rows = _mismatch_metrics(
                    batch,
                    old_logp,
                    trained_at,
                    measured=not reuse_rollout_logprobs,
                    tis=tis,
                    mask=mask,
                )
                kl_rows = {}
                if ref_logp is not None:
                    kl_tok = kl_estimator(old_logp, ref_logp, mask)  # [N, T]
                    kl_rows["kl"] = float(masked_mean(kl_tok, mask))
                    if algo.kl.placement == "reward":
                        rewards = kl_penalized_rewards(rewards, kl_tok, mask, algo.kl.coef)

                # 4. Advantages from the valid rewards only.
                advantages = estimate_advantages(rewards, valid, G)  # [N]

                # 5. Loss and optimiser steps: ppo_epochs x mini_batches, each accumulated
                #    over micro-batches and normalised over the whole mini-batch.
                with watch("train"):
                    stats = _update(
                        cfg,
                        engine,
                        batch,
                        mask,
                        old_logp,
                        ref_logp,
                        advantages,
                        policy_loss,
                        kl_estimator,
                        temperature,
                        step,
                        tis,
                    )
                # 6. The rollout engine takes the new weights (a disk sync for sglang),
                #    once the batch generated meanwhile (off-policy) is complete.
                with watch("rollout"):
                    batches.wait()
                with watch("sync"):
                    rollout.update_weights(engine.module, version=engine.global_step)

                metrics = {
                    **scored.metrics(),
                    **_rollout_metrics(scored, batch, keep, refill),
                    **mismatch_rows,
                    **kl_rows,
                    **stats,
                    "lr": engine.lr,
                    **watch.lap(),
                }
                metrics["time/step_s"] = time.perf_counter() - t_step
                if cfg.eval.enabled and (
                    common.due(step, cfg.eval.every_steps, -1) or step == cfg.optim.steps
                ):
                    with watch("eval"):
                        metrics.update(evaluate(step))
                run.log(step, metrics)
                if common.due(step, cfg.checkpoint.every_steps, last_saved):
                    common.save_checkpoint(cfg, engine, step, batches.position)
                    last_saved = step

            if last_saved != cfg.optim.steps and start < cfg.optim.steps:
                common.save_checkpoint(cfg, engine, cfg.optim.steps, prompts)
            common.finish(cfg, engine, tokenizer, run)
    return _summary(cfg)


# --- the pieces of one step -------------------------------------------------------------


def _collect(
    cfg: TrainConfig,
    rollout: RolloutEngine,
    scorer: Any,
    prompts: PromptBatches,
    encode: Callable[[Any], list[list[int]]],
    step: int,
) -> tuple[ScoredBatch, dict[str, float]]:
    """One rollout batch, scored. With dynamic sampling: refill uninformative groups for
    up to `max_refill_rounds` extra rounds, then pad with set-aside groups (see module
    docstring); the batch always has `prompts_per_step` groups."""
    algo, G, want = cfg.algorithm, cfg.rollout.n, cfg.rollout.prompts_per_step

    def generate(rows: Any, round_: int) -> ScoredBatch:
        seed = common.step_seed(cfg.seed, step, f"rollout/{round_}")
        params = common.sampling_params(cfg, seed=seed)
        return scorer.score_while_generating(rollout, rows, encode(rows), params)

    first = generate(next(prompts), 0)
    if not algo.dynamic_sampling:
        return first, {}
    useful: list[tuple[ScoredBatch, int]] = []
    spare: list[tuple[ScoredBatch, int]] = []
    batch, rounds = first, 0
    while True:
        informative = informative_groups(batch.rewards, batch.valid, G)  # [B]
        for g, ok in enumerate(informative.tolist()):
            (useful if ok else spare).append((batch, g))
        if len(useful) >= want or rounds >= algo.max_refill_rounds:
            break
        rounds += 1
        batch = generate(prompts.take(want - len(useful)), rounds)
    picks = (useful + spare)[:want]
    stats = {
        "dynamic_sampling/rounds": float(rounds),
        "dynamic_sampling/informative_groups": float(min(len(useful), want)),
    }
    return _concat_groups(picks, G), stats


def _concat_groups(picks: list[tuple[ScoredBatch, int]], G: int) -> ScoredBatch:
    """A scored batch made of chosen groups of other scored batches, in the given order."""

    def rows(t: torch.Tensor, g: int) -> torch.Tensor:
        return t[g * G : (g + 1) * G]

    def cat(get: Callable[[ScoredBatch], torch.Tensor | None]) -> torch.Tensor:
        parts = []
        for b, g in picks:
            t = get(b)
            parts.append(rows(t, g) if t is not None else torch.full((G,), float("nan")))
        return torch.cat(parts)

    first = picks[0][0]
    values = {src: cat(lambda b, s=src: b.values[s]) for src in first.values}
    components = {
        src: {
            c: cat(lambda b, s=src, c=c: b.components[s].get(c))
            for c in sorted({c for b, _ in picks for c in b.components[src]})
        }
        for src in first.values
    }
    group_scores = [b.group_scores[g] for b, g in picks]
    counts = {src: dict.fromkeys(first.status_counts[src], 0) for src in first.status_counts}
    for gs in group_scores:
        for src, scores in gs.scores.items():
            for s in scores:
                counts[src][s.status] += 1
    examples: dict[str, str] = {}
    timings: dict[int, ScoringTiming] = {}
    for b, _ in picks:
        timings[id(b)] = b.timing
        for k, v in b.failure_examples.items():
            examples.setdefault(k, v)
    t = list(timings.values())
    return ScoredBatch(
        groups=[b.groups[g] for b, g in picks],
        group_scores=group_scores,
        rewards=cat(lambda b: b.rewards),
        valid=cat(lambda b: b.valid.float()).bool(),
        values=values,
        components=components,
        status_counts=counts,
        failure_examples=examples,
        timing=ScoringTiming(
            generation_s=sum(x.generation_s for x in t),
            scoring_s=sum(x.scoring_s for x in t),
            exposed_s=sum(x.exposed_s for x in t),
            total_s=sum(x.total_s for x in t),
        ),
    )


def _update(
    cfg: TrainConfig,
    engine: Any,
    batch: Any,
    mask: torch.Tensor,  # [N, T] bool
    old_logp: torch.Tensor,  # [N, T]
    ref_logp: torch.Tensor | None,  # [N, T]
    advantages: torch.Tensor,  # [N]
    policy_loss: Callable[..., Any],
    kl_estimator: Callable[..., torch.Tensor],
    temperature: float,
    step: int,
    tis: torch.Tensor | None = None,  # [N, T] truncated importance weights
) -> dict[str, float]:
    """ppo_epochs x mini_batches optimiser steps on one rollout batch; returns the means
    of the loss and its diagnostics, the entropy and the last pre-clip grad norm."""
    algo = cfg.algorithm
    N = mask.shape[0]
    if not bool(mask.any()):  # every sample masked: nothing to learn from this batch
        return {"train/skipped": 1.0}
    per_step = engine.micro_batches_per_step
    gas = per_step // distributed.dist_info().world_size
    sums: dict[str, float] = {}
    count, grad_norm = 0, float("nan")
    engine.train()
    for epoch in range(algo.ppo_epochs):
        shuffle = torch.Generator().manual_seed(common.step_seed(cfg.seed, step, f"perm/{epoch}"))
        order = torch.randperm(N, generator=shuffle)  # [N]
        for mini in order.chunk(algo.mini_batches):  # [N / mini_batches]
            agg = _aggregation(cfg, mask[mini], per_step)
            for micro in mini.tensor_split(gas):  # [micro_batch_size]
                width = int(batch.attention_mask[micro].sum(-1).max())
                ids = batch.input_ids[micro, :width].to(engine.device)  # [n, t]
                attn = batch.attention_mask[micro, :width].to(engine.device)  # [n, t]
                m = mask[micro, :width].to(engine.device)  # [n, t]
                scored = sequence_logprobs_with_entropy(engine, ids, attn, m, temperature)
                out = policy_loss(
                    scored.logprobs,
                    old_logp[micro, :width].to(engine.device),
                    advantages[micro].to(engine.device),
                    m,
                    clip_low=algo.clip_low,
                    clip_high=algo.clip_high,
                    aggregation=agg,
                    token_weights=None if tis is None else tis[micro, :width].to(engine.device),
                )
                loss = out.loss
                entropy = agg(scored.entropy, m)
                if algo.entropy_coef > 0:
                    loss = loss - algo.entropy_coef * entropy
                if ref_logp is not None and algo.kl.placement == "loss":
                    kl = kl_estimator(scored.logprobs, ref_logp[micro, :width].to(engine.device), m)
                    loss = loss + algo.kl.coef * agg(kl, m)
                engine.backward(loss)
                norm = engine.step()
                if norm is not None:
                    grad_norm = norm
                for key, value in (
                    ("loss", loss),
                    ("policy/loss", out.loss),
                    ("policy/clip_fraction", out.clip_fraction),
                    ("policy/approx_kl", out.approx_kl),
                    ("policy/ratio_mean", out.ratio_mean),
                    ("entropy", masked_mean(scored.entropy.detach(), m)),
                ):
                    sums[key] = sums.get(key, 0.0) + float(value.detach())
                count += 1
    stats = {k: v / count for k, v in sums.items()}
    stats["grad_norm"] = grad_norm
    return stats


def _aggregation(cfg: TrainConfig, mini_mask: torch.Tensor, per_step: int) -> Callable:
    """The configured aggregation with its denominator fixed to the whole mini-batch's
    count (over every rank) / micro-batches per step: the accumulated micro-batch losses
    then sum to the loss of the mini-batch as one batch (engine.micro_batches_per_step)."""
    name = cfg.algorithm.aggregation
    world = distributed.dist_info().world_size
    tokens = distributed.all_reduce_mean(float(mini_mask.sum())) * world
    seqs = distributed.all_reduce_mean(float(mini_mask.any(-1).sum())) * world
    fn = AGGREGATIONS[name]
    if name == "token_mean":
        return functools.partial(fn, num_tokens=max(tokens, 1.0) / per_step)
    if name == "seq_mean_token_sum_norm":
        return functools.partial(
            fn, max_len=cfg.rollout.max_new_tokens, num_sequences=max(seqs, 1.0) / per_step
        )
    return functools.partial(fn, num_sequences=max(seqs, 1.0) / per_step)


def _score(
    model: Any, batch: Any, mask: torch.Tensor, temperature: float, cfg: TrainConfig
) -> torch.Tensor:  # [N, T]
    """Logprobs of the batch's response tokens under `model` (the caller disables grad)."""
    device = next(model.parameters()).device if isinstance(model, torch.nn.Module) else model.device
    return sequence_logprobs(
        model,
        batch.input_ids.to(device),
        batch.attention_mask.to(device),
        batch.response_mask.to(device),
        temperature,
        micro_batch_size=cfg.optim.micro_batch_size,
    ).cpu()


def _rollout_metrics(
    scored: ScoredBatch, batch: Any, keep: torch.Tensor, refill: dict[str, float]
) -> dict[str, float]:
    timing = scored.timing
    tokens = float(batch.completion_lengths.sum())
    return {
        "time/generate_s": timing.generation_s,
        "time/reward_s": timing.scoring_s,
        "reward/hidden_fraction": timing.hidden_fraction,
        "tokens_per_s": tokens / max(timing.total_s, 1e-9),
        "response_length/mean": float(batch.completion_lengths.float().mean()),
        "samples/truncated": float(batch.truncated.sum()),
        "samples/trained": float(keep.sum()),
        **refill,
    }


def _mismatch_metrics(
    batch: Any,
    old_logp: torch.Tensor,  # [N, T] the trainer's pi_old
    trained_at: int,
    *,
    measured: bool,
    tis: torch.Tensor | None,  # [N, T]
    mask: torch.Tensor,  # [N, T] loss mask
) -> dict[str, float]:
    """Staleness of each sample's weights (the trainer's step when the batch trains -
    the version that generated it) and, when `old_logp` comes from a fresh pass, the
    per-token gap between it and the engine's logprobs over every response token."""
    staleness = trained_at - batch.weight_version  # [N]
    rows = {
        "rollout/weight_version_min": float(batch.weight_version.min()),
        "rollout/weight_version_max": float(batch.weight_version.max()),
        "rollout/staleness_min": float(staleness.min()),
        "rollout/staleness_max": float(staleness.max()),
    }
    if measured:
        gap = logprob_gap(old_logp, batch.rollout_logprobs, batch.response_mask)
        rows["rollout/logprob_gap_mean"] = float(gap.mean_abs)
        rows["rollout/logprob_gap_max"] = float(gap.max_abs)
        rows["rollout/importance_ratio_mean"] = float(gap.ratio_mean)
    if tis is not None:
        rows["rollout/tis_weight_mean"] = float(masked_mean(tis, mask))
    return rows


def _frozen_copy(model: torch.nn.Module) -> torch.nn.Module:
    ref = copy.deepcopy(model).eval()
    for p in ref.parameters():
        p.requires_grad_(False)
    return ref


def _gen_chunk(cfg: TrainConfig) -> int:
    """Prompts generated together: small enough that groups reach the reward services
    early (overlap), large enough to batch the matmuls."""
    return max(1, min(8, cfg.rollout.prompts_per_step // 4))


def _summary(cfg: TrainConfig) -> dict[str, Any]:
    path = Path(cfg.logging.run_dir or ".") / "summary.json"
    return json.loads(path.read_text()) if path.exists() else {}
