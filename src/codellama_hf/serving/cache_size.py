"""How big the continuous-batching KV cache is: from what the server needs and what is free, never from total RAM.

Left to itself, Transformers 5.25 sizes the paged cache from `total - own RSS` on CPU (`get_device_and_memory_breakdown`
in continuous_batching/utils.py), so a 4 MB model on a 24 GB machine grew towards 13 GB and was killed. It also
allocates, beside the cache, buffers that grow with it: an attention mask of max_batch_tokens x (cache tokens +
max_batch_tokens) in the compute dtype (no mask with flash attention), the keys and values read back at the
attention peak, and per-batch-token activations. With its default max_batch_tokens of 8192 a 65,536-token cache
costs 8192 x 73,728 x 4 bytes = 2.4 GB of float32 mask on CPU, which is why `--kv-cache-tokens 65536` still held
3 GB. So we choose both numbers, and count both, here:

    cache tokens = --max-concurrent x the model's context, capped by what fits in the usable free memory
    usable       = free memory x (1 - headroom): half of what is available on CPU (the machine runs other things),
                   90% of the GPU's free memory (Transformers' device_map="auto" keeps 10% too)
    cost         = kv_cache_bytes (the core's exact bytes) + the buffers above (PagedAttentionMemoryHandler's
                   accounting, the larger of its two peaks)

A cache the user asks for that does not fit is refused with what would.
"""

from __future__ import annotations

from dataclasses import dataclass

from codellama_hf_core.memory import DTYPE_BYTES, kv_cache_bytes

from ..errors import UserInputError

PAGE_SIZE = 256  # tokens per cache block (Transformers' default page size)
MAX_CONCURRENT = 4  # default --max-concurrent: full-context sequences the cache holds at once
# Tokens per forward step. On CPU a step of 256 tokens is already compute-bound, and the attention mask grows with it
# (x every cache token); on a GPU Transformers' own default.
MAX_BATCH_TOKENS = {"cpu": 256, "cuda": 8192}
HEADROOM = {"cpu": 0.5, "cuda": 0.10}
MAX_LOGIT_ROWS = 1024  # Transformers reserves LM-head rows for this many requests per batch (its fallback default)
MIN_CACHE_TOKENS = PAGE_SIZE  # below one page nothing can be served


def _mib(n: int) -> str:
    return f"{n / 2**20:,.0f} MiB" if n < 10 * 2**30 else f"{n / 2**30:,.1f} GiB"


@dataclass(frozen=True)
class CachePlan:
    kv_cache_tokens: int
    max_batch_tokens: int
    cache_bytes: int  # the keys and values themselves
    buffer_bytes: int  # what grows with them: masks, read-back keys and values, batch activations, logit rows
    usable_bytes: int
    reason: str

    def describe(self) -> str:
        return (f"KV cache: {self.kv_cache_tokens} tokens ({_mib(self.cache_bytes)}, + {_mib(self.buffer_bytes)} of "
                f"buffers; {self.max_batch_tokens} tokens per step): {self.reason}")


def _costs(config, *, dtype: str, device: str, max_batch_tokens: int) -> tuple[int, int]:
    """(bytes per cache token, fixed bytes) of Transformers' paged cache beside the model."""
    a = DTYPE_BYTES[dtype]
    heads = config.num_attention_heads
    kv_heads = config.num_key_value_heads or heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    io = 2 if device == "cuda" else 1  # async batching (two sets of inputs) is on where CUDA streams are
    kv_read = (2 * heads + kv_heads) * head_dim * a  # the repeated keys and values at the attention peak
    per_token = kv_cache_bytes(config, context=1, dtype=dtype) + kv_read + io * 8 + io * max_batch_tokens * a  # mask
    attention_peak = a * (config.hidden_size + heads * head_dim + 2 * kv_heads * head_dim + kv_read // a)
    lm_head_row = config.hidden_size * a + config.vocab_size * 4  # float32 logits
    per_batch_token = max(attention_peak, lm_head_row) + io * 64
    fixed = (max_batch_tokens * per_batch_token + MAX_LOGIT_ROWS * lm_head_row
             + io * max_batch_tokens * max_batch_tokens * a)
    return per_token, fixed


def plan_cache(config, *, dtype: str, device: str, free_bytes: int, context: int, max_concurrent: int = MAX_CONCURRENT,
               kv_cache_tokens: int | None = None, max_batch_tokens: int | None = None) -> CachePlan:
    """The cache for `max_concurrent` sequences of `context` tokens (or `kv_cache_tokens`), within `free_bytes`.

    device: "cpu" or "cuda" (any other accelerator is planned as a GPU). Raises UserInputError when the asked cache,
    or the smallest useful one, does not fit."""
    kind = "cpu" if device == "cpu" else "cuda"
    if max_concurrent < 1:
        raise UserInputError(f"--max-concurrent {max_concurrent!r} must be >= 1")
    for name, value in (("--kv-cache-tokens", kv_cache_tokens), ("--max-batch-tokens", max_batch_tokens)):
        if value is not None and value < 1:
            raise UserInputError(f"{name} {value!r} must be >= 1")
    step = max_batch_tokens or MAX_BATCH_TOKENS[kind]
    per_token, fixed = _costs(config, dtype=dtype, device=kind, max_batch_tokens=step)
    usable = int(free_bytes * (1 - HEADROOM[kind]))
    fits = max(0, (usable - fixed) // per_token) // PAGE_SIZE * PAGE_SIZE
    where = (f"{_mib(free_bytes)} free on {device}, {1 - HEADROOM[kind]:.0%} of it usable: {_mib(usable)}")
    if kv_cache_tokens is not None:
        tokens = -(-kv_cache_tokens // PAGE_SIZE) * PAGE_SIZE
        if tokens > fits:
            raise UserInputError(
                f"--kv-cache-tokens {kv_cache_tokens} needs {_mib(tokens * per_token + fixed)} with its buffers, but "
                f"{where}; at most {fits} tokens fit: pass --kv-cache-tokens {fits} or less (or free memory)")
        reason = f"--kv-cache-tokens {kv_cache_tokens}; {where}"
    else:
        needed = max_concurrent * context
        tokens = min(-(-needed // PAGE_SIZE) * PAGE_SIZE, fits)
        if tokens < MIN_CACHE_TOKENS:
            raise UserInputError(f"no room for a KV cache: {where}, and one page of {PAGE_SIZE} tokens needs "
                                 f"{_mib(PAGE_SIZE * per_token + fixed)}; free memory, or pass a smaller "
                                 f"--max-batch-tokens")
        reason = (f"--max-concurrent {max_concurrent} x {context} tokens of context"
                  + ("" if tokens >= needed else f" ({needed}) capped by free memory") + f"; {where}")
    return CachePlan(kv_cache_tokens=tokens, max_batch_tokens=min(step, tokens), cache_bytes=tokens * (
        kv_cache_bytes(config, context=1, dtype=dtype)), buffer_bytes=fixed + tokens * (
        per_token - kv_cache_bytes(config, context=1, dtype=dtype)), usable_bytes=usable, reason=reason)


def free_memory(device) -> int:
    """Bytes free for the cache now, on `device` (a torch.device): what is available, not the total."""
    import torch

    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free)
    import psutil

    return int(psutil.virtual_memory().available)
