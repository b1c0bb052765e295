"""One verifier call, and every way it can fail mapped onto a status (never a score).

Shared by the worker processes (sync verifiers) and the event loop (async verifiers,
the I/O-bound ones such as `code`, which waits on a sandbox): `InvalidInput` is the
sample's fault; `InvalidParams` propagates, since it condemns the whole request; any
other exception is the verifier's fault and becomes ERROR naming it.
"""

from __future__ import annotations

import asyncio
import inspect
import os
import traceback
from typing import Any

from referee.types import InvalidInput, InvalidParams, Result, Sample, Status
from referee.verifier import Verifier


def is_async(v: Verifier) -> bool:
    """True for verifiers whose verify is a coroutine function (run on the event loop)."""
    return inspect.iscoroutinefunction(getattr(v, "fn", None) or v.verify)


def call_sync(v: Verifier, sample: Sample, params: dict[str, Any]) -> Result:
    try:
        result = v.verify(sample, **params)
    except InvalidParams:
        raise
    except Exception as e:  # mapped to a status by failure(); never a score
        return failure(v, e)
    return checked(v, result)


async def call_async(v: Verifier, sample: Sample, params: dict[str, Any], timeout_s: float) -> Result:
    """Awaits an async verifier with a per-sample time limit (cooperative: the
    verifier must await, which I/O-bound ones do)."""
    try:
        result = await asyncio.wait_for(v.verify(sample, **params), timeout_s)  # type: ignore[arg-type]
    except InvalidParams:
        raise
    except asyncio.TimeoutError:
        return Result.timeout(f"exceeded the {timeout_s:g}s per-sample limit")
    except Exception as e:  # mapped to a status by failure(); never a score
        return failure(v, e)
    return checked(v, result)


def failure(v: Verifier, e: BaseException) -> Result:
    if isinstance(e, InvalidInput):
        return Result.invalid(str(e) or "invalid input")
    if isinstance(e, MemoryError):
        return Result.error("verifier ran out of memory")
    if isinstance(e, RecursionError):
        return Result.error("verifier exceeded the recursion limit")
    frames = traceback.extract_tb(e.__traceback__)
    where = f" ({os.path.basename(frames[-1].filename)}:{frames[-1].lineno})" if frames else ""
    return Result.error(f"verifier {v.name!r} raised {type(e).__name__}: {e}{where}")


def checked(v: Verifier, result: Any) -> Result:
    """Re-validates what a verifier returned (user code may build Results oddly)."""
    if not isinstance(result, Result):
        return Result.error(f"verifier {v.name!r} returned {type(result).__name__}, not a Result")
    try:
        comps = {str(k): float(x) for k, x in result.components.items()}
    except (TypeError, ValueError, AttributeError) as e:
        return Result.error(f"verifier {v.name!r} returned non-numeric components: {e}")
    if result.status is Status.OK:
        try:
            return Result.ok(result.value, result.reason, comps)  # type: ignore[arg-type]
        except (TypeError, ValueError) as e:
            return Result.error(f"verifier {v.name!r} returned a bad OK result: {e}")
    return Result(None, result.status, result.reason, comps)
