"""Engines: where a GenerationRequest becomes token ids. The default is Transformers' continuous batching.

`ContinuousEngine` hands every request to one `ContinuousBatchingManager` (`model.init_continuous_batching`):
concurrent requests share each forward pass, with no batching code of ours. What the manager cannot do is done
around it:
- sampling is one switch for the whole manager, so it samples always, with per-request temperature/top-k/top-p
  (its `per_request_processors`), and a greedy request asks for top_k=1, which keeps only the argmax;
- its sampler draws from one generator for the whole batch, so a seed cannot make one request repeatable: a
  sampled request with a seed goes to an `EagerEngine` lane (eager.py), which samples with the request's own
  generator;
- stop strings are found in the decoded text by the server (detokenize.py), which then cancels the request.

Continuous batching is the default on every device. On CPU, too, it measured within 13% of one-at-a-time eager
`generate` for one client and 1.4x/2.1x ahead for 4/16 clients (benchmarks/bench_serve.py, table in
docs/serving.md); `--engine eager` remains for comparison and as a fallback.
"""

from __future__ import annotations

import asyncio
import logging
import threading

from ... import _compat
from .base import Engine, Submission

logger = logging.getLogger(__name__)

# Manager-wide sampling defaults. Every request passes its own values, so these only have to differ from "off":
# the manager builds a per-request warper only for the settings that are on at creation.
_CB_DEFAULTS = dict(do_sample=True, temperature=0.5, top_p=0.5, top_k=50)


def _running(manager) -> bool:
    """Whether the manager's loop runs and takes new requests."""
    return manager is not None and manager.is_running() and _compat.manager_accepts_requests(manager)


