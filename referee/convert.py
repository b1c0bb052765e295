"""Conversions between the wire (protobuf), JSONL rows, and the Python types.

The JSONL form mirrors the proto field names (DESIGN.md section 3): a sample row is
``{"id", "prompt", "completion", "reference", "metadata"}`` where `prompt` is a string
or a list of ``{"role", "content"}`` messages; a score row is what `Score.to_json` writes.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from google.protobuf import json_format, struct_pb2

from referee.types import Sample as PySample
from referee.types import Score, Status
from referee.v1 import reward_pb2 as pb

SAMPLE_FIELDS = ("id", "prompt", "completion", "reference", "metadata")

_TO_PB = {
    Status.OK: pb.STATUS_OK,
    Status.INVALID_INPUT: pb.STATUS_INVALID_INPUT,
    Status.TIMEOUT: pb.STATUS_TIMEOUT,
    Status.ERROR: pb.STATUS_ERROR,
    Status.UNAVAILABLE: pb.STATUS_UNAVAILABLE,
}
_FROM_PB = {v: k for k, v in _TO_PB.items()}


def status_to_proto(status: Status) -> int:
    return _TO_PB[status]


def status_from_proto(value: int) -> Status:
    """Maps a wire status; an unset or unknown one is an ERROR, never an OK."""
    return _FROM_PB.get(value, Status.ERROR)


def struct_to_dict(msg: struct_pb2.Struct) -> dict[str, Any]:
    return json_format.MessageToDict(msg) if msg.fields else {}


def dict_to_struct(data: Mapping[str, Any], where: str) -> struct_pb2.Struct:
    """Builds a Struct, naming `where` when the data is not plain JSON."""
    s = struct_pb2.Struct()
    try:
        s.update(data)
    except (ValueError, TypeError, AttributeError) as e:
        raise ValueError(f"{where} must be a JSON object of plain JSON values: {e}") from e
    return s


def sample_from_proto(msg: pb.Sample) -> PySample:
    which = msg.WhichOneof("prompt")
    prompt: str | list[dict[str, str]] = ""
    if which == "prompt_text":
        prompt = msg.prompt_text
    elif which == "prompt_messages":
        prompt = [{"role": m.role, "content": m.content} for m in msg.prompt_messages.messages]
    return PySample(
        id=msg.id,
        prompt=prompt,
        completion=msg.completion if msg.HasField("completion") else None,
        reference=msg.reference,
        metadata=struct_to_dict(msg.metadata),
    )


def sample_to_proto(s: PySample) -> pb.Sample:
    msg = pb.Sample(id=s.id, reference=s.reference)
    if isinstance(s.prompt, str):
        if s.prompt:
            msg.prompt_text = s.prompt
    else:
        msg.prompt_messages.SetInParent()
        for m in s.prompt:
            msg.prompt_messages.messages.add(role=m.get("role", ""), content=m.get("content", ""))
    if s.completion is not None:
        msg.completion = s.completion
    if s.metadata:
        msg.metadata.CopyFrom(dict_to_struct(s.metadata, f"sample {s.id!r} metadata"))
    return msg


def sample_from_json(row: Any, where: str = "sample") -> PySample:
    """Validates one JSONL row; errors name the row (`where`) and the field."""
    if not isinstance(row, dict):
        raise ValueError(f"{where}: expected a JSON object, got {type(row).__name__}")
    unknown = sorted(set(row) - set(SAMPLE_FIELDS))
    if unknown:
        raise ValueError(f"{where}: unknown fields {unknown}; a sample has {list(SAMPLE_FIELDS)}")
    sid = row.get("id", "")
    if isinstance(sid, bool) or not isinstance(sid, (str, int)):
        raise ValueError(f"{where}: id must be a string or integer, got {type(sid).__name__}")
    prompt = row.get("prompt", "")
    if prompt is None:
        prompt = ""
    if isinstance(prompt, list):
        for i, m in enumerate(prompt):
            if not (isinstance(m, dict) and isinstance(m.get("content", ""), str)
                    and isinstance(m.get("role", ""), str)):
                raise ValueError(f"{where}: prompt[{i}] must be {{\"role\": str, \"content\": str}}")
        prompt = [{"role": m.get("role", ""), "content": m.get("content", "")} for m in prompt]
    elif not isinstance(prompt, str):
        raise ValueError(f"{where}: prompt must be a string or a list of messages")
    completion = row.get("completion")
    if completion is not None and not isinstance(completion, str):
        raise ValueError(f"{where}: completion must be a string, got {type(completion).__name__}")
    reference = row.get("reference", "")
    if reference is None:
        reference = ""
    if isinstance(reference, bool) or not isinstance(reference, (str, int, float)):
        raise ValueError(f"{where}: reference must be a string (or a number), got {type(reference).__name__}")
    if isinstance(reference, float) and not math.isfinite(reference):
        raise ValueError(f"{where}: reference must be finite, got {reference}")
    metadata = row.get("metadata") or {}
    if not isinstance(metadata, dict):
        raise ValueError(f"{where}: metadata must be a JSON object, got {type(metadata).__name__}")
    dict_to_struct(metadata, f"{where}: metadata")
    return PySample(
        id=str(sid),
        prompt=prompt,
        completion=completion,
        reference=str(reference),
        metadata=metadata,
    )


def score_to_proto(s: Score) -> pb.Score:
    return pb.Score(
        id=s.id,
        status=status_to_proto(s.status),
        value=s.value if s.value is not None else 0.0,
        components=s.components,
        reason=s.reason,
        cost_s=s.cost_s,
        cached=s.cached,
    )


def score_from_proto(msg: pb.Score) -> Score:
    status = status_from_proto(msg.status)
    reason = msg.reason
    if msg.status not in _FROM_PB:
        reason = f"server sent status {msg.status} (not a known status); {reason}"
    return Score(
        id=msg.id,
        status=status,
        value=msg.value if status is Status.OK else None,
        components=dict(msg.components),
        reason=reason,
        cost_s=msg.cost_s,
        cached=msg.cached,
    )
