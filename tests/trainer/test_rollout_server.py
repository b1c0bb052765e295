"""`referee serve rollout`: a real server process on a free port, spoken to over HTTP.

The server runs `tiny:tiny`, whose weights are a function of a fixed seed, so the test
rebuilds the same model in process and checks the server's logprobs against the
trainer's scoring pass (`sequence_logprobs`), before and after a weight update.
Concurrent requests are sent with httpx's async client; the batching tests queue them
behind a pause so that what gets merged does not depend on timing.
"""

from __future__ import annotations

import asyncio
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
import torch

from referee.testing import serve_process
from referee.trainer import tiny
from referee.trainer.logprobs import sequence_logprobs

MAX_TOTAL_TOKENS = 4096


@pytest.fixture(scope="module")
def tok():
    return tiny.build_tokenizer()


@pytest.fixture(scope="module")
def model(tok):
    return tiny.build_model("tiny", tokenizer=tok).eval()  # what the server built


@pytest.fixture(scope="module")
def server():
    args = ["rollout", "--model", "tiny:tiny", "--max-total-tokens", str(MAX_TOTAL_TOKENS)]
    with serve_process(args) as srv:
        yield srv


@pytest.fixture(scope="module")
def http(server):
    with httpx.Client(base_url=f"http://{server.address}", timeout=120) as client:
        yield client


def trainer_logprobs(
    model, prompt: list[int], output: list[int], temperature: float
) -> list[float]:
    ids = torch.tensor([prompt + output])  # [1, T]
    response = torch.zeros_like(ids, dtype=torch.bool)  # [1, T]
    response[0, len(prompt) :] = True
    with torch.no_grad():
        lp = sequence_logprobs(model, ids, torch.ones_like(ids), response, temperature)  # [1, T]
    return lp[0, len(prompt) :].tolist()


def generate(http, **body):
    r = http.post("/generate", json=body)
    assert r.status_code == 200, r.text
    return r.json()


def message_of(r: httpx.Response) -> str:
    body = r.json()
    return body.get("message") or body["error"]["message"]


def test_health_model_info_and_models(http):
    assert http.get("/health").status_code == 200
    assert http.get("/health_generate").status_code == 200
    info = http.get("/get_model_info").json()
    assert info["model_path"] == "tiny:tiny"
    assert info["is_generation"] is True
    assert info["weight_version"] == "default"
    assert http.get("/get_weight_version").json() == {"weight_version": "default"}
    card = http.get("/v1/models").json()["data"][0]
    assert card["id"] == "tiny:tiny" and card["max_model_len"] == 1024


def test_generate_text_logprobs_match_the_trainer(http, tok, model):
    prompt_text = "12+30="
    out = generate(
        http,
        text=prompt_text,
        sampling_params={"temperature": 0.7, "max_new_tokens": 8, "sampling_seed": 3},
        return_logprob=True,
        rid="probe",
    )
    assert isinstance(out, dict)
    meta = out["meta_info"]
    assert meta["id"] == "probe" and meta["weight_version"] == "default"
    prompt = tok(prompt_text).input_ids
    assert meta["prompt_tokens"] == len(prompt)
    assert meta["completion_tokens"] == len(out["output_ids"]) > 0
    rows = meta["output_token_logprobs"]
    assert [r[1] for r in rows] == out["output_ids"]
    assert all(r[2] is None for r in rows)
    expected = trainer_logprobs(model, prompt, out["output_ids"], 0.7)
    assert [r[0] for r in rows] == pytest.approx(expected, abs=1e-4)


