"""`RewardModelService` on a real server (port 0, a real channel), with tiny models
built in the test: batch invariance (RewardBench #137), the reference forward, both
padding sides, truncation policies, bad input, ListRewards, normalisation, streams,
timeouts, a failing forward and a model process that dies.

Tests of scores run the forwards in a model process, as `referee serve reward-model`
does; tests of the request handling around them use `model_process=False` (forwards on
a thread, the same `score_batch`), which starts seconds quicker."""

from __future__ import annotations

import asyncio
import functools
import os
import random
import signal
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import grpc
import pytest
import pytest_asyncio
import torch
from rm_kit import reference_score, start_rm, varied_samples
from service_kit import metric

from referee.rewardsvc.client import RewardCallError, RewardClient
from referee.rewardsvc.reward_model import RewardModelService
from referee.rewardsvc.rm_model import RewardModel, encode_pair, load_reward_model
from referee.rewardsvc.rm_process import ModelProcess
from referee.rewardsvc.rm_tiny import build_tiny_reward_model
from referee.rewardsvc.server import ServerHandle
from referee.types import Score, Status
from referee.v1 import reward_pb2 as pb
from referee.v1 import reward_pb2_grpc

pytestmark = pytest.mark.asyncio(loop_scope="module")
TOL = 1e-5


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_reward_model(tmp_path_factory.mktemp("rm") / "llama", "llama")


@pytest.fixture(scope="module")
def bert_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_reward_model(tmp_path_factory.mktemp("rm") / "bert", "bert", hidden_size=128)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def rm_servers() -> AsyncIterator[Callable[..., Any]]:
    started: list[ServerHandle] = []

    async def start(model: Path, **fields: Any) -> ServerHandle:
        handle = await start_rm(model, **fields)
        started.append(handle)
        return handle

    yield start
    for handle in started:
        await handle.stop(0)


@functools.cache
def loaded(path: Path) -> RewardModel:
    """The model loaded in the test process, for reference scores: a server holds its own
    in a child process."""
    return load_reward_model(path)


def service_of(handle: ServerHandle) -> RewardModelService:
    service = handle.services[0]
    assert isinstance(service, RewardModelService)
    return service


async def score(handle: ServerHandle, rows: list[dict[str, Any]], reward: str = "reward_model") -> list[Score]:
    async with RewardClient(handle.address, timeout_s=60) as c:
        return await c.score(reward, rows)


async def alone_then_mixed(handle: ServerHandle, rows: list[dict[str, Any]]) -> tuple[list[float], list[float]]:
    """Each row in its own request, one after another; then all rows spread over
    concurrent requests of 1-4 rows in shuffled order (so forwards mix lengths)."""
    alone = []
    for row in rows:
        [s] = await score(handle, [row])
        assert s.status is Status.OK, s.reason
        alone.append(s.value)
    order = list(range(len(rows)))
    random.Random(1).shuffle(order)
    groups: list[list[int]] = []
    while order:
        k = min(len(order), 1 + len(groups) % 4)
        groups.append(order[:k])
        order = order[k:]
    answers = await asyncio.gather(*(score(handle, [rows[i] for i in g]) for g in groups))
    mixed = [0.0] * len(rows)
    for g, got in zip(groups, answers, strict=True):
        for i, s in zip(g, got, strict=True):
            assert s.status is Status.OK and s.id == rows[i]["id"], s.reason
            mixed[i] = s.value  # type: ignore[assignment]
    return alone, mixed  # type: ignore[return-value]


def forwards(handle: ServerHandle) -> tuple[float, float]:
    """(forwards run, samples in them) so far."""
    return metric(handle, "referee_rm_batch_size_count"), metric(handle, "referee_rm_batch_size_sum")


