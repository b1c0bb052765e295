"""The judge as a service: over gRPC in this process, as the `referee serve judge`
process scored by `referee score`, and against a real model behind the OpenAI chat API
(`referee serve rollout --model tiny:tiny`)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import urllib.request

import pytest
from judge_kit import FAST, metric, score
from judge_standin import Say, fenced

from referee.rewardsvc.client import RewardCallError, RewardClient
from referee.rewardsvc.config import ServerConfig
from referee.rewardsvc.judge import JudgeConfig
from referee.rewardsvc.judge_service import JudgeService
from referee.rewardsvc.server import create_server
from referee.testing import serve_process
from referee.types import Sample, Status


def by_completion(body):
    """Stand-in script: the reply depends on the response being graded."""
    text = fenced(body, "RESPONSE")
    if text == "slow":
        return Say("VERDICT: 9", delay_s=3.0)
    if text == "rambling":
        return "It has some merit, I suppose."
    return Say("Correct.\nVERDICT: 8", usage=(50, 3))


SAMPLES = [
    {"id": "good", "prompt": "2+2?", "completion": "4"},
    {"id": "rambling", "prompt": "2+2?", "completion": "rambling"},
    {"id": "none", "prompt": "2+2?"},
]


async def test_judge_service_over_grpc(standin) -> None:
    server = standin(by_completion)
    cfg = JudgeConfig(endpoint=server.url, model="stand-in", **(FAST | {"timeout_s": 0.5}))
    handle = create_server(ServerConfig(port=0), [JudgeService(cfg)])
    await handle.start()
    try:
        async with RewardClient(handle.address, timeout_s=30) as client:
            (info,) = await client.list_rewards()
            assert info.name == "judge" and info.kind == "judge"
            assert {"mode", "rubric", "template"} <= {p.name for p in info.params}
            samples = [*SAMPLES, {"id": "slow", "prompt": "2+2?", "completion": "slow"}]
            scores = await client.score("judge", samples, {"mode": "pointwise"})
            assert [s.status for s in scores] == [
                Status.OK, Status.ERROR, Status.INVALID_INPUT, Status.TIMEOUT]
            assert scores[0].value == pytest.approx(7 / 9)
            assert "It has some merit" in scores[1].reason and scores[1].value is None

            asked = len(server.requests)
            again = await client.score("judge", SAMPLES[:1], {"mode": "pointwise"})
            assert again[0].cached and again[0].value == scores[0].value
            assert len(server.requests) == asked

            with pytest.raises(RewardCallError, match="lacks"):
                await client.score("judge", SAMPLES[:1], {"template": "{{prompt}}"})
        registry = handle.metrics.registry
        assert registry.get_sample_value("referee_judge_tokens_total", {"kind": "prompt"}) >= 50
        assert registry.get_sample_value("referee_judge_requests_total", {"outcome": "timeout"}) == 1
    finally:
        await handle.stop(0)


def test_serve_judge_and_referee_score(standin, tmp_path) -> None:
    server = standin(by_completion)
    args = ["judge", "--endpoint", server.url, "--model", "stand-in", "--api-key-env",
            "JUDGE_TEST_KEY", "--metrics-port", "0", "--backoff", "0.01"]
    data = tmp_path / "samples.jsonl"
    data.write_text("".join(json.dumps(s) + "\n" for s in SAMPLES))
    with serve_process(args, env={"JUDGE_TEST_KEY": "k-123"}) as srv:
        cmd = [sys.executable, "-m", "referee.cli", "score", "--target", srv.address,
               "--reward", "judge", "--input", str(data), "--params", '{"mode": "pointwise"}']
        runs = [subprocess.run(cmd, capture_output=True, text=True, timeout=120) for _ in range(2)]
        for run in runs:
            assert run.returncode == 0, run.stderr
        first, second = ([json.loads(line) for line in r.stdout.splitlines()] for r in runs)
        assert [s["status"] for s in first] == ["OK", "ERROR", "INVALID_INPUT"]
        assert first[0]["value"] == pytest.approx(7 / 9) and first[1]["value"] is None
        assert "It has some merit" in first[1]["reason"]
        assert second[0]["cached"] and not second[1]["cached"]
        # The OK sample was asked once; the unparseable one again (errors are not cached).
        assert len(server.requests) == 3
        assert {h["authorization"] for h in server.headers} == {"Bearer k-123"}
        port = re.search(r"metrics on http://[^:]+:(\d+)/", "".join(srv.output)).group(1)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
            page = r.read().decode()
        tokens = re.search(r'referee_judge_tokens_total\{kind="completion"\} (\S+)', page)
        assert tokens and float(tokens.group(1)) >= 3
        assert 'referee_samples_total{reward="judge",status="OK"}' in page


SHORT_TEMPLATE = (
    "Rate 1-10. {{rubric}}\nQ: {{prompt}}\nA: {{completion}}\n"
    "Last line: VERDICT: <n> ({{scale_min}}-{{scale_max}})"
)


async def test_against_a_real_model_behind_the_openai_api(make_judge) -> None:
    """A tiny random model writes gibberish: the request/response path works end to end
    and its reply comes back as ERROR with the raw text, never as a score."""
    pytest.importorskip("torch")
    with serve_process(["rollout", "--model", "tiny:tiny"]) as rollout:
        judge = make_judge(f"http://{rollout.address}/v1", timeout_s=60.0)
        sample = Sample(prompt="What is 2+3?", completion="5")
        r = await score(judge, sample, template=SHORT_TEMPLATE, max_tokens=24, seed=1)
        assert r.status is Status.ERROR and r.value is None, r
        assert "no verdict" in r.reason and "raw reply" in r.reason
        assert metric(judge, "referee_judge_requests_total", outcome="ok") == 1
        assert metric(judge, "referee_judge_tokens_total", kind="completion") > 0
        assert metric(judge, "referee_judge_tokens_total", kind="prompt") > len(SHORT_TEMPLATE)

        # The shipped template is longer than this model's 1024-token context: the
        # server's 400 comes back as ERROR with its message, and is not retried.
        r = await score(judge, sample, max_tokens=24)
        assert r.status is Status.ERROR and "HTTP 400" in r.reason and "context" in r.reason
        assert metric(judge, "referee_judge_requests_total", outcome="http_400") == 1

        r = await score(judge, Sample(prompt="Which is right?", completion="5", reference="6"),
                        mode="pairwise", max_tokens=8, template="{{prompt}} A={{answer_a}} B={{answer_b}}")
        assert r.status is Status.ERROR and "completion as A" in r.reason
