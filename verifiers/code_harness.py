"""Sandbox jobs for the code verifier, and reading back what they report.

Each job runs one of two trusted programs as its main program, with the sample's data in
a ``job.json`` it deletes before running anything untrusted:

- `code_sandbox_asserts.py` for Python assert tests (one process: harness and program);
- `code_sandbox_io.py` for stdin/stdout cases in any language (the program runs once per
  case as a child of the driver; expected outputs never enter the sandbox).

Both report lines ``@@<nonce> <kind> <index> <verdict> <hex reason> [k=v ...]`` on the
job's stdout, followed by ``out`` + ``err`` payload bytes where the header says so. The
nonce is made here per job and is only in ``job.json``, so text the program prints can
never be taken for a report; anything in stdout that is not a report is ignored.

The job's limits stay under the sandbox service's default ceilings (60 s wall, 16 MiB
output, 16 MiB of files): a sample with more cases than fit in one job's output or file
budget is split into several jobs, run concurrently; a sample whose cases need more time
than `JOB_WALL_S` gets the cases left over failed as "not run".
"""

from __future__ import annotations

import json
import re
import secrets
from dataclasses import dataclass, field
from pathlib import Path

from referee.sandboxes.languages import Language
from referee.sandboxes.types import File, Job, Limits

MiB = 1024 * 1024
JOB_WALL_S = 55.0
"""Wall time one job may take in all (the sandbox service's default ceiling is 60 s)."""
GRACE_S = 3.0
"""Job time beyond the harness's own budget: interpreter start, imports, reports."""
COMPILE_S = 20.0
"""Time the compiler gets, inside the job, for compiled languages."""
OUTPUT_BUDGET = 12 * MiB
"""Report bytes one job may print (case stdouts included); under the 16 MiB ceiling."""
FILES_BUDGET = 12 * MiB
"""Bytes of ``job.json`` one job may carry; under the 16 MiB ceiling."""
MAX_EXPECTED_BYTES = 4 * MiB
"""Longest expected stdout a case may have (the program may print twice that)."""
STDERR_KEEP = 4096
CONFIG = "job.json"
ASSERT_HARNESS = Path(__file__).with_name("code_sandbox_asserts.py").read_text(encoding="utf-8")
IO_DRIVER = Path(__file__).with_name("code_sandbox_io.py").read_text(encoding="utf-8")
PATH = "/usr/local/bin:/usr/bin:/bin"


@dataclass(frozen=True)
class Record:
    """One report from a harness."""

    kind: str
    index: int
    verdict: str
    reason: str
    fields: dict[str, int] = field(default_factory=dict)
    out: bytes = b""
    err: bytes = b""


def parse_records(stdout: bytes, nonce: str) -> list[Record]:
    """The reports in a job's stdout, in order. Text around them is ignored; a report
    whose payload is cut short (the job was killed mid-write) is dropped."""
    tag = f"@@{nonce} ".encode()
    header = re.compile(rb"([a-z]+) (-?\d+) ([A-Z_a-z-]+) ([0-9a-f]+|-)((?: [a-z_]+=-?\d+)*)\n")
    out: list[Record] = []
    pos = stdout.find(tag)
    while pos >= 0:
        m = header.match(stdout, pos + len(tag))
        if m is None:
            pos = stdout.find(tag, pos + 1)
            continue
        fields = {k.decode(): int(v) for k, v in re.findall(rb"([a-z_]+)=(-?\d+)", m[5])}
        n_out, n_err = fields.get("out", 0), fields.get("err", 0)
        end = m.end() + n_out + n_err
        if end > len(stdout):
            break
        reason = "" if m[4] == b"-" else bytes.fromhex(m[4].decode()).decode("utf-8", "replace")
        out.append(
            Record(
                m[1].decode(),
                int(m[2]),
                m[3].decode(),
                reason,
                fields,
                stdout[m.end() : m.end() + n_out],
                stdout[m.end() + n_out : end],
            )
        )
        pos = stdout.find(tag, end)
    return out