@pytest.mark.parametrize("padding_side", ["right", "left"])
async def test_decoder_scores_do_not_depend_on_the_batch_or_padding_side(
    rm_servers: Callable[..., Any], llama_dir: Path, padding_side: str
) -> None:
    handle = await rm_servers(llama_dir, max_batch_size=16, max_wait_ms=30, padding_side=padding_side)
    rm = loaded(llama_dir)
    rows = varied_samples(64)
    n0, s0 = forwards(handle)
    alone, mixed = await alone_then_mixed(handle, rows)
    n1, s1 = forwards(handle)
    assert s1 - s0 == 128
    assert n1 - n0 < 64 + 40, "the mixed requests were not batched together"
    refs = [reference_score(rm, r) for r in rows]
    lengths = {len(encode_pair(rm, r["prompt"], r["completion"], 1024).ids) for r in rows}
    assert len(lengths) > 30  # the batches really mixed lengths
    for i in range(64):
        assert abs(alone[i] - refs[i]) <= TOL, (i, alone[i], refs[i])
        assert abs(mixed[i] - refs[i]) <= TOL, (i, mixed[i], refs[i])
    assert max(refs) - min(refs) > 0.5  # the scores spread: 1e-5 means something


async def test_the_models_own_pooling_would_read_the_wrong_token(llama_dir: Path) -> None:
    """Why the service pools from the attention mask: with pad == end-of-turn and a
    template ending in it, transformers' pad-id search skips the real last token."""
    rm = loaded(llama_dir)
    row = varied_samples(1)[0]
    enc = encode_pair(rm, row["prompt"], row["completion"], 1024)
    assert enc.ids[-1] == rm.tokenizer.pad_token_id
    with torch.inference_mode():
        own = float(rm.model(input_ids=torch.tensor([enc.ids])).logits[0, 0])
    assert abs(own - reference_score(rm, row)) > 1e-3


async def test_encoder_scores_do_not_depend_on_the_batch(rm_servers: Callable[..., Any], bert_dir: Path) -> None:
    handle = await rm_servers(bert_dir, max_batch_size=16, max_wait_ms=30)
    rm = loaded(bert_dir)
    assert service_of(handle).rm.pooling == "model" and not service_of(handle).rm.chat
    rows = varied_samples(64, seed=3)
    alone, mixed = await alone_then_mixed(handle, rows)
    for i, row in enumerate(rows):
        ref = reference_score(rm, row, 512)
        assert abs(alone[i] - ref) <= TOL and abs(mixed[i] - ref) <= TOL, (i, alone[i], mixed[i], ref)
    enc = encode_pair(rm, "a b", "c", 512)  # a text pair with BERT's special tokens
    tok = rm.tokenizer
    assert enc.ids[0] == tok.cls_token_id and enc.ids.count(tok.sep_token_id) == 2
    assert enc.type_ids is not None and enc.type_ids[-1] == 1


async def test_chat_template_renders_prompt_and_completion(rm_servers: Callable[..., Any], llama_dir: Path) -> None:
    rm = service_of(await rm_servers(llama_dir, model_process=False)).rm
    enc = encode_pair(rm, "What is 2+2?", "4", 1024)
    text = rm.tokenizer.apply_chat_template(
        [{"role": "user", "content": "What is 2+2?"}, {"role": "assistant", "content": "4"}], tokenize=False)
    assert enc.ids == rm.tokenizer(text, add_special_tokens=False).input_ids
    assert enc.type_ids is None and not enc.truncated


@pytest.mark.parametrize("policy", ["left", "right"])
async def test_truncation_is_reported_per_sample(rm_servers: Callable[..., Any], llama_dir: Path, policy: str) -> None:
    handle = await rm_servers(llama_dir, max_length=40, truncation=policy)
    rm = loaded(llama_dir)
    long_row = {"id": "long", "prompt": "add these numbers please " * 4, "completion": "the sum is 10 " * 5}
    short_row = {"id": "short", "prompt": "hi", "completion": "ok"}
    long, short = await score(handle, [long_row, short_row])
    assert long.status is Status.OK and short.status is Status.OK
    assert (long.components["truncated"], long.components["tokens"]) == (1.0, 40.0)
    assert (short.components["truncated"], short.components["tokens"]) == (0.0, short.components["tokens"])
    assert short.components["tokens"] < 40
    assert f"({policy})" in long.reason and "-> 40 tokens" in long.reason
    full = encode_pair(rm, long_row["prompt"], long_row["completion"], 10_000).ids
    kept = encode_pair(rm, long_row["prompt"], long_row["completion"], 40, policy).ids  # type: ignore[arg-type]
    assert kept == (full[-40:] if policy == "left" else full[:40])
    assert abs(long.value - reference_score(rm, long_row, 40, policy)) <= TOL  # type: ignore[operator]
    assert metric(handle, "referee_rm_truncated_total") >= 1


