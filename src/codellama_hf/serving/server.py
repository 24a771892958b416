"""uvicorn's server with the shutdown a client can rely on.

On SIGINT or SIGTERM uvicorn stops accepting and waits for open connections. Here the requests still running get
`grace` seconds to finish; then each one that is left is ended as if it had reached its token limit, so every
stream still gets its API's final event (finish_reason "length") and every non-streaming client its answer, and the
server exits soon after, with one log line. A second Ctrl-C exits at once. uvicorn's own backstop
(`timeout_graceful_shutdown`, which cancels tasks and logs them) is set 1.5 s after the drain, so it only acts
if a connection ignores the end of its request.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import threading

import uvicorn

logger = logging.getLogger(__name__)


class _QuietShutdown(logging.Filter):
    """Drops uvicorn's informational shutdown lines ("Shutting down", "Waiting for ...", ...): ours says it all."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.WARNING


class GracefulServer(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, *, app, grace: float):
        super().__init__(config)
        self.owner, self.grace = app, grace
        self.stopped_by: int | None = None  # the signal that stopped it

    def handle_exit(self, sig, frame) -> None:
        # As uvicorn's, without keeping the signal to raise again once the shutdown is done: for SIGINT that would
        # end a clean shutdown in a KeyboardInterrupt traceback. The CLI exits with 128 + the signal instead.
        self.stopped_by = self.stopped_by or sig
        if self.should_exit and sig == signal.SIGINT:
            self.force_exit = True
        else:
            self.should_exit = True

    async def shutdown(self, sockets=None) -> None:
        service = self.owner.state.service
        self.owner.state.closing.set()  # a model still loading stops loading
        running = service.engine.in_flight if service is not None else 0
        logger.info("shutting down: %d requests running, up to %g s to finish (--shutdown-grace)", running,
                    self.grace)
        quiet = _QuietShutdown()
        logging.getLogger("uvicorn.error").addFilter(quiet)
        drain = asyncio.get_running_loop().call_later(self.grace, self._drain)
        try:
            await super().shutdown(sockets)
        finally:
            drain.cancel()
            logging.getLogger("uvicorn.error").removeFilter(quiet)

    def _drain(self) -> None:
        service = self.owner.state.service
        if service is not None:
            service.engine.drain("length")
            # Stopping the engine's threads takes seconds; nothing needs them now, so that runs while the last
            # events go out (the app's shutdown then finds it done or under way)
            threading.Thread(target=service.engine.stop, name="codellama-stop").start()
