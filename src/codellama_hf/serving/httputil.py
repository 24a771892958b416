"""What every API module shares about HTTP: error shapes, server-sent events, disconnects, and merged runs."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator, Awaitable

from fastapi import Request
from fastapi.responses import JSONResponse, StreamingResponse

from .protocol import ServingError
from .service import Run

logger = logging.getLogger(__name__)

# ServingError.kind -> status, unless an API shape says otherwise
STATUS = {"invalid": 400, "unsupported": 400, "auth": 401, "forbidden": 403, "not_found": 404, "method": 405,
          "too_large": 413, "overloaded": 429, "internal": 500, "unavailable": 503, "timeout": 504}
RETRY_AFTER = {"overloaded": "1", "unavailable": "5"}
SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


class ApiShape:
    """One API's error body and status codes. Subclasses override `body` (and `status` where they differ)."""

    name = "base"
    paths: tuple[str, ...] = ()  # exact paths
    prefixes: tuple[str, ...] = ()  # every path under these
    overrides: dict[str, int] = {}
    error_schema: dict = {"type": "object"}  # the error body's JSON schema, for /openapi.json

    def status(self, kind: str) -> int:
        return self.overrides.get(kind, STATUS.get(kind, 500))

    def body(self, status: int, message: str, *, kind: str, param: str | None) -> object:
        raise NotImplementedError

    def response(self, error: ServingError, *, status: int | None = None, headers: dict | None = None) -> JSONResponse:
        status = status or self.status(error.kind)
        headers = {**({"Retry-After": RETRY_AFTER[error.kind]} if error.kind in RETRY_AFTER else {}), **(headers or {})}
        # A message may quote what the client sent; a lone surrogate in it must not make the error itself a 500.
        message = error.message.encode("utf-8", "backslashreplace").decode("utf-8")
        return JSONResponse(self.body(status, message, kind=error.kind, param=error.param), status_code=status,
                            headers=headers or None)


def _union_tag(part) -> bool:
    """pydantic names the member of a union in an error's loc ('str', 'list[function-after[...]]'): not a field."""
    return isinstance(part, str) and ("[" in part or part in ("str", "int", "float", "bool", "list", "dict", "none"))


def validation_error(errors: list[dict]) -> ServingError:
    """FastAPI/pydantic's validation errors as one line naming the field, the rule and the value sent."""
    # A value our validators refused says more than "not a list" from the union's other member
    first = next((e for e in errors if e.get("type") == "value_error"), errors[0]) if errors else {
        "loc": ("body",), "msg": "invalid request", "type": "value_error"}
    loc = [str(p) for p in first.get("loc", ()) if p != "body" and not _union_tag(p)]
    field = ".".join(loc)
    if first.get("type") == "json_invalid":
        return ServingError(f"the body is not valid JSON ({first.get('ctx', {}).get('error', first['msg'])}); send "
                            f"one JSON object")
    if not field:
        return ServingError(f"the body must be a JSON object: {first['msg']}")
    got = "" if first.get("type") == "missing" else f" (got {json.dumps(first.get('input'), default=str)[:80]})"
    more = f"; and {len(errors) - 1} more" if len(errors) > 1 else ""
    return ServingError(f"{field}: {first['msg']}{got}{more}", param=field)


def sse(data: object, *, event: str | None = None) -> str:
    head = f"event: {event}\n" if event else ""
    return f"{head}data: {data if isinstance(data, str) else json.dumps(data, ensure_ascii=False)}\n\n"


def ndjson(data: object) -> str:
    """One line of newline-delimited JSON (Ollama's streams)."""
    return json.dumps(data, ensure_ascii=False) + "\n"


def sse_response(chunks: AsyncIterator[str], runs: list[Run], shape: ApiShape, *, encode=sse,
                 media_type: str = "text/event-stream") -> StreamingResponse:
    """Stream `chunks` (server-sent events, or with encode=ndjson, JSON lines). When the client goes away Starlette
    cancels the stream, and the runs are cancelled here; an error after the first byte (the status is sent by then)
    goes out as one last event in the API's error shape."""

    async def body():
        try:
            async for chunk in chunks:
                yield chunk
        except ServingError as e:
            yield encode(shape.body(shape.status(e.kind), e.message, kind=e.kind, param=e.param))
        except Exception as e:  # noqa: BLE001 - a bug, but the client still gets one line instead of a cut stream
            logger.exception("streaming failed")
            yield encode(shape.body(500, f"internal error: {type(e).__name__}: {e}", kind="internal", param=None))
        finally:
            for run in runs:
                run.cancel()

    return StreamingResponse(body(), media_type=media_type, headers=SSE_HEADERS)


class ClientGone(Exception):
    pass


async def unless_disconnected(request: Request, work: Awaitable, *, poll: float = 0.1):
    """Await `work`, but cancel it (and so its engine requests) if the client disconnects first.

    An editor cancels a completion by dropping the connection (llama.vim kills its curl); a non-streaming request
    would otherwise generate on for nobody."""
    task = asyncio.ensure_future(work)
    try:
        while True:
            done, _ = await asyncio.wait({task}, timeout=poll)
            if done:
                return task.result()
            if await request.is_disconnected():
                raise ClientGone()
    finally:
        if not task.done():
            task.cancel()
            with contextlib.suppress(BaseException):
                await task


async def merged(runs: list[Run]) -> AsyncIterator[tuple[int, object]]:
    """(index, event) from several runs as they come (OpenAI's n > 1 and prompt lists)."""
    if len(runs) == 1:
        async with contextlib.aclosing(runs[0].events()) as events:
            async for event in events:
                yield 0, event
        return
    queue: asyncio.Queue = asyncio.Queue()

    async def pump(i: int, run: Run):
        try:
            async with contextlib.aclosing(run.events()) as events:
                async for event in events:
                    await queue.put((i, event, None))
        except BaseException as e:  # noqa: BLE001 - handed to the consumer, which raises it
            await queue.put((i, None, e))
        finally:
            await queue.put((i, None, StopAsyncIteration()))

    tasks = [asyncio.ensure_future(pump(i, run)) for i, run in enumerate(runs)]
    try:
        open_runs = len(runs)
        while open_runs:
            i, event, error = await queue.get()
            if isinstance(error, StopAsyncIteration):
                open_runs -= 1
            elif error is not None:
                raise error
            else:
                yield i, event
    finally:
        for task in tasks:
            task.cancel()
        for run in runs:
            run.cancel()


async def results(runs: list[Run]) -> list:
    """Each run's Done, in order; a failure (or a cancel) anywhere cancels them all."""
    try:
        return list(await asyncio.gather(*(run.result() for run in runs)))
    finally:
        for run in runs:
            run.cancel()