class ContinuousEngine(Engine):
    """Transformers' continuous batching for every request but seeded sampling (see the module docstring)."""

    name = "continuous"

    def __init__(self, model, *, max_queue: int = 256, max_batch_tokens: int | None = None,
                 kv_cache_tokens: int | None = None, page_size: int = 256, eager_lane=None,
                 stall_timeout: float | None = None):
        super().__init__(max_queue=max_queue, stall_timeout=stall_timeout)
        self.model = model
        self.max_batch_tokens, self.kv_cache_tokens, self.page_size = max_batch_tokens, kv_cache_tokens, page_size
        self._eager_lane = eager_lane  # an EagerEngine for seeded sampling; made on first use when None
        self._manager = None
        self._rids: dict[str, Submission] = {}
        self._pending: list[Submission] = []  # waiting for a restarted manager
        self._restarting = False
        self._stopping = threading.Lock()

    # ----- lifecycle ------------------------------------------------------------------------------------------
    def start(self) -> None:
        self._manager = self._new_manager()

    def _new_manager(self):
        from transformers import GenerationConfig
        from transformers.generation.configuration_utils import ContinuousBatchingConfig

        num_blocks = None if self.kv_cache_tokens is None else -(-self.kv_cache_tokens // self.page_size)
        cb_config = ContinuousBatchingConfig(page_size=self.page_size, num_blocks=num_blocks,
                                             max_batch_tokens=self.max_batch_tokens, per_request_processors=True,
                                             max_queue_size=0)  # admission is ours (--max-queue)
        gen_config = GenerationConfig(**_CB_DEFAULTS, eos_token_id=-1)  # stop ids come with each request
        manager = self.model.init_continuous_batching(generation_config=gen_config,
                                                      continuous_batching_config=cb_config)
        if self.model.device.type == "cuda":
            manager.warmup()  # captures CUDA graphs at the largest sizes before the first client waits for them
        manager.start()
        return manager

    def stop(self) -> None:
        # hard_stop: what is still queued was cancelled or drained already; flushing it kept a stopping server
        # alive for seconds
        with self._stopping:  # once, from whichever thread comes first (a shutdown's drain, the app's end)
            manager, self._manager = self._manager, None
            lane, self._eager_lane = self._eager_lane, None
        if manager is not None:
            manager.stop(block=True, timeout=10, hard_stop=True)
        if lane is not None:
            lane.stop()

    # A forward pass that raises stops the manager's thread (after failing the requests it held); later requests get
    # a new manager, so one bad batch does not take the server down. Stopping the old manager and starting a new one
    # takes seconds, so it runs on a thread; requests that arrive meanwhile wait in `_pending` (their stall timeout
    # still runs) and are added when it is ready.
    def _restart(self) -> None:
        """Start a new manager on a thread (once at a time); called on the event loop."""
        if self._restarting:
            return
        self._restarting = True
        logger.warning("the continuous batching loop had stopped; starting a new one")
        loop, old = asyncio.get_running_loop(), self._manager

        def work():
            try:
                if old is not None:
                    old.stop(block=True, timeout=10, hard_stop=True)
                new, error = self._new_manager(), None
            except Exception as e:  # noqa: BLE001 - handed to the loop, which fails the waiting requests with it
                new, error = None, f"{type(e).__name__}: {e}"
            try:
                loop.call_soon_threadsafe(self._restarted, new, error)
            except RuntimeError:  # the loop is gone (the server stopped meanwhile)
                if new is not None:
                    new.stop(block=True, timeout=10)

        threading.Thread(target=work, name="codellama-cb-restart", daemon=True).start()

    def _restarted(self, manager, error: str | None) -> None:
        self._restarting, self._manager = False, manager
        pending, self._pending = self._pending, []
        for sub in pending:
            if sub.done:
                continue
            if manager is None:
                self._forget(sub.rid)
                sub.fail(f"the generation loop could not restart: {error}")
            elif not self._add(manager, sub):
                self._forget(sub.rid)
                sub.fail("the generation loop stopped again while restarting")

    # ----- requests -------------------------------------------------------------------------------------------
    def _lane(self):
        if self._eager_lane is None:
            from .eager import EagerEngine

            self._eager_lane = EagerEngine(self.model, max_queue=self.max_queue,
                                            stall_timeout=self.stall_timeout)
            self._eager_lane.start()
        return self._eager_lane

    def _start(self, sub: Submission) -> None:
        request = sub.request
        if not request.sampling.greedy and request.sampling.seed is not None:
            self._lane()._run_for(sub)  # sub stays ours: it frees our slot when it ends
            return
        rid = f"cl{sub.key}"
        sub.rid = rid
        self._rids[rid] = sub
        manager = self._manager
        if self._restarting or not _running(manager) or not self._add(manager, sub):
            self._pending.append(sub)
            self._restart()

    def _add(self, manager, sub: Submission) -> bool:
        request, s = sub.request, sub.request.sampling
        kwargs = (dict(top_k=1, temperature=1.0, top_p=1.0) if s.greedy else
                  dict(temperature=float(s.temperature), top_p=float(s.top_p),
                       top_k=int(s.top_k) if s.top_k > 0 else int(self.model.config.vocab_size)))
        manager.register_result_handler(sub.rid, lambda output, sub=sub: self._on_output(sub, output))
        got = manager.add_request(list(request.prompt_ids), request_id=sub.rid, max_new_tokens=request.max_new_tokens,
                                  streaming=True, eos_token_id=sorted(request.stop_ids), **kwargs)
        return got is not None

    def _on_output(self, sub: Submission, output) -> None:
        """Runs on the event loop (the manager delivers through call_soon_threadsafe)."""
        if sub.done:
            return
        if output.error is not None:
            self._forget(sub.rid)
            sub.fail(output.error)
            return
        sub.push(output.generated_tokens[sub.seen:])
        sub.seen = len(output.generated_tokens)
        if output.is_finished():
            self._forget(sub.rid)
            last = output.generated_tokens[-1] if output.generated_tokens else None
            sub.finish("stop" if last in sub.request.stop_ids else "length")

    def _forget(self, rid: str) -> None:
        self._rids.pop(rid, None)
        if self._manager is not None:  # a cancelled request never finishes, so its handler would stay registered
            _compat.forget_result_handler(self._manager, rid)

    def _cancel(self, sub: Submission) -> None:
        self._release(sub)
        rid = sub.rid
        if rid is None:  # it ran in the eager lane, whose worker sees sub.cancelled
            return
        self._forget(rid)
        if self._manager is not None:
            self._manager.cancel_request(rid)