def test_batch_input_ids_with_n_samples_and_seeds(http):
    prompts = [[5, 6, 7], [8, 9]]
    body = dict(
        input_ids=prompts,
        sampling_params={"n": 3, "temperature": 1.0, "max_new_tokens": 6, "sampling_seed": 1},
        return_logprob=True,
    )
    out = generate(http, **body)
    assert len(out) == 6  # prompt-major: 3 samples of prompt 0, then 3 of prompt 1
    assert [o["meta_info"]["prompt_tokens"] for o in out] == [3, 3, 3, 2, 2, 2]
    assert len({tuple(o["output_ids"]) for o in out[:3]}) > 1, "n samples should differ"
    assert [o["output_ids"] for o in generate(http, **body)] == [o["output_ids"] for o in out]
    body["sampling_params"] = {**body["sampling_params"], "sampling_seed": 2}
    assert [o["output_ids"] for o in generate(http, **body)] != [o["output_ids"] for o in out]
    single_n = generate(http, input_ids=[5], sampling_params={"n": 2, "max_new_tokens": 2})
    assert isinstance(single_n, list) and len(single_n) == 2


def test_stop_string_stop_token_and_length(http):
    greedy = {"temperature": 0, "max_new_tokens": 6}
    base = generate(http, text="305+47=", sampling_params=greedy)
    assert base["meta_info"]["finish_reason"] == {"type": "length", "length": 6}
    ids, text = base["output_ids"], base["text"]

    stop = text[2:4]
    out = generate(http, text="305+47=", sampling_params={**greedy, "stop": [stop]})
    assert out["meta_info"]["finish_reason"] == {"type": "stop", "matched": stop}
    assert out["output_ids"] == ids[: len(out["output_ids"])]
    assert out["text"] == text[: text.find(stop)]

    token = ids[2]
    out = generate(http, text="305+47=", sampling_params={**greedy, "stop_token_ids": [token]})
    assert out["meta_info"]["finish_reason"] == {"type": "stop", "matched": token}
    assert out["output_ids"][-1] == token and len(out["output_ids"]) <= 3


def test_update_weights_from_disk(http, tok, model, tmp_path):
    changed = tiny.build_model("tiny", tokenizer=tok, seed=1).eval()
    tiny.save(tmp_path / "v7", changed, tok)
    tiny.save(tmp_path / "orig", model, tok)
    prompt = [5, 6, 7, 8]
    body = dict(
        input_ids=prompt,
        sampling_params={"temperature": 1.0, "max_new_tokens": 8, "sampling_seed": 0},
        return_logprob=True,
    )
    before = generate(http, **body)
    try:
        r = http.post(
            "/update_weights_from_disk",
            json={"model_path": str(tmp_path / "v7"), "weight_version": "7", "flush_cache": False},
        )
        assert r.status_code == 200 and r.json()["success"] is True, r.text
        info = http.get("/get_model_info").json()
        assert info["weight_version"] == "7" and info["model_path"] == str(tmp_path / "v7")
        after = generate(http, **body)
        assert after["meta_info"]["weight_version"] == "7"
        lps = [row[0] for row in after["meta_info"]["output_token_logprobs"]]
        assert lps == pytest.approx(
            trainer_logprobs(changed, prompt, after["output_ids"], 1.0), abs=1e-4
        )
        assert (after["output_ids"], lps) != (
            before["output_ids"],
            [row[0] for row in before["meta_info"]["output_token_logprobs"]],
        )
        bad = http.post("/update_weights_from_disk", json={"model_path": str(tmp_path / "nope")})
        assert bad.status_code == 400 and bad.json()["success"] is False
        assert http.get("/get_model_info").json()["weight_version"] == "7"
    finally:
        r = http.post(
            "/update_weights_from_disk",
            json={"model_path": str(tmp_path / "orig"), "weight_version": "default"},
        )
        assert r.status_code == 200, r.text
    assert generate(http, **body)["output_ids"] == before["output_ids"]


def test_pause_holds_new_requests_until_continue(http):
    assert http.post("/pause_generation", json={"mode": "retract"}).status_code == 200
    with ThreadPoolExecutor(1) as pool:
        try:
            pending = pool.submit(
                generate, http, input_ids=[5, 6], sampling_params={"max_new_tokens": 2}
            )
            time.sleep(0.5)
            assert not pending.done(), f"a paused server must not generate: {pending.result()}"
            flushed = http.post("/flush_cache")  # nothing running: the request only waits
            assert flushed.status_code == 200, (flushed.text, http.get("/get_server_info").json())
        finally:
            assert http.post("/continue_generation").status_code == 200
        out = pending.result(timeout=60)
    assert out["meta_info"]["finish_reason"]["type"] == "length"