async def test_truncation_error_is_invalid_input(rm_servers: Callable[..., Any], llama_dir: Path) -> None:
    handle = await rm_servers(llama_dir, max_length=40, truncation="error", model_process=False)
    long, short = await score(handle, [{"id": "long", "prompt": "x" * 50, "completion": "y"},
                                       {"id": "short", "prompt": "hi", "completion": "ok"}])
    assert (long.status, long.value) == (Status.INVALID_INPUT, None)
    assert "> max_length 40" in long.reason and "sample 0 (id 'long')" in long.reason
    assert short.status is Status.OK


async def test_bad_input_and_bad_requests(rm_servers: Callable[..., Any], llama_dir: Path) -> None:
    handle = await rm_servers(llama_dir, model_process=False)
    missing, good = await score(handle, [{"id": "none", "prompt": "hi"}, {"id": "ok", "completion": "x"}])
    assert (missing.status, missing.value) == (Status.INVALID_INPUT, None)
    assert "has no completion" in missing.reason
    assert good.status is Status.OK
    async with RewardClient(handle.address, timeout_s=30) as c:
        with pytest.raises(RewardCallError) as e:
            await c.score("nope", [{"completion": "x"}])
        assert e.value.code is grpc.StatusCode.INVALID_ARGUMENT and "reward_model" in e.value.details
        with pytest.raises(RewardCallError) as e:
            await c.score("reward_model", [{"completion": "x"}], {"temperature": 1})
        assert e.value.code is grpc.StatusCode.INVALID_ARGUMENT and "takes no params" in e.value.details


async def test_list_rewards_names_the_model_and_its_settings(rm_servers: Callable[..., Any], llama_dir: Path) -> None:
    handle = await rm_servers(llama_dir, name="helpfulness", max_length=256)
    async with RewardClient(handle.address, timeout_s=30) as c:
        [info] = await c.list_rewards()
        assert (info.name, info.kind) == ("helpfulness", "model")
        assert info.version.startswith("1+") and len(info.version) == 14
        assert "LlamaForSequenceClassification" in info.description and "max_length 256" in info.description
        [s] = await c.score("helpfulness", [{"completion": "x"}])
        assert s.status is Status.OK
    other = service_of(await rm_servers(llama_dir, name="helpfulness", max_length=128, model_process=False))
    assert other.version != service_of(handle).version  # a setting that changes scores changes it


async def test_normalisation(rm_servers: Callable[..., Any], llama_dir: Path) -> None:
    rows = varied_samples(16, seed=5)
    fixed = await score(await rm_servers(llama_dir, normalize="fixed", norm_offset=0.5, norm_scale=2.0,
                                         model_process=False), rows)
    for s in fixed:
        assert s.value == pytest.approx((s.components["raw"] - 0.5) / 2.0)
    running = await score(await rm_servers(llama_dir, normalize="running", model_process=False), rows)
    values = [s.value for s in running]
    assert sum(values) / len(values) == pytest.approx(0.0, abs=1e-9)  # type: ignore[arg-type]
    assert sum(v * v for v in values) / len(values) == pytest.approx(1.0)  # type: ignore[operator]


