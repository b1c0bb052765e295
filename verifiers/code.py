"""The code reward: run the completion's program against the sample's tests in a sandbox.

Value = the fraction of test cases passed. Components: ``extracted`` (a program was
found), ``all_passed``, ``case_<i>`` (1/0 per case, from 0), and ``compile_error`` (1)
when the program does not compile (C/C++), or is not valid Python. The reason names the
first failing case: its verdict (WRONG_ANSWER, RUNTIME_ERROR, TIME_LIMIT, MEMORY_LIMIT,
OUTPUT_LIMIT) and a short diff or error. Extraction is `code_extract`, metadata is
`code_spec`, stdout comparison is `code_compare`, the jobs are `code_harness`.

What is a score and what is not: no program in the completion, a program that does not
compile, and every failure of the program (wrong output, crash, exit before the tests,
time, memory or output limit) score 0 for the cases concerned. A sandbox that cannot be
reached is UNAVAILABLE; a SANDBOX_ERROR verdict, a job the sandbox refuses, or a harness
that fails before the program runs is ERROR. Neither is ever 0.0.

All cases of a sample run in one sandbox job (several only when the cases' data does
not fit in one: see `code_harness`), driven by a trusted harness:

**stdin/stdout cases** (any language). A driver runs the program once per case, as a
child process with only its three pipes, and returns each case's raw stdout framed by a
per-job nonce; the comparison happens HERE, outside the sandbox. Defended: the program
never sees an expected output (they are never sent to the sandbox) nor another case's
input (the driver's job file is deleted before the program runs and the driver is
non-dumpable, so /proc/<driver>/{mem,fd,environ} are closed to the program); printing
every known answer fails on the extra tokens; a fake "all passed" line is just wrong
output; exiting early, killing the driver or flooding output fails the cases not
reported. Not defended: a program that recognises a case's input (for instance the
public examples in its prompt) and prints a memorised answer.

**Python assert tests** (HumanEval ``check(candidate)``, MBPP assert lists). The tests
must call the program's functions, so they run in the program's process, and in-process
Python cannot be made fully tamper-proof. What the harness does (see
`code_sandbox_asserts.py`; tests/verifiers/test_code_hardening.py attacks each, and
tests/verifiers/test_code_table.py holds the hacks as rows):

- a case passes only on a report line carrying the job's nonce, written by the harness
  after the case ran to its end; the nonce is read from a file deleted before the
  program is compiled, the report fd is private, and the program's own fds 0-2 go to
  /dev/null. So `sys.exit(0)`, `os._exit(0)`, `exit()`, `quit()`, SystemExit in an
  atexit hook, killing the process, and printing "all tests passed" all fail;
- the tests see values only as built-in data: every comparison and truth test in the
  test code is rewritten (AST) to go through a checker which converts instances of
  Python subclasses of built-in types (a `str` subclass, a Counter, a namedtuple) to the
  built-in value through the base type's C methods, accepts values of C-implemented
  types as they are (checking containers element by element) and instances of classes
  that define no comparison, truth or container hook (they compare by identity: an Enum
  member, a plain object), and refuses anything else. So an object whose `__eq__`,
  `__ne__` or `__bool__` always says yes (the "AlwaysEqual" hack) fails, including
  inside lists, behind `not`, `in`, `all()` and `any()` (replaced), and `isinstance`
  checks the real type, not `__class__`;
- the tests get a private copy of the builtins, and the public callables of every module
  loaded before the program (builtins included) and sys.modules are restored before
  each case; a change made while a case runs fails it. So patching `builtins`,
  `AssertionError`, `print`, `sys.exit`, `os._exit`, `sys.excepthook`, `math.isclose` or
  `unittest` does not help, and the harness itself only uses functions bound before the
  program ran;
- an audit hook refuses the standard ways to reach the harness's state: frames
  (`sys._getframe`, `tb_frame`, `gi_frame`/`cr_frame`, `f_code`, `sys._current_frames`),
  tracing (`sys.settrace`/`setprofile`), `gc.get_objects`/`get_referrers`/
  `get_referents`, `ctypes`, opening anything under /proc (symlinks followed), and
  `os.open` of a directory (whose fd would let a relative ``dir_fd=`` path dodge the
  /proc check); the process is non-dumpable, so the program's child processes cannot
  read its memory, fds or environment;
- with `prepend_prompt`, the prompt is run again in the tests' namespace, so helpers the
  tests rely on (HumanEval's `poly`, `encode_cyclic`) are the prompt's, not the program's.

Not defended, for assert tests: a program that obtains a frame some other way (the
frame argument of its own signal handler, then `f_back`) can reach the harness's
locals, find the nonce and forge reports; a program that races a symlink swap against
the /proc check; method calls the tests make on a returned object
(``assert candidate(x).startswith("a")`` trusts the object's method). And a false
refusal: a value of a Python class with its own ``__eq__`` (a Fraction, a dataclass, a
class the tests define) is refused even when honest; convert such values in the tests.
Where any of this matters, give stdin/stdout cases instead.

Other rules worth knowing: comparisons go through the checker even between two values
of the tests' own making (a plain `==` there is the same); a Counter compares as the
dict it holds (``Counter(a=0) == {}`` is False here, True in Python) and an OrderedDict as
a dict (order is not compared). What an honest program loses under the audit hook:
`inspect.stack()`/`currentframe()`, printing tracebacks, `ctypes`, reading /proc, and
directory fds (`shutil.rmtree`, `os.fwalk`); `namedtuple`, `typing`, `enum`,
`warnings`, `logging`, `asyncio.run` and `tempfile` keep working (they tolerate a missing
frame). Python programs run as ``python3 -I`` for stdin/stdout cases (not ``-S``: it
drops the `exit()` many of them end with); assert tests run under the sandbox's own
``python3 -I -S``.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from referee.sandboxes.client import SandboxCallError, SandboxClient, SandboxUnavailable
from referee.sandboxes.types import ExecResult, Job, Verdict
from referee.types import InvalidInput, InvalidParams, Result, Sample
from referee.verifier import params_from_signature
from referee.verifiers.code_compare import MODES, compare_output
from referee.verifiers.code_extract import extract_code
from referee.verifiers.code_harness import Record, assert_job, io_jobs, output_cap, parse_records
from referee.verifiers.code_spec import Spec, check_limits, parse_spec

MAX_PROGRAM_CHARS = 256_000
"""A longer program scores 0 ("program too long") without being run."""
SHOW = 160


class Executor(Protocol):
    """Runs one sandbox job. `SandboxClient` is one; tests use an in-process backend.
    Raises `SandboxUnavailable` when no sandbox answers."""

    async def execute(self, job: Job) -> ExecResult: ...


@dataclass(frozen=True)
class _Outcome:
    """One case: passed or not, its verdict, and why (a diff, an error)."""

    passed: bool
    verdict: str = "OK"
    detail: str = ""


class _NotScored(Exception):
    """The run says nothing about the program; carries the non-OK Result."""

    def __init__(self, result: Result) -> None:
        super().__init__(result.reason)
        self.result = result


PARAM_DOCS = {
    "allow_unfenced": "with no fenced code block, use the whole completion as the program",
    "prepend_prompt": "put the prompt (metadata.prompt, else a text sample.prompt) before the "
    "program, as for HumanEval completions that continue the function signature",
    "compare": "stdout comparison: tokens (whitespace-separated), lines (trailing spaces and "
    "blank lines ignored) or exact",
    "float_tolerance": "compare='tokens' only: numeric tokens match within this absolute or "
    "relative difference; 0 = exact tokens",
    "time_limit_s": "CPU seconds per case (metadata.time_limit_s overrides)",
    "memory_mb": "memory per case in MiB (metadata.memory_mb overrides)",
}


class CodeVerifier:
    """Runs the program in a completion against the sample's tests in the sandbox."""

    name = "code"
    version = "1"
    kind = "code"
    description = (
        "Runs the completion's program in the sandbox against metadata.tests (assert-style, "
        "Python) or metadata.cases (stdin/stdout); value = fraction of cases passed."
    )
    timeout_s: float | None = 120.0

    def __init__(self, executor: Executor | None = None) -> None:
        self._executor = executor
        self._client: tuple[tuple[Any, ...], SandboxClient] | None = None

    def check_params(self, params: dict[str, Any]) -> None:
        """Rejects well-typed but wrong params once per request (ValueError)."""
        compare, tol = params.get("compare", "tokens"), params.get("float_tolerance", 0.0)
        if compare not in MODES:
            raise ValueError(f"compare must be one of {', '.join(MODES)}, got {compare!r}")
        if tol < 0 or (tol > 0 and compare != "tokens"):
            raise ValueError(
                f"float_tolerance must be >= 0, and is for compare='tokens' only; got {tol:g}"
            )
        check_limits(params.get("time_limit_s", 5.0), params.get("memory_mb", 512), "")

    async def verify(
        self,
        sample: Sample,
        *,
        allow_unfenced: bool = False,
        prepend_prompt: bool = False,
        compare: str = "tokens",
        float_tolerance: float = 0.0,
        time_limit_s: float = 5.0,
        memory_mb: int = 512,
    ) -> Result:
        try:
            self.check_params(
                {
                    "compare": compare,
                    "float_tolerance": float_tolerance,
                    "time_limit_s": time_limit_s,
                    "memory_mb": memory_mb,
                }
            )
        except ValueError as e:
            raise InvalidParams(str(e)) from None
        if sample.completion is None:
            raise InvalidInput("completion is missing")
        # Parsing, job building and comparing scale with the sample: off the event loop.
        plan = await asyncio.to_thread(
            _plan, sample, allow_unfenced, prepend_prompt, time_limit_s, memory_mb
        )
        if isinstance(plan, Result):
            return plan
        executor = self._executor or self._default_executor()
        if executor is None:
            return Result.unavailable(
                "no sandbox configured: start the verifiers server with --sandbox HOST:PORT "
                "or set REFEREE_SANDBOX"
            )
        try:
            results = await asyncio.gather(*(_execute(executor, job) for job, _, _ in plan.jobs))
            return await asyncio.to_thread(_judge, plan, results, compare, float_tolerance)
        except _NotScored as e:
            return e.result

    params = params_from_signature(verify, PARAM_DOCS)

    def _default_executor(self) -> Executor | None:
        """A SandboxClient for $REFEREE_SANDBOX (host:port[,host:port]), one per event loop."""
        targets = [t.strip() for t in os.environ.get("REFEREE_SANDBOX", "").split(",") if t.strip()]
        if not targets:
            return None
        token = os.environ.get("REFEREE_SANDBOX_TOKEN") or None
        key = (tuple(targets), token, asyncio.get_running_loop())
        if self._client is None or self._client[0] != key:
            timeout = max(1.0, (self.timeout_s or 120.0) - 5.0)
            self._client = (key, SandboxClient(targets, token=token, timeout_s=timeout))
        return self._client[1]


