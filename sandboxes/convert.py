"""Sandbox jobs and results between the wire (protobuf) and `sandboxes.types`."""

from __future__ import annotations

from dataclasses import fields

from referee.sandboxes.types import ExecResult, File, Job, Limits, Usage, Verdict
from referee.v1 import sandbox_pb2 as pb

_TO_PB = {
    Verdict.OK: pb.VERDICT_OK,
    Verdict.RUNTIME_ERROR: pb.VERDICT_RUNTIME_ERROR,
    Verdict.TIME_LIMIT: pb.VERDICT_TIME_LIMIT,
    Verdict.MEMORY_LIMIT: pb.VERDICT_MEMORY_LIMIT,
    Verdict.OUTPUT_LIMIT: pb.VERDICT_OUTPUT_LIMIT,
    Verdict.COMPILE_ERROR: pb.VERDICT_COMPILE_ERROR,
    Verdict.SANDBOX_ERROR: pb.VERDICT_SANDBOX_ERROR,
}
_FROM_PB = {v: k for k, v in _TO_PB.items()}


def limits_from_proto(msg: pb.Limits) -> Limits:
    """Zero fields stay zero: they mean "the server's default" until merged."""
    return Limits(**{f.name: getattr(msg, f.name) for f in fields(Limits)})


def limits_to_proto(limits: Limits) -> pb.Limits:
    return pb.Limits(**{f.name: getattr(limits, f.name) for f in fields(Limits)})


def job_from_proto(msg: pb.ExecuteRequest) -> Job:
    """Raises ValueError naming the field for a bad file path."""
    files = []
    for i, f in enumerate(msg.files):
        try:
            files.append(File(f.path, f.content, f.executable))
        except ValueError as e:
            raise ValueError(f"files[{i}]: {e}") from None
    return Job(
        language=msg.language,
        code=msg.code,
        stdin=msg.stdin,
        files=tuple(files),
        args=tuple(msg.args),
        limits=limits_from_proto(msg.limits),
    )


def job_to_proto(job: Job, request_id: str = "") -> pb.ExecuteRequest:
    return pb.ExecuteRequest(
        language=job.language,
        code=job.code,
        stdin=job.stdin,
        files=[pb.File(path=f.path, content=f.content, executable=f.executable) for f in job.files],
        limits=limits_to_proto(job.limits),
        args=list(job.args),
        request_id=request_id,
    )


def result_to_proto(r: ExecResult, request_id: str = "") -> pb.ExecuteResponse:
    return pb.ExecuteResponse(
        verdict=_TO_PB[r.verdict],
        exit_code=r.exit_code if r.exit_code is not None else -1,
        signal=r.signal or 0,
        stdout=r.stdout,
        stderr=r.stderr,
        usage=pb.Usage(
            wall_time_s=r.usage.wall_time_s,
            cpu_time_s=r.usage.cpu_time_s,
            peak_memory_bytes=r.usage.peak_memory_bytes,
        ),
        message=r.message,
        stdout_truncated=r.stdout_truncated,
        stderr_truncated=r.stderr_truncated,
        request_id=request_id,
    )


def result_from_proto(msg: pb.ExecuteResponse) -> ExecResult:
    """An unset or unknown verdict is a SANDBOX_ERROR: it never passes for a run."""
    verdict = _FROM_PB.get(msg.verdict, Verdict.SANDBOX_ERROR)
    message = msg.message
    if msg.verdict not in _FROM_PB:
        message = f"server sent verdict {msg.verdict} (unknown); {message}"
    return ExecResult(
        verdict=verdict,
        exit_code=msg.exit_code if msg.exit_code >= 0 else None,
        signal=msg.signal or None,
        stdout=msg.stdout,
        stderr=msg.stderr,
        usage=Usage(msg.usage.wall_time_s, msg.usage.cpu_time_s, msg.usage.peak_memory_bytes),
        message=message,
        stdout_truncated=msg.stdout_truncated,
        stderr_truncated=msg.stderr_truncated,
    )