async def test_stream_requests_share_forwards(rm_servers: Callable[..., Any], llama_dir: Path) -> None:
    handle = await rm_servers(llama_dir, max_wait_ms=50, model_process=False)
    rows = varied_samples(8, seed=7)
    expected = {s.id: s.value for s in await score(handle, rows)}
    n0, _ = forwards(handle)

    async def requests() -> AsyncIterator[pb.ScoreRequest]:
        for i, row in enumerate(rows):
            msg = pb.Sample(id=row["id"], completion=row["completion"])
            if isinstance(row["prompt"], str):
                msg.prompt_text = row["prompt"]
            else:
                msg.prompt_messages.messages.extend(pb.ChatMessage(**m) for m in row["prompt"])
            yield pb.ScoreRequest(reward="reward_model", samples=[msg], request_id=f"r{i}")

    async with grpc.aio.insecure_channel(handle.address) as ch:
        got = [r async for r in reward_pb2_grpc.RewardServiceStub(ch).ScoreStream(requests(), timeout=60)]
    assert sorted(r.request_id for r in got) == [f"r{i}" for i in range(8)]
    for r in got:
        assert abs(r.scores[0].value - expected[r.scores[0].id]) <= TOL  # type: ignore[operator]
    assert forwards(handle)[0] - n0 < 8


async def test_a_sample_past_its_time_limit_is_timeout(rm_servers: Callable[..., Any], llama_dir: Path) -> None:
    # Alone in the queue, a sample waits max_wait_ms for batch-mates: longer than its limit.
    handle = await rm_servers(llama_dir, max_wait_ms=1000, timeout_s=0.05, model_process=False)
    [s] = await score(handle, [{"id": "slow", "completion": "x"}])
    assert (s.status, s.value) == (Status.TIMEOUT, None)
    assert "not scored within 0.05s" in s.reason


async def test_a_failed_forward_fails_its_samples_not_the_server(
    rm_servers: Callable[..., Any], llama_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    handle = await rm_servers(llama_dir, model_process=False)
    service = service_of(handle)
    real = service._batcher._forward

    def out_of_memory(items: list[Any]) -> list[float]:
        raise RuntimeError("CUDA out of memory (simulated)")

    monkeypatch.setattr(service._batcher, "_forward", out_of_memory)
    [s] = await score(handle, [{"id": "a", "completion": "x"}])
    assert (s.status, s.value) == (Status.ERROR, None)
    assert "out of memory (simulated)" in s.reason
    monkeypatch.setattr(service._batcher, "_forward", real)
    [s] = await score(handle, [{"id": "a", "completion": "x"}])
    assert s.status is Status.OK


async def test_a_dead_model_process_fails_its_batch_and_is_replaced(llama_dir: Path) -> None:
    handle = await start_rm(llama_dir)
    process = service_of(handle)._process
    assert process is not None and process.pid is not None
    try:
        [before] = await score(handle, [{"id": "a", "completion": "x"}])
        assert before.status is Status.OK
        first = process.pid
        os.kill(first, signal.SIGKILL)
        [lost] = await score(handle, [{"id": "a", "completion": "x"}])
        assert (lost.status, lost.value) == (Status.ERROR, None)
        assert "model process died" in lost.reason
        [after] = await score(handle, [{"id": "a", "completion": "x"}])
        assert after.status is Status.OK and after.value == before.value
        assert process.pid not in (None, first)
        child = process._proc
    finally:
        await handle.stop(0)
    assert child is not None and child.returncode is not None  # stopped with the server


async def test_model_process_reports_the_model_and_raises_forward_errors(bert_dir: Path) -> None:
    process = ModelProcess(bert_dir)
    try:
        rm = process.rm
        assert rm.model is None  # the weights are in the child only
        assert (rm.pooling, rm.architecture, rm.pass_type_ids) == ("model", "BertForSequenceClassification", True)
        enc = encode_pair(rm, "a b", "c", 512)
        [value] = process.score([enc], "right")
        assert abs(value - reference_score(loaded(bert_dir), {"prompt": "a b", "completion": "c"}, 512)) <= TOL
        with pytest.raises(ValueError, match="padding_side 'left' is not supported"):
            process.score([enc], "left")
        assert process.score([enc], "right") == [value]  # the child lives on
    finally:
        process.close()
    with pytest.raises(ValueError, match="no config.json"):
        ModelProcess(bert_dir / "nope")