code_reward = CodeVerifier()
"""The built-in instance (sandbox address from the environment)."""


def _prompt_text(sample: Sample) -> str:
    text = sample.metadata.get("prompt", sample.prompt)
    if not isinstance(text, str):
        raise InvalidInput(
            "prepend_prompt needs a text prompt: sample.prompt is chat messages "
            "and metadata.prompt is not a string"
        )
    return text


def _zero(count: int, reason: str, extracted: float = 1.0) -> Result:
    comps = {"extracted": extracted, "all_passed": 0.0} | {f"case_{i}": 0.0 for i in range(count)}
    return Result.ok(0.0, reason, comps)


def _scored(outcomes: Sequence[_Outcome], compile_error: str = "") -> Result:
    passed = sum(o.passed for o in outcomes)
    comps = {"extracted": 1.0, "all_passed": float(passed == len(outcomes))}
    comps |= {f"case_{i}": float(o.passed) for i, o in enumerate(outcomes)}
    if compile_error:
        comps["compile_error"] = 1.0
        return Result.ok(0.0, f"compile error: {compile_error}"[: SHOW * 2], comps)
    reason = f"{passed}/{len(outcomes)} passed"
    failed = next(((i, o) for i, o in enumerate(outcomes) if not o.passed), None)
    if failed is not None:
        i, o = failed
        reason += f"; case {i}: {o.verdict}" + (f": {o.detail}" if o.detail else "")
    return Result.ok(passed / len(outcomes), reason[: SHOW * 2], comps)


