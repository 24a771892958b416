"""Engines: where a GenerationRequest becomes token ids.

    base.py         Submission (one request's life) and the Engine base (admission against --max-queue)
    continuous.py   Transformers' continuous batching, the default
    eager.py        one `generate` at a time; also the seeded-sampling lane beside continuous batching
"""

from __future__ import annotations

from ...errors import UserInputError
from .base import Engine
from .continuous import ContinuousEngine
from .eager import EagerEngine

ENGINES = ("continuous", "eager")


def make_engine(model, *, engine: str = "continuous", max_queue: int = 256, max_batch_tokens: int | None = None,
                kv_cache_tokens: int | None = None, stall_timeout: float | None = None) -> Engine:
    """continuous (the default on every device: on CPU too it measured 1.4x/2.1x one-at-a-time generate for 4/16
    clients and within 13% for one, see docs/serving.md) or eager."""
    if engine == "continuous":
        return ContinuousEngine(model, max_queue=max_queue, max_batch_tokens=max_batch_tokens,
                                kv_cache_tokens=kv_cache_tokens, stall_timeout=stall_timeout)
    if engine == "eager":
        return EagerEngine(model, max_queue=max_queue, stall_timeout=stall_timeout)
    raise UserInputError(f"unknown engine {engine!r}; expected one of: {', '.join(ENGINES)}")
