"""The sglang rollout engine against a recording stand-in for SGLang's native API.

Field names checked against SGLang io_struct.py GenerateReqInput / sampling params at
commit 001067f (main, after v0.5.3rc2).
"""

from __future__ import annotations

import threading
import time

import pytest
from sglang_fake import FakeSGLang, fake_tokens

from referee.testing import free_port
from referee.trainer.rollout import RolloutEngine, SamplingParams
from referee.trainer.rollout.sglang import (
    SGLangEngine,
    SGLangUnavailableError,
    parse_completion,
    sample_seed,
)

# GenerateReqInput fields the engine may send (io_struct.py @ 001067f).
GENERATE_FIELDS = {"rid", "input_ids", "sampling_params", "return_logprob", "stream"}
# SamplingParams keys the engine may send (sampling_params.py @ 001067f).
SAMPLING_FIELDS = {
    "n",
    "temperature",
    "top_p",
    "top_k",
    "max_new_tokens",
    "stop",
    "stop_token_ids",
    "sampling_seed",
}

PROMPTS = [[5, 6, 7], [8, 9]]


@pytest.fixture
def server():
    with FakeSGLang() as fake:
        yield fake


def test_requests_one_per_sample_with_distinct_seeds(server: FakeSGLang) -> None:
    engine = SGLangEngine([server.url], health_timeout_s=5)
    assert isinstance(engine, RolloutEngine)
    params = SamplingParams(
        n=3, temperature=0.7, top_p=0.9, top_k=20, max_new_tokens=8,
        stop=("###",), stop_token_ids=(2,), seed=11,
    )  # fmt: skip
    groups = engine.generate(PROMPTS, params)
    assert server.state.paths()[0] == "/health_generate"
    bodies = server.state.bodies("/generate")
    assert len(bodies) == 6
    for body in bodies:
        assert set(body) <= GENERATE_FIELDS and set(body["sampling_params"]) <= SAMPLING_FIELDS
        assert body["return_logprob"] is True and body["stream"] is False
        sp = body["sampling_params"]
        assert sp["n"] == 1 and sp["temperature"] == 0.7 and sp["top_p"] == 0.9
        assert sp["top_k"] == 20 and sp["max_new_tokens"] == 8
        assert sp["stop"] == ["###"] and sp["stop_token_ids"] == [2]
    assert len({b["rid"] for b in bodies}) == 6
    seeds = {(tuple(b["input_ids"]), b["sampling_params"]["sampling_seed"]) for b in bodies}
    assert len(seeds) == 6  # every (prompt, sample) its own seed
    expected = {sample_seed(11, i, j) for i in range(2) for j in range(3)}
    assert {s for _, s in seeds} == expected
    # samples of one prompt differ; results come back in prompt and sample order
    for i, group in enumerate(groups):
        assert [c.sample_index for c in group] == [0, 1, 2]
        assert {c.prompt_index for c in group} == {i}
        assert len({tuple(c.token_ids) for c in group}) == 3
        for j, c in enumerate(group):
            assert c.token_ids == fake_tokens(PROMPTS[i], sample_seed(11, i, j), 8)


def test_parses_completions(server: FakeSGLang) -> None:
    server.state.weight_version = "4"
    engine = SGLangEngine([server.url], health_timeout_s=5)
    stop = engine.generate([[1, 2]], SamplingParams(n=1, max_new_tokens=8, seed=0))[0][0]
    assert stop.prompt_ids == [1, 2] and len(stop.token_ids) == 3
    assert stop.logprobs == [-0.5, -1.0, -1.5]
    assert stop.finish_reason == "stop" and stop.matched_stop == stop.token_ids[-1]
    assert stop.weight_version == 4 and stop.text.startswith("t")
    cut = engine.generate([[1, 2]], SamplingParams(n=1, max_new_tokens=2, seed=0))[0][0]
    assert cut.finish_reason == "length" and len(cut.token_ids) == 2 and cut.matched_stop is None
    # "default" (no sync yet) falls back to the engine's own version
    answer = {"output_ids": [3], "meta_info": {"output_token_logprobs": [[-1.0, 3, None]],
              "finish_reason": {"type": "stop", "matched": 3}, "weight_version": "default"}}  # fmt: skip
    c = parse_completion(answer, prompt_index=0, sample_index=0, prompt_ids=[1], default_version=7)
    assert c.weight_version == 7


