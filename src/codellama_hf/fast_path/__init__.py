"""The fast path: static caches and a compiled decode step behind `model.generate`, token for token the stock loop.

    policy.py   when a call takes it, and what a user calls directly: `generate(model, ...)`, `warm_up(model, ...)`
    loop.py     the decoding loop `generate` runs (`custom_generate=fast_sample`) and its pooled static caches
"""

from .loop import DecodePlan, cache_bucket, cache_pool, fast_sample, release_caches
from .policy import DEFAULT_COMPILE_CONFIG, FastPathPipeline, generate, model_cannot_compile, warm_up, with_fast_path

__all__ = ["DEFAULT_COMPILE_CONFIG", "DecodePlan", "FastPathPipeline", "cache_bucket", "cache_pool", "fast_sample",
           "generate", "model_cannot_compile", "release_caches", "warm_up", "with_fast_path"]
