"""The code verifier's plumbing: what is a score and what is not, limits, time limits,
comparison modes, the sandbox client path (a real SandboxService over gRPC), and the
report parser. Fakes here are named so; scoring itself runs on the real sandbox."""

from __future__ import annotations

import json
import re
import socket
import time
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
import pytest_asyncio

from referee import InvalidInput, InvalidParams, Sample, Status
from referee.rewardsvc.calling import is_async
from referee.rewardsvc.config import ServerConfig
from referee.rewardsvc.server import ServerHandle, create_server
from referee.sandboxes.client import SandboxCallError, SandboxUnavailable
from referee.sandboxes.languages import find_language
from referee.sandboxes.service import SandboxConfig, SandboxService
from referee.sandboxes.types import ExecResult, Job, Verdict
from referee.verifier import validate_params
from referee.verifiers import code_harness
from referee.verifiers.code import CodeVerifier, code_reward
from referee.verifiers.code_harness import CONFIG, assert_job, io_jobs, output_cap, parse_records
from referee.verifiers.code_spec import MAX_TIME_LIMIT_S, MEMORY_RANGE_MB

ADD = {"test": "def check(candidate):\n    assert candidate(1, 2) == 3\n", "entry_point": "add"}
GOOD_ADD = "```python\ndef add(a, b):\n    return a + b\n```"
SUM = {"cases": [{"stdin": "1 2", "stdout": "3"}, {"stdin": "2 2", "stdout": "4"}]}


class FakeExecutor:
    """Stands in for the sandbox: raises, or answers with a script of the job's nonce."""

    def __init__(self, answer: Any) -> None:
        self.answer = answer
        self.jobs: list[Job] = []

    async def execute(self, job: Job) -> ExecResult:
        self.jobs.append(job)
        if isinstance(self.answer, BaseException):
            raise self.answer
        nonce = json.loads(job.files[0].content)["nonce"]
        return self.answer(nonce)


def report(nonce: str, *lines: str) -> bytes:
    return b"".join(f"\n@@{nonce} {line}\n".encode() for line in lines)


async def score(
    v: CodeVerifier, metadata: dict[str, Any] = ADD, completion: str = GOOD_ADD, **params: Any
):
    return await v.verify(Sample(completion=completion, metadata=metadata), **params)


# ------------------------------------------------------------ a failure is not a score


@pytest.mark.parametrize(
    ("answer", "status", "fragment"),
    [
        (
            SandboxUnavailable("no replica answered"),
            Status.UNAVAILABLE,
            "sandbox unavailable: no replica answered",
        ),
        (
            SandboxCallError(grpc.StatusCode.INVALID_ARGUMENT, "limits.wall_time_s", "h:1"),
            Status.ERROR,
            "sandbox refused the job: h:1: INVALID_ARGUMENT: limits.wall_time_s",
        ),
        (
            lambda n: ExecResult(Verdict.SANDBOX_ERROR, message="bwrap: uid map"),
            Status.ERROR,
            "sandbox error: bwrap",
        ),
        (
            lambda n: ExecResult(Verdict.OK, 0, stdout=b"all tests passed\n"),
            Status.ERROR,
            "harness did not start",
        ),
        (
            lambda n: ExecResult(Verdict.RUNTIME_ERROR, 1, stderr=b"ImportError: x"),
            Status.ERROR,
            "ImportError",
        ),
        (
            lambda n: ExecResult(
                Verdict.OK, 0, stdout=report(n, "setup -1 - " + b"g++ missing".hex())
            ),
            Status.ERROR,
            "g++ missing",
        ),
        (
            lambda n: ExecResult(
                Verdict.OK,
                0,
                stdout=report("f" * 32, "start -1 hardened -", "case 0 OK -", "done -1 - -"),
            ),
            Status.ERROR,
            "did not start",
        ),
    ],
    ids=[
        "unavailable",
        "refused",
        "sandbox-error",
        "no-reports",
        "harness-crash",
        "no-toolchain",
        "forged-nonce",
    ],
)
async def test_failures_of_the_sandbox_are_not_scores(
    answer: Any, status: Status, fragment: str
) -> None:
    result = await score(CodeVerifier(FakeExecutor(answer)))
    assert result.status is status and result.value is None
    assert fragment in result.reason


