"""Engines: where a GenerationRequest becomes token ids.

    base.py         Submission (one request's life) and the Engine base (admission against --max-queue)
    continuous.py   Transformers' continuous batching, the default without vLLM
    eager.py        one `generate` at a time; also the seeded-sampling lane beside continuous batching
    vllm.py         vLLM's async engine, which loads the folder itself (the default where vLLM runs)
"""

from __future__ import annotations

from ...errors import UserInputError
from .base import Engine
from .continuous import ContinuousEngine
from .eager import EagerEngine

ENGINES = ("auto", "vllm", "continuous", "eager")
TRANSFORMERS_ENGINES = ("continuous", "eager")  # the engines that run on a Transformers model of ours


def make_engine(model, *, engine: str = "continuous", max_queue: int = 256, max_batch_tokens: int | None = None,
                kv_cache_tokens: int | None = None, stall_timeout: float | None = None) -> Engine:
    """An engine around a loaded Transformers model: continuous (on CPU too it measured 1.4x/2.1x one-at-a-time
    generate for 4/16 clients and within 13% for one, see docs/serving.md) or eager. vLLM loads the folder itself:
    engines/vllm.py's VllmEngine, made by loading.py."""
    if engine == "continuous":
        return ContinuousEngine(model, max_queue=max_queue, max_batch_tokens=max_batch_tokens,
                                kv_cache_tokens=kv_cache_tokens, stall_timeout=stall_timeout)
    if engine == "eager":
        return EagerEngine(model, max_queue=max_queue, stall_timeout=stall_timeout)
    raise UserInputError(f"unknown engine {engine!r}; expected one of: {', '.join(TRANSFORMERS_ENGINES)}")
