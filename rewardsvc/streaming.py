"""Score and ScoreStream for every RewardService: a window of a stream's requests
scored at once, and the errors that refuse a call.

The verifiers service, the reward-model server and the gateway answer both calls the
same way; only how a request is scored and which errors refuse it differ, so those are
what they pass in.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable

import grpc

from referee.v1 import reward_pb2 as pb

#: Requests of one stream scored at once; reading the stream pauses beyond that, which
#: is its backpressure.
STREAM_WINDOW = 8

#: Maps an exception raised by `score` to the status that refuses the whole call, or
#: None when it is not a refusal (it then ends the stream as it would end a Score call).
Refusal = Callable[[Exception], "grpc.StatusCode | None"]


class RequestError(ValueError):
    """The request as a whole is malformed: the call is refused INVALID_ARGUMENT."""


def invalid_request(e: Exception) -> grpc.StatusCode | None:
    """The `Refusal` of a service whose only refusal is a malformed request."""
    return grpc.StatusCode.INVALID_ARGUMENT if isinstance(e, RequestError) else None


async def score_unary(
    context: grpc.aio.ServicerContext, call: Awaitable[pb.ScoreResponse], refusal: Refusal
) -> pb.ScoreResponse:
    """One Score call: an error `refusal` maps to a status aborts the call with that
    status and the error's message; any other propagates (gRPC reports it as UNKNOWN)."""
    try:
        return await call
    except Exception as e:
        code = refusal(e)
        if code is None:
            raise
        await context.abort(code, str(e))
        raise  # unreachable: abort raises


class _Refused(Exception):
    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code


async def score_stream(
    request_iterator: AsyncIterator[pb.ScoreRequest],
    context: grpc.aio.ServicerContext,
    score: Callable[[pb.ScoreRequest], Awaitable[pb.ScoreResponse]],
    refusal: Refusal,
    window_size: int = STREAM_WINDOW,
) -> AsyncIterator[pb.ScoreResponse]:
    """Scores up to `window_size` requests of the stream at once and yields their
    answers as they finish (each carries its request_id). A refused request aborts the
    call with its code and a message naming its request_id; no request is ever dropped."""
    window = asyncio.Semaphore(window_size)
    done: asyncio.Queue[pb.ScoreResponse | Exception | None] = asyncio.Queue()

    async def one(req: pb.ScoreRequest) -> None:
        try:
            await done.put(await score(req))
        except Exception as e:  # ends the stream as Score would; never drop a request
            code = refusal(e)
            if code is None:
                await done.put(e)
            else:
                tag = f" (request_id {req.request_id!r})" if req.request_id else ""
                await done.put(_Refused(code, f"{e}{tag}"))
        finally:
            window.release()

    async def reader() -> None:
        tasks: set[asyncio.Task[None]] = set()
        async for req in request_iterator:
            await window.acquire()
            t = asyncio.create_task(one(req))
            tasks.add(t)
            t.add_done_callback(tasks.discard)
        await asyncio.gather(*tasks)
        await done.put(None)

    read = asyncio.create_task(reader())
    try:
        while (item := await done.get()) is not None:
            if isinstance(item, _Refused):
                await context.abort(item.code, str(item))
            if isinstance(item, Exception):
                raise item
            yield item
        await read
    finally:
        read.cancel()