def test_abort_a_queued_and_a_running_request(http):
    with ThreadPoolExecutor(2) as pool:
        # Queued: held by a pause, then aborted by rid.
        http.post("/pause_generation", json={"mode": "in_place"})
        try:
            queued = pool.submit(generate, http, input_ids=[5], rid="queued-1")
            time.sleep(0.3)
            assert http.post("/abort_request", json={"rid": "queued-1"}).status_code == 200
            out = queued.result(timeout=30)
        finally:
            http.post("/continue_generation")
        assert out["meta_info"]["finish_reason"]["type"] == "abort"
        assert out["output_ids"] == []

        # Running: a long greedy generation, aborted part way.
        running = pool.submit(
            generate,
            http,
            text="1+2=",
            rid="long-1",
            sampling_params={"temperature": 0, "max_new_tokens": 1000},
        )
        deadline = time.monotonic() + 10
        while http.post("/flush_cache").status_code != 400:  # busy while generating
            assert time.monotonic() < deadline and not running.done()
            time.sleep(0.02)
        assert http.post("/abort_request", json={"rid": "long-1"}).status_code == 200
        out = running.result(timeout=30)
    assert out["meta_info"]["finish_reason"]["type"] == "abort"
    assert out["meta_info"]["completion_tokens"] < 1000
    assert http.post("/flush_cache").status_code == 200


def batching(http) -> dict:
    return http.get("/get_server_info").json()["internal_states"][0]


async def post_all(address: str, bodies: list[dict]) -> list:
    async with httpx.AsyncClient(base_url=f"http://{address}", timeout=120) as client:
        responses = await asyncio.gather(*(client.post("/generate", json=b) for b in bodies))
    for r in responses:
        assert r.status_code == 200, r.text
    return [r.json() for r in responses]


def answered_together(server, http, bodies: list[dict]) -> tuple[list, int]:
    """Queue `bodies` behind a pause, let them go at once: (answers, batches run)."""
    assert http.post("/pause_generation", json={"mode": "in_place"}).status_code == 200
    with ThreadPoolExecutor(1) as pool:
        try:
            pending = pool.submit(asyncio.run, post_all(server.address, bodies))
            deadline = time.monotonic() + 30
            while batching(http)["calls_queued"] < len(bodies):
                assert time.monotonic() < deadline and not pending.done()
                time.sleep(0.02)
            before = batching(http)
        finally:
            assert http.post("/continue_generation").status_code == 200
        answers = pending.result(timeout=120)
    after = batching(http)
    assert after["calls_run"] - before["calls_run"] == len(bodies)
    return answers, after["batches_run"] - before["batches_run"]


def sampled(answer: dict) -> tuple[list[int], list[float]]:
    return answer["output_ids"], [row[0] for row in answer["meta_info"]["output_token_logprobs"]]


def assert_same_answers(got: list[dict], expected: list[dict]) -> None:
    for a, b in zip(got, expected, strict=True):
        assert a["meta_info"]["id"] == b["meta_info"]["id"]
        assert a["meta_info"]["finish_reason"] == b["meta_info"]["finish_reason"]
        (ids_a, lps_a), (ids_b, lps_b) = sampled(a), sampled(b)
        assert ids_a == ids_b
        assert lps_a == pytest.approx(lps_b, abs=1e-5)


def one_sample(prompt: list[int], seed: int, rid: str, **sampling) -> dict:
    """A request as the trainer's sglang engine sends it: one (prompt, sample), n=1."""
    return {
        "input_ids": prompt,
        "sampling_params": {"n": 1, "max_new_tokens": 6, "sampling_seed": seed, **sampling},
        "return_logprob": True,
        "rid": rid,
    }


