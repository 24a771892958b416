"""What every engine shares: a `Submission` (one request's life: its events, cancel, the slot it holds) and the
`Engine` base (admission against --max-queue, bookkeeping). The engines are continuous.py (continuous batching) and
eager.py (one `generate` at a time); this module sits below both so neither imports the other's module for it.
"""

from __future__ import annotations

import asyncio
import itertools
import threading
from collections.abc import AsyncIterator, Callable

from ..protocol import GenerationRequest, QueueFull, ServingError


class Submission:
    """One request inside an engine: an async stream of new ids, then a finish reason ("stop" or "length").

    Engines call `push`/`finish`/`fail` from any thread through `threadsafe`; the server iterates `new_ids()` on
    the event loop and calls `cancel()` when it no longer wants tokens (a stop string, a disconnect).
    """

    def __init__(self, request: GenerationRequest, loop: asyncio.AbstractEventLoop, *, on_cancel: Callable,
                 on_end: Callable, stall_timeout: float | None = None):
        self.request = request
        self.stall_timeout = stall_timeout  # the longest wait for the next ids, the first included
        self.finish_reason: str | None = None
        self.error: str | None = None
        self.cancelled = threading.Event()
        self._loop = loop
        self._queue: asyncio.Queue = asyncio.Queue()
        self._on_cancel, self._on_end = on_cancel, on_end  # the admitting engine's: free the slot
        self._closed = False
        self.key: int | None = None  # the engine's bookkeeping: its admission key, its manager's request id,
        self.rid: str | None = None  # and how many generated ids were already pushed
        self.seen = 0

    # engine side (event loop thread)
    def push(self, ids: list[int]) -> None:
        if ids and not self._closed:
            self._queue.put_nowait(("ids", ids))

    def finish(self, reason: str) -> None:
        self._end(finish_reason=reason)

    def fail(self, error: str) -> None:
        self._end(error=error)

    def _end(self, **outcome) -> None:
        """Record how the request ended (once), free its slot, and wake the server's iterator."""
        if not self._closed:
            self._closed = True
            for name, value in outcome.items():
                setattr(self, name, value)
            self._on_end(self)
            self._queue.put_nowait(("end", None))

    def threadsafe(self, method: Callable, *args) -> None:
        """Call push/finish/fail from an engine thread."""
        try:
            self._loop.call_soon_threadsafe(method, *args)
        except RuntimeError:  # the loop is gone: nobody is listening any more
            pass

    # server side
    @property
    def done(self) -> bool:
        return self._closed

    async def new_ids(self) -> AsyncIterator[list[int]]:
        while True:
            try:
                async with asyncio.timeout(self.stall_timeout):
                    kind, ids = await self._queue.get()
            except TimeoutError:
                # A stalled engine, or a request lost in a restart: fail it, and free its slot, rather than wait on
                self.cancel()
                raise ServingError(f"no token came for {self.stall_timeout:g} s (--stall-timeout): the engine is "
                                   f"stalled or overloaded; retry later", kind="timeout") from None
            if kind == "end":
                if self.error is not None:
                    raise ServingError(f"generation failed: {self.error}", kind="internal")
                return
            yield ids

    def cancel(self) -> None:
        """Stop generating for this request (idempotent, and a no-op once it ended); its capacity is free at once."""
        self.end("cancelled")

    def end(self, reason: str) -> None:
        """Stop generating now and end the stream as if the engine had: `reason` "length" is a server that shuts
        down, whose clients still get their final event."""
        if self._closed:
            return
        self._closed = True
        self.finish_reason = reason
        self.cancelled.set()
        self._on_cancel(self)
        self._queue.put_nowait(("end", None))


class Engine:
    """Admission (--max-queue) and bookkeeping shared by the engines; subclasses generate."""

    name = "engine"

    def __init__(self, *, max_queue: int, stall_timeout: float | None = None):
        self.max_queue, self.stall_timeout = max_queue, stall_timeout
        self._active: dict[int, Submission] = {}
        self._ids = itertools.count()

    @property
    def in_flight(self) -> int:
        return len(self._active)

    def check_room(self, count: int = 1) -> None:
        """Raise QueueFull unless `count` more requests fit under --max-queue (before any work is spent on them)."""
        if len(self._active) + count > self.max_queue:
            raise QueueFull(self.max_queue)

    def submit(self, request: GenerationRequest) -> Submission:
        """Queue `request`; called on the event loop. Raises QueueFull at --max-queue requests in flight."""
        self.check_room()
        key = next(self._ids)
        sub = Submission(request, asyncio.get_running_loop(), on_cancel=self._cancel, on_end=self._release,
                         stall_timeout=self.stall_timeout)
        sub.key = key
        self._active[key] = sub
        try:
            self._start(sub)
        except BaseException:
            self._active.pop(key, None)
            raise
        return sub

    def _release(self, sub: Submission) -> None:
        self._active.pop(sub.key, None)

    def _start(self, sub: Submission) -> None:
        raise NotImplementedError

    def _cancel(self, sub: Submission) -> None:
        self._release(sub)

    def drain(self, reason: str = "length") -> int:
        """End every request in flight now, each with `reason` as its finish (a server shutting down); how many."""
        subs = list(self._active.values())
        for sub in subs:
            sub.end(reason)
        return len(subs)

    def start(self) -> None:
        """Get ready (blocking: called while the server answers 503)."""

    def stop(self) -> None:
        """Stop generating and free the device."""
