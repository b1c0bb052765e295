"""Async (I/O-bound) verifiers for the tests: run on the server's event loop."""

from __future__ import annotations

import asyncio

from referee import InvalidInput, InvalidParams, Result, Sample, verifier

IN_FLIGHT = {"now": 0, "peak": 0}


@verifier(name="await_len", version="1", timeout_s=1.0)
async def await_len(sample: Sample, *, delay_s: float = 0.05) -> Result:
    """Length of the completion, after awaiting `delay_s` (as a network call would)."""
    if delay_s < 0:
        raise InvalidParams("param delay_s must be >= 0")
    if sample.completion == "hang":
        await asyncio.sleep(3600)
    if sample.completion == "bad":
        raise InvalidInput("metadata.thing is missing")
    if sample.completion == "bug":
        raise KeyError("oops")
    IN_FLIGHT["now"] += 1
    IN_FLIGHT["peak"] = max(IN_FLIGHT["peak"], IN_FLIGHT["now"])
    try:
        await asyncio.sleep(delay_s)
    finally:
        IN_FLIGHT["now"] -= 1
    return Result.ok(len(sample.completion or ""))
