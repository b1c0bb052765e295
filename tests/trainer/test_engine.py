"""The training engine: schedule, accumulation, clipping, DeepSpeed == plain torch, bf16, LoRA.

DeepSpeed runs in this process as a world of one (gloo, CPU accelerator); the module
fixture tears the process group down afterwards. Multi-process runs are in
test_deepspeed_parity.py and test_checkpoint.py.
"""

from __future__ import annotations

import copy
import math
import os

import pytest
import torch
import torch.nn.functional as F

from referee.trainer import distributed, tiny
from referee.trainer.engine import (
    LRSchedule,
    apply_lora,
    create_engine,
    merge_lora_state_dict,
    param_groups,
)

VOCAB = 101


@pytest.fixture(scope="module", autouse=True)
def _cpu_world_of_one():
    saved = {k: os.environ.get(k) for k in ("DS_ACCELERATOR", "RANK", "WORLD_SIZE", "LOCAL_RANK")}
    os.environ["DS_ACCELERATOR"] = "cpu"
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        os.environ.pop(k, None)
    yield
    distributed.shutdown()
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


def _batch(n: int = 8, t: int = 12, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(5, VOCAB, (n, t), generator=g)  # [N, T]


def _lm_loss(engine, ids: torch.Tensor) -> torch.Tensor:
    logits = engine(input_ids=ids).logits  # [n, T, V]
    return F.cross_entropy(logits[:, :-1].reshape(-1, VOCAB).float(), ids[:, 1:].reshape(-1))


def _train(engine, ids: torch.Tensor, steps: int, grad_accum: int) -> tuple[list, list]:
    """`steps` optimiser steps on `ids` split into `grad_accum` micro-batches. Step k's
    loss is scaled by 10 (k + 1), so clipping changes the update from step to step."""
    losses, norms = [], []
    micro = ids.chunk(grad_accum)
    for k in range(steps):
        total = 0.0
        for i, mb in enumerate(micro):
            assert engine.is_boundary == (i == grad_accum - 1)
            loss = _lm_loss(engine, mb) * 10 * (k + 1)
            engine.backward(loss)
            total += loss.item() / grad_accum
            norm = engine.step()
            assert (norm is None) == (i < grad_accum - 1)
        losses.append(total)
        norms.append(norm)
    return losses, norms


def _weights(engine) -> dict[str, torch.Tensor]:
    state = engine.state_dict_for_export()
    assert state is not None
    return state


def _max_diff(a, b) -> float:
    assert a.keys() == b.keys()
    return max((a[k].float() - b[k].float()).abs().max().item() for k in a)


def _model(**overrides):
    return tiny.build_model("tiny", vocab_size=VOCAB, seed=0, **overrides)


COMMON = dict(lr=3e-3, weight_decay=0.1, warmup_steps=1, max_grad_norm=1.0)


# --- schedule and parameter groups ---------------------------------------------------


def test_lr_schedule_shapes():
    assert [LRSchedule()(s) for s in range(3)] == [1.0, 1.0, 1.0]
    assert [LRSchedule(4)(s) for s in range(6)] == [0.25, 0.5, 0.75, 1.0, 1.0, 1.0]
    linear = LRSchedule(2, 6, "linear")
    assert [linear(s) for s in range(7)] == [0.5, 1.0, 1.0, 0.75, 0.5, 0.25, 0.0]
    cosine = LRSchedule(0, 4, "cosine")
    assert [cosine(s) for s in range(5)] == pytest.approx(
        [1.0, 0.5 + 0.5 * math.cos(math.pi / 4), 0.5, 0.5 - 0.5 * math.cos(math.pi / 4), 0.0]
    )
    with pytest.raises(ValueError, match="total_steps"):
        LRSchedule(0, None, "linear")
    with pytest.raises(ValueError, match="exceed warmup_steps"):
        LRSchedule(5, 5, "cosine")


def test_param_groups_decay_matrices_only():
    model = _model(arch="qwen2")  # q/k/v biases: 1-D parameters besides the norms
    decay, no_decay = param_groups(model, 0.1)
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert all(p.ndim == 2 for p in decay["params"])
    assert all(p.ndim == 1 for p in no_decay["params"])
    n = sum(len(g["params"]) for g in (decay, no_decay))
    assert n == len(list(model.parameters()))  # tied embedding counted once


def test_engine_follows_the_schedule():
    engine = create_engine(
        _model(), lr=1e-2, warmup_steps=2, scheduler="linear", total_steps=4, use_deepspeed=False
    )
    lrs = []
    for _ in range(4):
        lrs.append(engine.lr)
        engine.backward(_lm_loss(engine, _batch(2)))
        engine.step()
    assert lrs == pytest.approx([5e-3, 1e-2, 1e-2, 5e-3])
    assert engine.global_step == 4


# --- plain torch -------------------------------------------------------------------


def test_accumulation_matches_one_big_batch():
    ids = _batch(8)
    whole = create_engine(_model(), **COMMON, use_deepspeed=False)
    accum = create_engine(_model(), **COMMON, grad_accum_steps=4, use_deepspeed=False)
    assert accum.micro_batches_per_step == 4
    losses_w, norms_w = _train(whole, ids, steps=3, grad_accum=1)
    losses_a, norms_a = _train(accum, ids, steps=3, grad_accum=4)
    assert losses_a == pytest.approx(losses_w, rel=1e-5)
    assert norms_a == pytest.approx(norms_w, rel=1e-5)
    # Summation order differs; Adam's m / sqrt(v) magnifies that on near-zero gradients.
    assert _max_diff(_weights(whole), _weights(accum)) < 1e-4
    assert whole.global_step == accum.global_step == 3


def test_step_is_clip_then_adamw_and_returns_the_pre_clip_norm():
    # A hand-written reference: clip the global norm to 0.1, then torch AdamW.
    model = _model()
    ref = copy.deepcopy(model)
    opt = torch.optim.AdamW(param_groups(ref, 0.1), lr=3e-3)
    engine = create_engine(model, lr=3e-3, weight_decay=0.1, max_grad_norm=0.1, use_deepspeed=False)
    unclipped = create_engine(
        _model(), lr=3e-3, weight_decay=0.1, max_grad_norm=0, use_deepspeed=False
    )
    for k, scale in enumerate([1.0, 100.0, 0.01]):  # norms far above and below 0.1
        ids = _batch(4, seed=k)
        (_lm_loss(ref, ids) * scale).backward()
        expected = torch.nn.utils.clip_grad_norm_(list(ref.parameters()), 0.1)
        opt.step()
        opt.zero_grad()
        for eng in (engine, unclipped):
            eng.backward(_lm_loss(eng, ids) * scale)
        assert engine.step() == pytest.approx(float(expected), rel=1e-5)
        unclipped.step()
        assert all(p.grad is None for p in engine.module.parameters())  # cleared
    assert _max_diff(ref.state_dict(), _weights(engine)) < 1e-6
    assert _max_diff(_weights(unclipped), _weights(engine)) > 1e-3  # clipping mattered


def test_torch_bf16_keeps_fp32_master_weights():
    ids = _batch(4)
    ref = create_engine(_model(), **COMMON, use_deepspeed=False)
    bf16 = create_engine(_model(), **COMMON, dtype="bf16", use_deepspeed=False)
    assert next(bf16.module.parameters()).dtype == torch.bfloat16
    losses_ref, _ = _train(ref, ids, steps=3, grad_accum=1)
    losses_bf16, _ = _train(bf16, ids, steps=3, grad_accum=1)
    assert losses_bf16 == pytest.approx(losses_ref, rel=2e-2)
    weights = _weights(bf16)
    assert next(iter(weights.values())).dtype == torch.bfloat16
    # Updates of ~lr are far below bf16's resolution at 1.0; the fp32 masters keep them.
    assert _max_diff(weights, _weights(ref)) < 2e-2


# --- DeepSpeed (world of one, in this process) --------------------------------------


@pytest.mark.parametrize("stage", [0, 1, 2, 3])
def test_deepspeed_matches_plain_torch(stage):
    ids = _batch(8)
    ref = create_engine(_model(), **COMMON, grad_accum_steps=2, use_deepspeed=False)
    ds = create_engine(_model(), **COMMON, grad_accum_steps=2, micro_batch_size=4, zero_stage=stage)
    assert ds.micro_batches_per_step == 2
    losses_ref, norms_ref = _train(ref, ids, steps=3, grad_accum=2)
    losses_ds, norms_ds = _train(ds, ids, steps=3, grad_accum=2)
    assert losses_ds == pytest.approx(losses_ref, rel=1e-5)
    assert norms_ds == pytest.approx(norms_ref, rel=1e-5)
    assert _max_diff(_weights(ref), _weights(ds)) < 1e-4
    assert ds.global_step == 3
    assert ds.lr == pytest.approx(ref.lr)


def test_deepspeed_offload_optimizer_matches_plain_torch():
    ids = _batch(4)
    ref = create_engine(_model(), **COMMON, use_deepspeed=False)
    ds = create_engine(_model(), **COMMON, micro_batch_size=4, zero_stage=2, offload_optimizer=True)
    losses_ref, _ = _train(ref, ids, steps=2, grad_accum=1)
    losses_ds, _ = _train(ds, ids, steps=2, grad_accum=1)
    assert losses_ds == pytest.approx(losses_ref, rel=1e-5)
    assert _max_diff(_weights(ref), _weights(ds)) < 1e-4


@pytest.mark.parametrize("stage", [0, 2])
def test_deepspeed_bf16_trains(stage):
    ids = _batch(4)
    engine = create_engine(_model(), **COMMON, micro_batch_size=4, zero_stage=stage, dtype="bf16")
    assert next(engine.module.parameters()).dtype == torch.bfloat16
    before = _weights(engine)
    losses, norms = _train(engine, ids, steps=3, grad_accum=1)
    assert all(math.isfinite(x) for x in losses + norms)
    assert losses[2] / 30 < losses[0] / 10  # unscaled loss goes down
    assert _max_diff(before, _weights(engine)) > 1e-3


# --- LoRA ----------------------------------------------------------------------------


@pytest.mark.parametrize("use_deepspeed", [False, True], ids=["torch", "ds3"])
def test_lora_trains_adapters_and_exports_merged(use_deepspeed):
    base = _model()
    frozen = {k: v.clone() for k, v in base.state_dict().items()}
    peft_model = apply_lora(base, r=4, alpha=8, target_modules=["q_proj", "v_proj"])
    engine = create_engine(
        peft_model, lr=1e-2, use_deepspeed=use_deepspeed, zero_stage=3, micro_batch_size=4
    )
    _train(engine, _batch(4), steps=3, grad_accum=1)
    merged = engine.state_dict_for_export()
    assert merged is not None and merged.keys() == frozen.keys()
    # Only the adapted projections changed, and they did.
    changed = {k for k in frozen if not torch.equal(frozen[k], merged[k])}
    assert changed and all(("q_proj" in k or "v_proj" in k) for k in changed)
    if not use_deepspeed:  # peft's own merge agrees with ours
        ref = copy.deepcopy(engine.module).merge_and_unload().state_dict()
        assert _max_diff(ref, merged) < 1e-6
        plain = _model()
        plain.load_state_dict(merged)
        ids = _batch(2)
        with torch.no_grad():
            expected = engine.module(input_ids=ids).logits
            assert torch.allclose(plain(input_ids=ids).logits, expected, atol=1e-5)


def test_merge_refuses_what_it_cannot_merge():
    peft_model = apply_lora(_model(), r=2, target_modules=["q_proj"])
    state = peft_model.state_dict()
    state["base_model.model.model.layers.0.self_attn.q_proj.lora_magnitude_vector"] = torch.ones(1)
    with pytest.raises(NotImplementedError, match="cannot merge"):
        merge_lora_state_dict(peft_model, state)


# --- distributed helpers (world of one; two processes run in the parity tests) -------


def test_seeding_is_per_rank_and_rank_zero_keeps_the_seed():
    assert distributed.seed_everything(5, rank=0) == 5
    a = torch.rand(3)
    assert distributed.seed_everything(5, rank=1) == 5 + distributed.RANK_SEED_STRIDE
    b = torch.rand(3)
    distributed.seed_everything(5, rank=0)
    assert torch.equal(torch.rand(3), a) and not torch.equal(a, b)


def test_helpers_work_in_a_world_of_one():
    assert distributed.all_reduce_mean(2.5) == 2.5
    t = torch.tensor([1.0, 2.0], dtype=torch.bfloat16)
    out = distributed.all_reduce_mean(t)
    assert out.dtype == torch.float32 and out.tolist() == [1.0, 2.0]
    distributed.barrier()
    assert distributed.is_main() and distributed.world_size() == 1