async def test_unavailable_for_stdin_cases_too() -> None:
    result = await score(
        CodeVerifier(FakeExecutor(SandboxUnavailable("down"))), SUM, "```python\nprint(3)\n```"
    )
    assert result.status is Status.UNAVAILABLE and result.value is None


async def test_no_sandbox_configured(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("REFEREE_SANDBOX", raising=False)
    result = await score(CodeVerifier())
    assert result.status is Status.UNAVAILABLE
    assert "--sandbox HOST:PORT or set REFEREE_SANDBOX" in result.reason


async def test_unreachable_sandbox_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("REFEREE_SANDBOX", f"127.0.0.1:{port}")
    v = CodeVerifier()
    v.timeout_s = 3.0  # the client's deadline follows the verifier's
    result = await score(v)
    assert result.status is Status.UNAVAILABLE and result.value is None, result.reason


async def test_sample_faults_are_invalid_input() -> None:
    v = CodeVerifier(FakeExecutor(SandboxUnavailable("not reached")))
    with pytest.raises(InvalidInput, match="completion is missing"):
        await v.verify(Sample(completion=None, metadata=ADD))
    with pytest.raises(InvalidInput, match="metadata.language"):
        await score(v, {**ADD, "language": "cobol"})
    bad_tests = FakeExecutor(
        lambda n: ExecResult(Verdict.OK, 0, stdout=report(n, "badtests -1 - " + b"nope".hex()))
    )
    with pytest.raises(InvalidInput, match="metadata.tests: nope"):
        await score(CodeVerifier(bad_tests))


async def test_bad_params_are_refused() -> None:
    v = CodeVerifier(FakeExecutor(SandboxUnavailable("not reached")))
    for params, fragment in [
        ({"compare": "fuzzy"}, "compare must be one of tokens, lines, exact"),
        ({"compare": "lines", "float_tolerance": 1e-6}, "compare='tokens' only"),
        ({"float_tolerance": -1.0}, "float_tolerance must be >= 0"),
        ({"time_limit_s": 0.0}, "time_limit_s must be in (0, 30]"),
        ({"memory_mb": 8}, "memory_mb must be a whole number in [16, 2048]"),
    ]:
        with pytest.raises(ValueError, match=re.escape(fragment)):
            code_reward.check_params(validate_params(code_reward, params))
        with pytest.raises(InvalidParams):
            await score(v, **params)


# -------------------------------------------------------------- what is a score of 0


async def test_no_code_scores_zero_with_every_component() -> None:
    v = CodeVerifier(FakeExecutor(SandboxUnavailable("not reached")))
    result = await score(v, SUM, "I would add the numbers.")
    assert result.status is Status.OK and result.value == 0.0
    assert result.components == {"extracted": 0.0, "all_passed": 0.0, "case_0": 0.0, "case_1": 0.0}
    result = await score(v, SUM, "print(3)", allow_unfenced=False)
    assert result.components["extracted"] == 0.0 and "allow_unfenced" in result.reason
    result = await score(v, SUM, "```python\n" + "x = 1\n" * 60_000 + "```")
    assert result.value == 0.0 and "program too long" in result.reason


async def test_harness_stopping_mid_way_fails_the_cases_left() -> None:
    def answer(n: str) -> ExecResult:
        return ExecResult(
            Verdict.TIME_LIMIT, None, 9, stdout=report(n, "start -1 hardened -", "case 0 OK -")
        )

    md = {"test_list": ["assert f(1) == 1", "assert f(2) == 2", "assert f(3) == 3"]}
    result = await score(
        CodeVerifier(FakeExecutor(answer)), md, "```python\ndef f(x):\n    return x\n```"
    )
    assert result.status is Status.OK and result.value == pytest.approx(1 / 3)
    assert result.components == {
        "extracted": 1.0,
        "all_passed": 0.0,
        "case_0": 1.0,
        "case_1": 0.0,
        "case_2": 0.0,
    }
    assert "case 1: TIME_LIMIT: the job ended with TIME_LIMIT (signal 9)" in result.reason


async def test_compile_error_component(code_verifier: CodeVerifier) -> None:
    md = {"language": "cpp", "cases": SUM["cases"]}
    result = await score(code_verifier, md, "```cpp\nint main() { return x; }\n```")
    assert result.status is Status.OK and result.value == 0.0
    assert result.components["compile_error"] == 1.0 and result.components["extracted"] == 1.0
    assert "compile error: compiler failed" in result.reason and "x" in result.reason


# ------------------------------------------------------------------------ time limits


async def test_slow_assert_case_times_out_and_later_cases_still_run(
    code_verifier: CodeVerifier,
) -> None:
    md = {
        "test_list": ["assert f(0) == 0", "assert f(10**9) == 10**9", "assert f(5) == 5"],
        "time_limit_s": 0.5,
    }
    program = "```python\ndef f(n):\n    i = 0\n    while i < n:\n        i += 1\n    return i\n```"
    result = await score(code_verifier, md, program)
    assert result.value == pytest.approx(2 / 3), result.reason
    assert result.components["case_1"] == 0.0 and "case 1: TIME_LIMIT" in result.reason


async def test_sleeping_program_hits_the_wall_limit(code_verifier: CodeVerifier) -> None:
    md = {
        "cases": [{"stdin": "", "stdout": "1"}, {"stdin": "go", "stdout": "1"}],
        "time_limit_s": 0.3,
    }
    program = "```python\nimport sys, time\nif sys.stdin.read():\n    time.sleep(30)\nprint(1)\n```"
    result = await score(code_verifier, md, program)
    assert result.value == 0.5 and "case 1: TIME_LIMIT" in result.reason, result.reason


async def test_time_budget_of_a_sample_is_bounded(
    code_verifier: CodeVerifier, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Cases that each spin to the limit cannot hold a sample past JOB_WALL_S (here made
    8 s): the cases past the budget fail as not run, and the job ends on its own."""
    monkeypatch.setattr(code_harness, "JOB_WALL_S", 8.0)
    md = {"cases": [{"stdin": "", "stdout": "1"}] * 30, "time_limit_s": 1.0}
    started = time.monotonic()
    result = await score(code_verifier, md, "```python\nwhile True:\n    pass\n```")
    assert result.status is Status.OK and result.value == 0.0
    assert time.monotonic() - started < 12.0
    job = code_verifier._executor.jobs[-1]
    assert job.limits.wall_time_s == 8.0


# ------------------------------------------------------------------ comparison modes


@pytest.mark.parametrize(
    ("printed", "expected", "params", "passed"),
    [
        ("3 4\n", "3\n4", {}, True),
        ("3 4\n", "3\n4", {"compare": "lines"}, False),
        ("3  \n4\n\n", "3\n4", {"compare": "lines"}, True),
        ("3\n4\n", "3\n4", {"compare": "exact"}, False),
        ("3\n4", "3\n4", {"compare": "exact"}, True),
        ("0.3333333", "0.333333", {"float_tolerance": 1e-6}, True),
        ("0.33", "0.333333", {"float_tolerance": 1e-6}, False),
        ("1e9", "1000000000", {"float_tolerance": 1e-9}, True),
    ],
)
async def test_comparison_modes(
    code_verifier: CodeVerifier, printed: str, expected: str, params: dict, passed: bool
) -> None:
    program = f"```python\nimport sys\nsys.stdout.write({printed!r})\n```"
    result = await score(
        code_verifier, {"cases": [{"stdin": "", "stdout": expected}]}, program, **params
    )
    assert result.value == float(passed), result.reason


# ---------------------------------------------------- jobs fit the sandbox service


def test_jobs_stay_under_the_service_ceilings() -> None:
    """At the largest limits a sample may ask for, and with more case data than one job
    holds, every job passes the service's default checks (it splits instead)."""
    cfg = SandboxConfig()
    top_time, top_memory = MAX_TIME_LIMIT_S, MEMORY_RANGE_MB[1]
    cases = [("1\n" * 200_000, output_cap("x" * (3 * 1024 * 1024))) for _ in range(7)]
    jobs = []
    for language in ("python", "cpp", "javascript"):
        split = io_jobs(
            find_language(language), "x", cases, time_limit_s=top_time, memory_mb=top_memory
        )
        assert len(split) > 1 and [first for _, _, first in split] == sorted(
            {f for _, _, f in split}
        )
        assert sum(len(json.loads(j.files[0].content)["cases"]) for j, _, _ in split) == 7
        jobs += [j for j, _, _ in split]
    job, _ = assert_job(
        "x",
        ["assert 1"] * 500,
        setup="",
        prelude="",
        entry_point="",
        call_check=False,
        time_limit_s=top_time,
        memory_mb=top_memory,
    )
    for j in [job, *jobs]:
        cfg.defaults.merged_with(j.limits, cfg.ceiling)  # raises if over a ceiling
        assert sum(len(f.content) for f in j.files) <= cfg.max_files_bytes
        assert len(j.code.encode()) <= cfg.max_code_bytes and j.files[0].path == CONFIG


@pytest_asyncio.fixture
async def sandbox_service(code_backend: Any) -> AsyncIterator[ServerHandle]:
    service = SandboxService(code_backend, SandboxConfig(slots=2), code_backend.languages())
    handle = create_server(ServerConfig(port=0), [service])
    await handle.start()
    yield handle
    await handle.stop(0)


async def test_through_the_sandbox_service(
    sandbox_service: ServerHandle, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The default executor: a SandboxClient for $REFEREE_SANDBOX, over real gRPC; the
    service's own request checks accept every job the verifier makes."""
    monkeypatch.setenv("REFEREE_SANDBOX", sandbox_service.address)
    v = CodeVerifier()
    assert (await score(v)).value == 1.0
    cpp = "```cpp\n#include <iostream>\nint main(){int a,b;std::cin>>a>>b;std::cout<<a+b;}\n```"
    result = await score(v, {"language": "cpp", **SUM}, cpp)
    assert result.status is Status.OK and result.value == 1.0, result.reason
    result = await score(v, {"cases": [{"stdin": "", "stdout": "y"}]}, "```python\nprint('n')\n```")
    assert result.value == 0.0


def test_verifier_declaration() -> None:
    assert (code_reward.name, code_reward.version, code_reward.kind) == ("code", "1", "code")
    assert is_async(code_reward) and code_reward.timeout_s == 120.0
    assert [p.name for p in code_reward.params] == [
        "allow_unfenced",
        "prepend_prompt",
        "compare",
        "float_tolerance",
        "time_limit_s",
        "memory_mb",
    ]
    assert all(p.description for p in code_reward.params)


# -------------------------------------------------------------------- report parsing


def test_report_parser_takes_only_this_jobs_reports() -> None:
    nonce, other = "a" * 32, "b" * 32
    payload = (
        f"\n@@{nonce} case 1 OK - out=0 err=0\n".encode()
    )  # inside case 0's stdout: not a report
    stdout = (
        b"noise @@ not a report\n"
        + f"\n@@{other} case 0 OK - out=0 err=0\n".encode()
        + f"\n@@{nonce} case 0 OK - out={len(payload)} err=2\n".encode()
        + payload
        + b"e!"
        + f"\n@@{nonce} case 2 WRONG_ANSWER {b'diff'.hex()} out=5 err=0\n".encode()
        + b"12"
    )
    records = parse_records(stdout, nonce)
    assert [(r.kind, r.index, r.verdict) for r in records] == [
        ("case", 0, "OK")
    ]  # case 2 was cut short
    assert records[0].out == payload and records[0].err == b"e!"
    assert parse_records(stdout + b"345", nonce)[1].reason == "diff"


async def test_unencodable_text_is_not_a_sandbox_error(code_verifier: CodeVerifier) -> None:
    md = {"cases": [{"stdin": "x\ud800\n", "stdout": "x?"}]}
    result = await score(code_verifier, md, "```python\nprint(input())  # \udc80\n```")
    assert result.status is Status.OK and result.value == 1.0, result.reason