def test_groups_delivered_as_they_complete(server: FakeSGLang) -> None:
    engine = SGLangEngine([server.url], health_timeout_s=5)
    seen: list[tuple[int, int]] = []
    groups = engine.generate(
        PROMPTS, SamplingParams(n=2, seed=1), on_group=lambda i, g: seen.append((i, len(g)))
    )
    assert sorted(seen) == [(0, 2), (1, 2)] and [len(g) for g in groups] == [2, 2]


def test_load_spread_by_outstanding_requests() -> None:
    with FakeSGLang() as slow, FakeSGLang() as fast:
        slow.state.generate_delay_s = 0.4
        engine = SGLangEngine([slow.url, fast.url], health_timeout_s=5, max_concurrency=2)
        engine.generate([[1, 2, 3]], SamplingParams(n=10, seed=3))
        n_slow, n_fast = len(slow.state.bodies("/generate")), len(fast.state.bodies("/generate"))
        assert n_slow + n_fast == 10
        assert n_slow <= 2 < n_fast  # the busy server gets no new request while it is busy
    with FakeSGLang() as a, FakeSGLang() as b:
        a.state.generate_delay_s = b.state.generate_delay_s = 0.2
        engine = SGLangEngine([a.url, b.url], health_timeout_s=5)
        engine.generate([[1], [2]], SamplingParams(n=4, seed=3))
        assert len(a.state.bodies("/generate")) == len(b.state.bodies("/generate")) == 4


def test_retries_5xx_then_succeeds(server: FakeSGLang) -> None:
    server.state.generate_failures = [503, 502]
    engine = SGLangEngine([server.url], health_timeout_s=5, retry_total_s=10)
    groups = engine.generate([[4, 4]], SamplingParams(n=1, seed=2))
    assert len(groups[0][0].token_ids) == 3
    rids = [b["rid"] for b in server.state.bodies("/generate")]
    assert len(rids) == 3 and len(set(rids)) == 1  # the same request, retried


def test_waits_for_a_server_that_comes_up_late() -> None:
    port = free_port()
    started: list[FakeSGLang] = []

    def start_later() -> None:
        time.sleep(0.6)
        started.append(FakeSGLang(port=port))

    thread = threading.Thread(target=start_later)
    thread.start()
    try:
        t0 = time.monotonic()
        engine = SGLangEngine([f"http://127.0.0.1:{port}"], health_timeout_s=10)
        assert time.monotonic() - t0 >= 0.5
        assert engine.generate([[1]], SamplingParams(n=2, seed=0))[0][1].token_ids
    finally:
        thread.join()
        for fake in started:
            fake.stop()


def test_health_timeout_names_the_url() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(SGLangUnavailableError, match=f"{url} not healthy after 0.3s"):
        SGLangEngine([url], health_timeout_s=0.3)


def test_gives_up_after_retry_total_s() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    engine = SGLangEngine([url], wait_for_health=False, retry_total_s=0.5)
    t0 = time.monotonic()
    with pytest.raises(SGLangUnavailableError, match="retry_total_s=0.5") as info:
        engine.generate([[1]], SamplingParams(n=2, seed=0))
    assert url in str(info.value) and "ConnectError" in str(info.value)
    assert 0.4 <= time.monotonic() - t0 < 5


def test_persistent_5xx_raises_never_partial(server: FakeSGLang) -> None:
    server.state.generate_failures = [503] * 1000
    engine = SGLangEngine([server.url], health_timeout_s=5, retry_total_s=0.4)
    with pytest.raises(SGLangUnavailableError, match="HTTP 503"):
        engine.generate([[1], [2]], SamplingParams(n=2, seed=0))


def test_close_aborts_in_flight_requests(server: FakeSGLang) -> None:
    server.state.hold_until_abort = True
    engine = SGLangEngine([server.url], health_timeout_s=5)
    out: list = []
    thread = threading.Thread(
        target=lambda: out.append(engine.generate([[1, 2]], SamplingParams(n=2, seed=0)))
    )
    thread.start()
    deadline = time.monotonic() + 5
    while len(server.state.bodies("/generate")) < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    engine.close()
    thread.join(timeout=5)
    rids = {b["rid"] for b in server.state.bodies("/generate")}
    assert {b["rid"] for b in server.state.bodies("/abort_request")} == rids
    assert [c.finish_reason for c in out[0][0]] == ["abort", "abort"]
    engine.close()  # idempotent
    with pytest.raises(RuntimeError, match="closed"):
        engine.generate([[1]], SamplingParams())