def test_concurrent_requests_are_merged_into_fewer_batches(server, http):
    bodies = [one_sample([5 + i % 7] * (1 + i % 5), i, f"conc-{i}") for i in range(32)]
    before = batching(http)
    answers = asyncio.run(post_all(server.address, bodies))
    after = batching(http)
    assert [a["meta_info"]["id"] for a in answers] == [b["rid"] for b in bodies]
    assert all(a["meta_info"]["finish_reason"]["type"] in ("stop", "length") for a in answers)
    assert after["calls_run"] - before["calls_run"] == 32
    assert after["batches_run"] - before["batches_run"] < 32, "requests were not merged"
    assert after["largest_batch_rows"] > 1
    assert after["max_batch_size"] == 64 and after["calls_queued"] == 0


def test_a_request_answers_the_same_alone_and_batched(server, http):
    # Prompts of different lengths, so the batched ones are left padded.
    bodies = [
        one_sample(list(range(5, 6 + i * 3)), seed, f"same-{i}", temperature=0.9)
        for i, seed in enumerate([3, 3, 17, 40, 41, 2**40, 5, 9])
    ]
    alone = [generate(http, **b) for b in bodies]
    together, batches = answered_together(server, http, bodies)
    assert batches == 1
    assert_same_answers(together, alone)
    assert sampled(alone[0])[0] != sampled(alone[1])[0]  # same seed, other prompt


def test_incompatible_sampling_params_are_not_merged(server, http):
    kinds = [
        {"temperature": 1.0},
        {"temperature": 0.7, "top_p": 0.9, "top_k": 20},
        {"temperature": 0, "max_new_tokens": 4, "stop_token_ids": [7]},
        {"temperature": 1.0, "n": 2},  # n differs from the first kind's
    ]
    bodies = [
        one_sample([5, 6, 7 + i], seed=i, rid=f"mix-{i}", **kinds[i % len(kinds)])
        for i in range(12)
    ]
    together, batches = answered_together(server, http, bodies)
    assert batches == len(kinds)
    alone = [generate(http, **b) for b in bodies]
    for a, b in zip(together, alone, strict=True):
        if isinstance(b, list):  # n=2: one answer per sample
            assert len(a) == len(b) == 2
            assert_same_answers(a, b)
        else:
            assert_same_answers([a], [b])


def test_abort_one_request_of_a_batch_leaves_the_others(server, http):
    long = {"temperature": 0, "max_new_tokens": 1000}
    bodies = [{"text": "1+2=", "rid": f"batch-{x}", "sampling_params": long} for x in "abc"]
    assert http.post("/pause_generation", json={"mode": "in_place"}).status_code == 200
    with ThreadPoolExecutor(1) as pool:
        try:
            pending = pool.submit(asyncio.run, post_all(server.address, bodies))
            while batching(http)["calls_queued"] < 3:
                assert not pending.done()
                time.sleep(0.02)
            before = batching(http)["batches_run"]
        finally:
            http.post("/continue_generation")
        deadline = time.monotonic() + 10
        while http.post("/flush_cache").status_code != 400:  # busy while generating
            assert time.monotonic() < deadline and not pending.done()
            time.sleep(0.02)
        assert http.post("/abort_request", json={"rid": "batch-b"}).status_code == 200
        a, b, c = pending.result(timeout=120)
    assert batching(http)["batches_run"] == before + 1
    assert b["meta_info"]["finish_reason"]["type"] == "abort"
    assert b["meta_info"]["completion_tokens"] < 1000
    for other in (a, c):
        assert other["meta_info"]["finish_reason"] == {"type": "length", "length": 1000}
    assert a["output_ids"] == c["output_ids"]
    assert b["output_ids"] == a["output_ids"][: len(b["output_ids"])]


