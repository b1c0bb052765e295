"""A small training loop for the engine tests, run in fresh processes (torchrun or python).

    python -m torch.distributed.run --standalone --nproc-per-node 2 \
        tests/trainer/ds_worker.py parity --out OUT.pt --engines ds0,ds2 --grad-accum 1

`parity`: a PPO-clip step on a fixed batch (fixed old logprobs and advantages, token-mean
over the global batch), repeated `--steps` times for each engine in `--engines` (torch,
ds0..ds3). Rank 0 writes the logged loss (mean over micro-batches and ranks), the grad
norm and the weights after each step.

`train`: a loop that draws its batches from `PromptBatches` and uses every RNG (python
shuffles the rows, numpy picks the prompt lengths, torch draws advantages and attention
dropout), so a resume that restored any of them wrongly would change the losses. Saves
checkpoints, can die right after a save (`--die-after`, os._exit: no cleanup, like a kill)
and can `--resume`. Rank 0 writes the loss of each step it ran.

Not a test module (no `test_` prefix); tests/trainer/test_*.py launch it.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
from functools import partial
from pathlib import Path

import numpy as np
import torch

from referee.trainer import checkpoint, distributed, tiny
from referee.trainer.algorithms.policy_loss import ppo_clip_loss, token_mean
from referee.trainer.data import PromptBatches, PromptRow
from referee.trainer.engine import create_engine
from referee.trainer.logprobs import sequence_logprobs

VOCAB = 101
SEQ = 24


def engine_kwargs(name: str) -> dict:
    if name == "torch":
        return {"use_deepspeed": False}
    if name.startswith("ds") and name[2:].isdigit():
        return {"use_deepspeed": True, "zero_stage": int(name[2:])}
    raise SystemExit(f"unknown engine {name!r}: torch or ds0..ds3")


def fixed_batch(batch: int) -> dict[str, torch.Tensor]:
    """The same rows on every rank: tokens, right padding, response masks, advantages."""
    g = torch.Generator().manual_seed(1234)
    ids = torch.randint(5, VOCAB, (batch, SEQ), generator=g)  # [B, T]
    lengths = torch.randint(SEQ // 2, SEQ + 1, (batch,), generator=g)  # [B]
    prompt = torch.randint(3, SEQ // 3, (batch,), generator=g)  # [B]
    pos = torch.arange(SEQ)  # [T]
    attention = (pos[None, :] < lengths[:, None]).long()  # [B, T]
    ids = ids * attention  # pad id 0
    response = attention.bool() & (pos[None, :] >= prompt[:, None])  # [B, T]
    advantages = torch.randn(batch, generator=g)  # [B]
    return {"ids": ids, "attention": attention, "response": response, "adv": advantages}


def shard(t: torch.Tensor, rank: int, world: int) -> torch.Tensor:
    per = t.shape[0] // world
    return t[rank * per : (rank + 1) * per]


def train_step(engine, micro_batches, num_tokens: int) -> tuple[float, float | None]:
    """One optimiser step over this rank's micro-batches; returns (logged loss, grad norm)."""
    aggregation = partial(token_mean, num_tokens=num_tokens / engine.micro_batches_per_step)
    losses, norm = [], None
    for mb in micro_batches:
        logp = sequence_logprobs(engine, mb["ids"], mb["attention"], mb["response"])  # [n, T]
        out = ppo_clip_loss(
            logp,
            mb["old"],
            mb["adv"],
            mb["response"],
            clip_low=0.2,
            clip_high=0.28,
            aggregation=aggregation,
        )
        engine.backward(out.loss)
        losses.append(out.loss.detach())
        norm = engine.step()
    # The mean over micro-batches and ranks: the global token mean, as the trainer logs it.
    loss = distributed.all_reduce_mean(torch.stack(losses).mean())
    return float(loss), norm


def split(batch: dict[str, torch.Tensor], parts: int) -> list[dict[str, torch.Tensor]]:
    n = next(iter(batch.values())).shape[0] // parts
    return [{k: v[i * n : (i + 1) * n] for k, v in batch.items()} for i in range(parts)]


def run_parity(args: argparse.Namespace) -> None:
    info = distributed.init_distributed()
    results = {}
    full = fixed_batch(args.global_batch)
    mine = {k: shard(v, info.rank, info.world_size) for k, v in full.items()}
    per_rank = args.global_batch // info.world_size
    gas = args.grad_accum
    num_tokens = int(full["response"][:, 1:].sum())  # column 0 is never scored
    for name in args.engines.split(","):
        model = tiny.build_model("tiny", vocab_size=VOCAB, seed=0)
        engine = create_engine(
            model,
            lr=3e-3,
            weight_decay=0.1,
            warmup_steps=1,
            scheduler="linear",
            total_steps=args.steps + 1,
            max_grad_norm=0.5,
            grad_accum_steps=gas,
            micro_batch_size=per_rank // gas,
            **engine_kwargs(name),
        )
        engine.train()
        with torch.no_grad():  # the "rollout" policy's logprobs, fixed for every step
            mine["old"] = sequence_logprobs(
                engine, mine["ids"], mine["attention"], mine["response"]
            )
        micro = split(mine, gas)
        losses, norms, weights = [], [], []
        for _ in range(args.steps):
            loss, norm = train_step(engine, micro, num_tokens)
            losses.append(loss)
            norms.append(norm)
            weights.append(engine.state_dict_for_export())
        results[name] = {"loss": losses, "grad_norm": norms, "weights": weights}
        del mine["old"]
    if info.is_main:
        torch.save(results, args.out)
    distributed.barrier()


