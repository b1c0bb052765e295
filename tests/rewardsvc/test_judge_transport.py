"""How the judge calls its endpoint (against the `ScriptedJudge` stand-in): retries,
timeouts, the concurrency limit, the reply cache, the API key and token metrics."""

from __future__ import annotations

import asyncio
import socket
import time

from judge_kit import metric, score
from judge_standin import Say

from referee.types import Sample, Status

GOOD = Sample(id="s1", prompt="What is 2+2?", completion="4", reference="4")


async def test_429_then_success_is_retried(standin, make_judge) -> None:
    server = standin([Say(status=429, headers={"Retry-After": "0"}), "VERDICT: 10"])
    judge = make_judge(server.url)
    r = await score(judge, GOOD)
    assert r.status is Status.OK and r.value == 1.0
    assert len(server.requests) == 2 and server.requests[0] == server.requests[1]
    assert metric(judge, "referee_judge_retries_total") == 1
    assert metric(judge, "referee_judge_requests_total", outcome="http_429") == 1
    assert metric(judge, "referee_judge_requests_total", outcome="ok") == 1


async def test_retries_are_bounded_and_never_a_score(standin, make_judge) -> None:
    server = standin([Say(status=500)])
    r = await score(make_judge(server.url, retries=2), GOOD)
    assert r.status is Status.ERROR and r.value is None
    assert "HTTP 500" in r.reason and "after 3 attempts" in r.reason
    assert len(server.requests) == 3

    server = standin([Say(status=503)])
    r = await score(make_judge(server.url, retries=1), GOOD)
    assert r.status is Status.UNAVAILABLE and len(server.requests) == 2


async def test_client_errors_are_not_retried(standin, make_judge) -> None:
    server = standin([Say(status=400)])
    r = await score(make_judge(server.url), GOOD)
    assert r.status is Status.ERROR and "HTTP 400" in r.reason and "scripted HTTP 400" in r.reason
    assert len(server.requests) == 1


async def test_unreachable_endpoint_is_unavailable(make_judge) -> None:
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    judge = make_judge(f"http://127.0.0.1:{port}/v1", retries=1)
    r = await score(judge, GOOD)
    assert r.status is Status.UNAVAILABLE and r.value is None and "cannot reach" in r.reason
    assert metric(judge, "referee_judge_requests_total", outcome="connection_error") == 2


async def test_slow_reply_is_timeout(standin, make_judge) -> None:
    server = standin([Say("VERDICT: 9", delay_s=3.0)])
    judge = make_judge(server.url, timeout_s=0.4)
    started = time.monotonic()
    r = await score(judge, GOOD)
    assert r.status is Status.TIMEOUT and r.value is None and "0.4s" in r.reason
    assert time.monotonic() - started < 2.5
    assert len(server.requests) == 1  # a timeout is not retried
    assert metric(judge, "referee_judge_requests_total", outcome="timeout") == 1


async def test_cache_hit_on_repeat(standin, make_judge) -> None:
    server = standin(["VERDICT: 6"])
    judge = make_judge(server.url)
    first = await score(judge, GOOD)
    again = await score(judge, Sample(id="other-id", prompt=GOOD.prompt, completion="4", reference="4",
                                      metadata={"source": "elsewhere"}))
    assert first == again and first.status is Status.OK
    assert len(server.requests) == 1
    assert metric(judge, "referee_judge_reply_cache_hits_total") == 1
    # Other sampling params are another key.
    await score(judge, GOOD, temperature=0.7)
    assert len(server.requests) == 2


async def test_replies_without_a_verdict_are_not_cached(standin, make_judge) -> None:
    server = standin(["no idea", "VERDICT: 4"])
    judge = make_judge(server.url)
    assert (await score(judge, GOOD)).status is Status.ERROR
    assert (await score(judge, GOOD)).status is Status.OK
    assert len(server.requests) == 2


async def test_cache_can_be_disabled(standin, make_judge) -> None:
    server = standin(["VERDICT: 6"])
    judge = make_judge(server.url, cache_size=0)
    await score(judge, GOOD)
    await score(judge, GOOD)
    assert len(server.requests) == 2


async def test_token_usage_is_counted(standin, make_judge) -> None:
    server = standin([Say("[[TIE]]", usage=(120, 7))])
    judge = make_judge(server.url)
    await score(judge, GOOD, mode="pairwise")
    assert metric(judge, "referee_judge_tokens_total", kind="prompt") == 240
    assert metric(judge, "referee_judge_tokens_total", kind="completion") == 14


async def test_concurrency_limit(standin, make_judge) -> None:
    server = standin([Say("VERDICT: 5", delay_s=0.15)])
    judge = make_judge(server.url, max_concurrency=2)
    samples = [Sample(completion=str(i), prompt="count") for i in range(6)]
    results = await asyncio.gather(*(score(judge, s) for s in samples))
    assert all(r.status is Status.OK for r in results)
    assert len(server.requests) == 6 and server.max_in_flight == 2


async def test_api_key_comes_from_the_named_variable(standin, make_judge, monkeypatch) -> None:
    monkeypatch.setenv("MY_JUDGE_KEY", "s3cret")
    server = standin(["VERDICT: 5"])
    await score(make_judge(server.url, api_key_env="MY_JUDGE_KEY"), GOOD)
    await score(make_judge(server.url, api_key_env=None), GOOD, temperature=0.5)
    assert server.headers[0]["authorization"] == "Bearer s3cret"
    assert "authorization" not in server.headers[1]


async def test_endpoint_url_forms(standin, make_judge) -> None:
    server = standin(["VERDICT: 5"])
    base = server.url.removesuffix("/v1")
    for url in (base, server.url, server.url + "/chat/completions"):
        r = await score(make_judge(url), GOOD)
        assert r.status is Status.OK, (url, r.reason)