def _limits(wall_s: float, memory_bytes: int, output_bytes: int, files_bytes: int) -> Limits:
    return Limits(
        wall_time_s=round(wall_s, 3),
        cpu_time_s=round(wall_s, 3),
        memory_bytes=memory_bytes,
        output_bytes=output_bytes,
        file_size_bytes=max(16 * MiB, files_bytes + 32 * MiB),
    )


def assert_job(
    program: str,
    tests: list[str],
    *,
    setup: str,
    prelude: str,
    entry_point: str,
    call_check: bool,
    time_limit_s: float,
    memory_mb: int,
) -> tuple[Job, str]:
    """One job running every assert case of a sample; returns it with its nonce."""
    nonce = secrets.token_hex(16)
    budget = min(JOB_WALL_S - GRACE_S, (len(tests) + 1) * (2 * time_limit_s + 1) + 2)
    config = json.dumps(
        {
            "nonce": nonce,
            "program": program,
            "tests": tests,
            "setup": setup,
            "prelude": prelude,
            "entry_point": entry_point,
            "call_check": call_check,
            "time_limit_s": time_limit_s,
            "budget_s": budget,
        }
    ).encode()
    limits = _limits(
        budget + GRACE_S, (memory_mb + 128) * MiB, 64 * 1024 + 1024 * len(tests), len(config)
    )
    return Job("python", ASSERT_HARNESS, files=(File(CONFIG, config),), limits=limits), nonce


def output_cap(expected: str) -> int:
    """Bytes of stdout a case may print: twice the expected output and some room."""
    return max(64 * 1024, 2 * len(expected.encode()) + 16 * 1024)


def io_jobs(
    language: Language,
    program: str,
    cases: list[tuple[str, int]],
    *,
    time_limit_s: float,
    memory_mb: int,
) -> list[tuple[Job, str, int]]:
    """Jobs running the program on each (stdin, stdout cap) case: (job, nonce, index of
    its first case). One job unless the cases' inputs or outputs overflow one job."""
    chunks: list[list[tuple[str, int]]] = [[]]
    size = out = 0
    for stdin, cap in cases:
        need_in, need_out = len(json.dumps(stdin)) + 64, cap + STDERR_KEEP + 512
        if chunks[-1] and (size + need_in > FILES_BUDGET or out + need_out > OUTPUT_BUDGET):
            chunks.append([])
            size = out = 0
        chunks[-1].append((stdin, cap))
        size, out = size + need_in, out + need_out
    jobs, first = [], 0
    for chunk in chunks:
        jobs.append((*_io_job(language, program, chunk, time_limit_s, memory_mb), first))
        first += len(chunk)
    return jobs


def _run_argv(language: Language, memory_bytes: int) -> list[str]:
    return language.run_argv(memory_bytes)


def _io_job(
    language: Language,
    program: str,
    cases: list[tuple[str, int]],
    time_limit_s: float,
    memory_mb: int,
) -> tuple[Job, str]:
    nonce = secrets.token_hex(16)
    memory = memory_mb * MiB
    compile_s = COMPILE_S if language.compile else 0.0
    budget = min(JOB_WALL_S - GRACE_S - compile_s, len(cases) * (2 * time_limit_s + 1.2) + 1)
    limit_as = language.address_space_reserve == 0  # runtimes reserving address space get none
    config = json.dumps(
        {
            "nonce": nonce,
            "program": program,
            "source": language.source,
            "compile": list(language.compile) if language.compile else None,
            "run": _run_argv(language, memory),
            "syntax_check": language.name == "python",
            "env": {"PATH": PATH, "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8", **dict(language.env)},
            "memory_bytes": memory,
            "limit_as": limit_as,
            "time_limit_s": time_limit_s,
            "compile_s": compile_s,
            "budget_s": budget,
            "cases": [{"stdin": stdin, "cap": cap} for stdin, cap in cases],
        }
    ).encode()
    job_memory = (
        max(memory + 128 * MiB, 1024 * MiB if language.compile else 0)
        + language.address_space_reserve
    )
    output = sum(cap + STDERR_KEEP + 512 for _, cap in cases) + 64 * 1024
    limits = _limits(compile_s + budget + GRACE_S, job_memory, output, len(config))
    return Job("python", IO_DRIVER, files=(File(CONFIG, config),), limits=limits), nonce