# --- resumable training ----------------------------------------------------------------


def make_rows(n: int = 23) -> list[PromptRow]:
    return [PromptRow(str(i), f"{i}+{2 * i}={3 * i}; q{i * 7 % 11}") for i in range(n)]


def draw_batch(rows: list[PromptRow], tokenizer, rank: int, world: int) -> dict:
    """This rank's rows of one batch, made random in all three RNGs."""
    rows = rows[rank::world]
    random.shuffle(rows)  # python RNG
    ids = torch.zeros(len(rows), SEQ, dtype=torch.long)  # [n, T]
    attention = torch.zeros_like(ids)
    response = torch.zeros_like(ids, dtype=torch.bool)
    for i, row in enumerate(rows):
        tok = tokenizer(row.prompt_text, add_special_tokens=False).input_ids[:SEQ]
        ids[i, : len(tok)] = torch.tensor(tok)
        attention[i, : len(tok)] = 1
        start = int(np.random.randint(1, max(2, len(tok) - 1)))  # numpy RNG
        response[i, start : len(tok)] = True
    adv = torch.randn(len(rows))  # torch RNG
    return {"ids": ids, "attention": attention, "response": response, "adv": adv}


def run_train(args: argparse.Namespace) -> None:
    info = distributed.init_distributed()
    distributed.seed_everything(7)
    tokenizer = tiny.build_tokenizer()
    model = tiny.build_model("tiny", tokenizer=tokenizer, seed=0, attention_dropout=0.2)
    engine = create_engine(
        model,
        lr=3e-3,
        weight_decay=0.1,
        warmup_steps=2,
        scheduler="cosine",
        total_steps=args.steps,
        max_grad_norm=1.0,
        grad_accum_steps=args.grad_accum,
        micro_batch_size=args.global_batch // info.world_size // args.grad_accum,
        **engine_kwargs(args.engine),
    )
    engine.train()
    rows = make_rows()
    batches = PromptBatches(rows, batch_size=args.global_batch, seed=3)
    start, losses = 1, {}
    if args.resume:
        state = checkpoint.resume(args.ckpt, engine, data=batches)
        assert state.metrics_cursor == state.step, state
        start = state.step + 1
    for step in range(start, args.steps + 1):
        batch = draw_batch(next(batches), tokenizer, info.rank, info.world_size)
        num_tokens = distributed.all_reduce_mean(float(batch["response"][:, 1:].sum()))
        num_tokens *= info.world_size
        with torch.no_grad():  # old policy: dropout makes it differ from the new pass
            batch["old"] = sequence_logprobs(
                engine, batch["ids"], batch["attention"], batch["response"]
            )
        loss, _ = train_step(engine, split(batch, args.grad_accum), num_tokens)
        losses[step] = loss
        if args.save_every and step % args.save_every == 0:
            checkpoint.save_checkpoint(
                args.ckpt,
                engine,
                step=step,
                data=batches,
                metrics_cursor=step,
                keep_last=args.keep_last,
            )
        if step == args.die_after:
            if info.is_main:
                Path(args.out).write_text(json.dumps(losses))
            sys.stdout.flush()
            os._exit(17)  # a kill: no atexit, no process-group teardown
    if args.export:
        checkpoint.export_hf(engine, args.export, tokenizer)
    if info.is_main:
        Path(args.out).write_text(json.dumps(losses))
    distributed.barrier()


# --- launching (used by the tests) ---------------------------------------------------

_LAUNCHER_VARS = (
    "RANK",
    "WORLD_SIZE",
    "LOCAL_RANK",
    "LOCAL_WORLD_SIZE",
    "GROUP_RANK",
    "ROLE_RANK",
    "MASTER_ADDR",
    "MASTER_PORT",
    "TORCHELASTIC_RUN_ID",
)


def launch(nproc: int, argv: list[str], timeout: float = 120.0) -> subprocess.CompletedProcess:
    """Runs this script in `nproc` fresh processes: plain python for one, else torchrun
    with a standalone rendezvous (it picks a free port). CPU DeepSpeed, one thread each."""
    env = {k: v for k, v in os.environ.items() if k not in _LAUNCHER_VARS}
    env.update(DS_ACCELERATOR="cpu", OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    worker = str(Path(__file__).resolve())
    if nproc == 1:
        cmd = [sys.executable, worker, *argv]
    else:
        cmd = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            f"--nproc-per-node={nproc}",
            worker,
            *argv,
        ]
    return subprocess.run(
        cmd, env=env, capture_output=True, text=True, timeout=timeout, check=False
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("mode", choices=["parity", "train"])
    parser.add_argument("--out", required=True)
    parser.add_argument("--local_rank", type=int, default=None)  # the deepspeed launcher's
    parser.add_argument("--global-batch", type=int, default=8)
    parser.add_argument("--grad-accum", type=int, default=1)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--engines", default="torch,ds0,ds1,ds2,ds3")
    parser.add_argument("--engine", default="ds2")
    parser.add_argument("--ckpt")
    parser.add_argument("--save-every", type=int, default=0)
    parser.add_argument("--keep-last", type=int, default=0)
    parser.add_argument("--die-after", type=int, default=-1)
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--export")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    if args.mode == "parity":
        run_parity(args)
    else:
        run_train(args)
    distributed.shutdown()


if __name__ == "__main__":
    main()