def test_openai_chat_and_completions(http, tok):
    messages = [{"role": "user", "content": "What is 2+2?"}]
    r = http.post(
        "/v1/chat/completions",
        json={
            "model": "tiny:tiny",
            "messages": messages,
            "max_tokens": 5,
            "n": 2,
            "seed": 4,
            "logprobs": True,
            "temperature": 1.0,
        },
    )
    assert r.status_code == 200, r.text
    chat = r.json()
    assert chat["object"] == "chat.completion" and len(chat["choices"]) == 2
    prompt_tokens = len(tiny.encode_chat(tok, messages))
    completion_tokens = sum(len(c["logprobs"]["content"]) for c in chat["choices"])
    assert chat["usage"] == {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }
    for choice in chat["choices"]:
        assert choice["message"]["role"] == "assistant"
        assert choice["finish_reason"] in ("stop", "length")

    r = http.post(
        "/v1/completions",
        json={"prompt": "12+3=", "max_tokens": 4, "temperature": 0, "logprobs": 0, "stop": ["\n"]},
    )
    assert r.status_code == 200, r.text
    comp = r.json()
    assert comp["object"] == "text_completion"
    choice = comp["choices"][0]
    assert len(choice["logprobs"]["token_logprobs"]) == comp["usage"]["completion_tokens"]
    assert comp["usage"]["prompt_tokens"] == len(tok("12+3=").input_ids)


BAD_REQUESTS = [
    ("/generate", "{not json", "not valid JSON"),
    ("/generate", {"input_ids": [5], "colour": "red"}, "colour"),
    ("/generate", {"input_ids": [5], "sampling_params": {"beam_width": 2}}, "beam_width"),
    ("/generate", {"sampling_params": {"max_new_tokens": 2}}, "text or input_ids"),
    ("/generate", {"text": "a", "input_ids": [5]}, "text or input_ids"),
    ("/generate", {"input_ids": []}, "empty"),
    ("/generate", {"input_ids": [5, 101]}, "vocabulary"),
    ("/generate", {"input_ids": [[5], [-1]]}, "vocabulary"),
    ("/generate", {"input_ids": [5] * 1000, "sampling_params": {"max_new_tokens": 100}}, "context"),
    (
        "/generate",
        {"input_ids": [[5] * 10] * 10, "sampling_params": {"max_new_tokens": 500}},
        "max_total_tokens",
    ),
    ("/generate", {"input_ids": [5], "sampling_params": {"temperature": -0.5}}, "temperature"),
    ("/generate", {"input_ids": [5], "sampling_params": {"top_p": 0}}, "top_p"),
    ("/generate", {"input_ids": [5], "sampling_params": {"top_k": 0}}, "top_k"),
    ("/generate", {"input_ids": [5], "sampling_params": {"n": 0}}, "n must be"),
    ("/generate", {"input_ids": [5], "sampling_params": {"max_new_tokens": 0}}, "max_new_tokens"),
    ("/generate", {"input_ids": [5], "sampling_params": {"max_new_tokens": "x"}}, "integer"),
    ("/generate", {"input_ids": [5], "sampling_params": {"stop_token_ids": [999]}}, "vocabulary"),
    ("/generate", {"input_ids": [5], "stream": True}, "stream"),
    ("/generate", {"input_ids": [[5], [6]], "rid": ["a"]}, "rid"),
    ("/update_weights_from_disk", {"model_path": "/x", "extra": 1}, "extra"),
    ("/abort_request", {}, "rid"),
    ("/pause_generation", {"mode": "later"}, "mode"),
    ("/v1/chat/completions", {"messages": [], "max_tokens": 2}, "messages"),
    (
        "/v1/chat/completions",
        {"messages": [{"role": "user", "content": "hi"}], "tools": []},
        "tools",
    ),
    ("/v1/completions", {"prompt": "hi", "echo": True}, "echo"),
    ("/v1/completions", {"prompt": "hi", "max_tokens": 2000}, "context"),
    ("/v1/completions", {"prompt": "hi", "temperature": -1}, "temperature"),
]


@pytest.mark.parametrize(("path", "body", "needle"), BAD_REQUESTS)
def test_bad_input_gets_a_400_with_a_message(http, path, body, needle):
    if isinstance(body, str):
        r = http.post(path, content=body, headers={"content-type": "application/json"})
    else:
        r = http.post(path, json=body)
    assert r.status_code == 400, r.text
    assert needle.lower() in message_of(r).lower()