async def _execute(executor: Executor, job: Job) -> ExecResult:
    try:
        result = await executor.execute(job)
    except SandboxUnavailable as e:
        raise _NotScored(Result.unavailable(f"sandbox unavailable: {e}")) from None
    except SandboxCallError as e:
        raise _NotScored(Result.error(f"sandbox refused the job: {e}")) from None
    if result.verdict is Verdict.SANDBOX_ERROR:
        raise _NotScored(Result.error(f"sandbox error: {result.message or 'no detail'}"))
    return result


def _utf8(text: str) -> str:
    """`text` with what UTF-8 cannot encode (lone surrogates) replaced, so that the
    sandbox can write it out."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return text.encode("utf-8", "replace").decode("utf-8")
    return text


def _tail(data: bytes, n: int = SHOW) -> str:
    text = data.decode("utf-8", "replace").strip()
    return text if len(text) <= n else "..." + text[-n:]


def _job_ending(result: ExecResult) -> _Outcome:
    """The outcome of cases a job never reported on: the job's own limit verdict, else
    RUNTIME_ERROR (the program ended or killed the process)."""
    if result.verdict is Verdict.OK:
        return _Outcome(
            False, "RUNTIME_ERROR", "the program ended the process before this case finished"
        )
    how = f"exit {result.exit_code}" if result.signal in (None, 0) else f"signal {result.signal}"
    limit = result.verdict in (Verdict.TIME_LIMIT, Verdict.MEMORY_LIMIT, Verdict.OUTPUT_LIMIT)
    return _Outcome(
        False,
        result.verdict.value if limit else "RUNTIME_ERROR",
        f"the job ended with {result.verdict.value} ({how}) before this case finished",
    )


def _read(
    result: ExecResult, nonce: str, count: int
) -> tuple[dict[int, Record], list[Record], _Outcome]:
    """(case records by index, other records, the outcome of a case never reported);
    raises _NotScored
    when the harness says the sample or the sandbox is at fault."""
    records = parse_records(result.stdout, nonce)
    kinds = {r.kind: r for r in records if r.kind != "case"}
    if "badtests" in kinds:
        raise InvalidInput(f"metadata.tests: {kinds['badtests'].reason}")
    if "setup" in kinds:
        raise _NotScored(Result.error(f"sandbox cannot run this language: {kinds['setup'].reason}"))
    cases = {r.index: r for r in records if r.kind == "case" and 0 <= r.index < count}
    if "start" not in kinds and "syntax" not in kinds:
        detail = (
            kinds["crash"].reason if "crash" in kinds else _tail(result.stderr) or result.message
        )
        raise _NotScored(
            Result.error(
                f"the test harness did not start ({result.verdict.value}): {detail}"[: SHOW * 2]
            )
        )
    if "crash" in kinds:
        missing = _Outcome(
            False, "RUNTIME_ERROR", f"the test harness stopped: {kinds['crash'].reason}"
        )
    else:
        missing = _job_ending(result)
    return cases, records, missing


@dataclass(frozen=True)
class _Plan:
    """A sample made ready to run: its spec and its jobs as (job, nonce, first case)."""

    spec: Spec
    jobs: list[tuple[Job, str, int]]


def _plan(
    sample: Sample, allow_unfenced: bool, prepend_prompt: bool, time_limit_s: float, memory_mb: int
) -> _Plan | Result:
    """The jobs for a sample, or its score when there is nothing to run."""
    spec = parse_spec(sample.metadata, time_limit_s, memory_mb)
    prompt = _prompt_text(sample) if prepend_prompt else ""
    program = extract_code(sample.completion or "", spec.language.name, allow_unfenced)
    if program is None:
        hint = "" if allow_unfenced else " (allow_unfenced would use all of it)"
        return _zero(spec.count, "no fenced code block in the completion" + hint, extracted=0.0)
    if prompt:
        program = prompt + ("" if prompt.endswith("\n") else "\n") + program
    program = _utf8(program)
    if len(program) > MAX_PROGRAM_CHARS:
        return _zero(spec.count, f"program too long ({len(program)} chars > {MAX_PROGRAM_CHARS})")
    if spec.tests is not None:
        job, nonce = assert_job(
            program,
            list(spec.tests),
            setup=spec.setup,
            prelude=prompt,
            entry_point=spec.entry_point,
            call_check=spec.call_check,
            time_limit_s=spec.time_limit_s,
            memory_mb=spec.memory_mb,
        )
        return _Plan(spec, [(job, nonce, 0)])
    assert spec.cases is not None
    cases = [(_utf8(c.stdin), output_cap(c.stdout)) for c in spec.cases]
    jobs = io_jobs(
        spec.language, program, cases, time_limit_s=spec.time_limit_s, memory_mb=spec.memory_mb
    )
    return _Plan(spec, jobs)


def _judge(plan: _Plan, results: Sequence[ExecResult], compare: str, tol: float) -> Result:
    """The score from what each job reported (stdout compared here, outside the sandbox)."""
    spec, count = plan.spec, plan.spec.count
    ends = [first for _, _, first in plan.jobs[1:]] + [count]
    outcomes: list[_Outcome] = []
    for (_, nonce, first), end, result in zip(plan.jobs, ends, results, strict=True):
        cases, records, missing = _read(result, nonce, end - first)
        for r in records:
            if r.kind == "syntax":
                detail = r.reason + (f": {_tail(r.err)}" if r.err else "")
                return _scored([_Outcome(False)] * count, compile_error=detail)
            if r.kind == "top":
                return _scored([_Outcome(False, r.verdict, r.reason)] * count)
        for k in range(end - first):
            r = cases.get(k)
            if spec.cases is None:
                outcomes.append(
                    missing if r is None else _Outcome(r.verdict == "OK", r.verdict, r.reason)
                )
            else:
                expected = spec.cases[first + k].stdout
                outcomes.append(_case_outcome(r, expected, missing, compare, tol))
    return _scored(outcomes)


def _case_outcome(
    r: Record | None, expected: str, missing: _Outcome, compare: str, tol: float
) -> _Outcome:
    if r is None:
        return missing
    if r.verdict != "OK":
        detail = (
            r.reason
            or _tail(r.err)
            or (
                f"exit {r.fields.get('exit')}"
                if r.fields.get("signal", 0) == 0
                else f"signal {r.fields.get('signal')}"
            )
        )
        return _Outcome(False, r.verdict, detail)
    diff = compare_output(r.out, expected, compare, tol)
    return _Outcome(diff is None, "OK" if diff is None else "WRONG_ANSWER", diff or "")
