"""The fast path's decoding loop, run by `model.generate(custom_generate=fast_sample, ...)`.

`generate` does all the preparing as usual (generation config, logits processors, stopping criteria, special tokens,
attention mask, position ids); this replaces only its `_sample` loop for greedy and sampled decoding. The differences:

- a Transformers `StaticCache` sized to a bucket and reused across calls from a small pool on the model, so the cache
  tensors keep their addresses and a CUDA graph recorded for them replays instead of being recorded again;
- the decode step is the model's forward, `torch.compile`d once per compile config (CUDA graphs under
  `mode="reduce-overhead"`), with inputs whose shapes depend only on the batch size and the cache bucket: one token,
  its positions and a full-length 2D mask, so neither the prompt length nor `max_new_tokens` reaches a compiled shape;
- no host synchronisation per token: the stop flag (and, when streaming, the tokens) are copied to pinned memory
  without blocking and read `lag` steps later, so the host queues the next step while the device runs this one. The
  at most `lag` steps run past the stop are dropped, so the result is the stock loop's, token for token.
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict, deque
from dataclasses import dataclass

import torch
from transformers import StaticCache
from transformers.generation.configuration_utils import GenerationMode

from .. import _compat

logger = logging.getLogger(__name__)

# What `generate` hands a decoder-only decoding method besides the ids; anything else goes to the stock loop.
HANDLED_MODEL_KWARGS = frozenset({"attention_mask", "position_ids", "cache", "use_cache", "logits_to_keep"})
POOL_SIZE = 4  # static caches kept per model; bucket sizes are powers of two, so 4 span a 1:8 range of lengths
MIN_BUCKET, MAX_BUCKET = 256, 16384  # cache lengths; longer requests (past the trained context) take the stock loop


@dataclass(frozen=True)
class DecodePlan:
    """How `fast_sample` runs a call: the compiled forward (None: eager) and how many steps late it reads the stop."""

    forward: object | None
    lag: int


def cache_bucket(length: int) -> int:
    """The static cache length for ids up to `length` long: the next power of two, at least MIN_BUCKET. Powers of two
    keep the CUDA graphs few (one per bucket and batch size) and the pooled caches within twice the largest."""
    return max(MIN_BUCKET, 1 << (max(length, 1) - 1).bit_length())


def fast_sample(model, input_ids, logits_processor, stopping_criteria, generation_config, codellama_plan=None,
                codellama_streamer=None, **model_kwargs):
    """`generate`'s decoding method for the fast path (greedy or sampled, one sequence per row).

    `generate` drops `streamer` for a callable `custom_generate`, hence `codellama_streamer`; `codellama_plan` comes
    from `codellama_hf.fast_path`, which also checks that the call is one this loop handles.
    """
    mode = generation_config.get_generation_mode()
    extra = set(model_kwargs) - HANDLED_MODEL_KWARGS
    if codellama_plan is None or mode not in (GenerationMode.GREEDY_SEARCH, GenerationMode.SAMPLE) or extra \
            or generation_config.return_dict_in_generate or model_kwargs.get("position_ids") is None:
        raise RuntimeError(f"fast_sample got a call it does not handle (mode {mode}, model kwargs {sorted(extra)}); "
                           f"codellama_hf.fast_path should have sent it to the stock loop")
    streamer = codellama_streamer
    if streamer is not None:
        streamer.put(input_ids.cpu())  # what generate does before its loop, skipped for a custom_generate
    length = cache_bucket(generation_config.max_length)
    # Past MAX_BUCKET a static cache and its prefill mask would cost more than they save; without generate's prepared
    # pad id the loop could not pad finished rows as the stock loop does.
    if length > MAX_BUCKET or not _compat.has_prepared_pad(generation_config):
        return _compat.stock_sample(model, input_ids, logits_processor, stopping_criteria, generation_config,
                                    synced_gpus=False, streamer=streamer, **model_kwargs)
    out_device, device = input_ids.device, model.device
    input_ids = input_ids.to(device)
    model_kwargs = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in model_kwargs.items()}
    batch, prompt = input_ids.shape
    max_length = generation_config.max_length
    pool, key = cache_pool(model), (batch, length)
    cache = pool.take(model, key)
    try:
        ids = _decode(model, input_ids, model_kwargs, cache, length, logits_processor, stopping_criteria,
                      generation_config, codellama_plan, streamer, max_length)
    finally:
        pool.give_back(key, cache)
    if streamer is not None:
        streamer.end()
    return ids.to(out_device)


def _decode(model, input_ids, model_kwargs, cache, cache_length, logits_processor, stopping_criteria,
            generation_config, plan, streamer, max_length):
    batch, prompt = input_ids.shape
    device = input_ids.device
    model_kwargs["cache"] = cache
    outputs = _compat.prefill(model, input_ids, generation_config, model_kwargs)  # eager, as in the stock loop
    logits = outputs.logits[:, -1].to(copy=True, dtype=torch.float32)
    del outputs

    # The decode step's inputs have fixed shapes. The mask covers the whole cache: 0 only at left padding, since the
    # causal part (from the cache's own write position) already hides the positions not yet written.
    mask = torch.ones(batch, cache_length, dtype=torch.bool, device=device)
    if (prompt_mask := model_kwargs.get("attention_mask")) is not None:
        mask[:, :prompt] = prompt_mask.bool()
    positions = model_kwargs["position_ids"][:, -1:] + 1
    ids = input_ids.new_empty(batch, max_length)
    ids[:, :prompt] = input_ids
    unfinished = torch.ones(batch, dtype=torch.long, device=device)
    pad = _compat.pad_token_tensor(generation_config)
    masks_finished = pad is not None and any(hasattr(c, "eos_token_id") for c in stopping_criteria)
    forward = plan.forward or model.__call__
    stop = StopWatch(lag=plan.lag, batch=batch, device=device, streamer=streamer)

    length = prompt
    while True:
        scores = logits_processor(ids[:, :length], logits)
        if generation_config.do_sample:
            tokens = torch.multinomial(torch.softmax(scores, dim=-1), num_samples=1).squeeze(1)
        else:
            tokens = torch.argmax(scores, dim=-1)
        if masks_finished:  # finished rows get the pad id, as in the stock loop
            tokens = tokens * unfinished + pad * (1 - unfinished)
        ids[:, length] = tokens
        length += 1
        unfinished = unfinished & ~stopping_criteria(ids[:, :length], scores)
        if stop.push(length, unfinished, tokens) or length == max_length:
            break
        inputs = dict(input_ids=tokens[:, None], position_ids=positions, attention_mask=mask, cache=cache,
                      use_cache=True)
        logits, forward = decode_step(model, forward, inputs)
        positions = positions + 1
    return ids[:, :stop.finish(length)].contiguous()


def decode_step(model, forward, inputs: dict):
    """The next-token logits (float32, copied out of the CUDA graph's buffer before its next replay), and the forward
    to use from now on: the model's own if compiling failed."""
    try:
        return forward(**inputs).logits[:, -1].to(copy=True, dtype=torch.float32), forward
    except COMPILE_ERRORS as error:
        if forward is model.__call__:
            raise
        # dynamo traces on fake tensors, so a failed compile has not touched the cache: retry this step eagerly
        cause = getattr(error, "inner_exception", None) or error.__cause__ or error
        logger.warning("compiling the decode step failed, so this model decodes eagerly from now on: %s: %s",
                       type(cause).__name__, (str(cause).strip().splitlines() or [""])[0])
        model.__dict__["_codellama_compile_failed"] = True
        return model.__call__(**inputs).logits[:, -1].to(copy=True, dtype=torch.float32), model.__call__


# What torch raises when it cannot compile (tracing or backend), not when a compiled step fails to run.
COMPILE_ERRORS = _compat.compile_errors()


class StopWatch:
    """Reads "every row has finished" (and the tokens, for a streamer) `lag` steps after the device computes it.

    With `lag=0` it reads at once: one synchronisation per token, as the stock loop. With `lag>=1` the flag and tokens
    go to pinned host memory by a non-blocking copy, so the host waits only for the step `lag` before the newest one.
    """

    def __init__(self, *, lag: int, batch: int, device: torch.device, streamer=None):
        self.lag, self.streamer, self.stopped_at = lag, streamer, None
        self.pending: deque = deque()
        pinned = device.type == "cuda"
        self.free = [(torch.zeros((), dtype=torch.bool, pin_memory=pinned),
                      torch.zeros(batch, dtype=torch.long, pin_memory=pinned),
                      torch.cuda.Event() if pinned else None) for _ in range(lag + 1)] if lag else []

    def push(self, length: int, unfinished: torch.Tensor, tokens: torch.Tensor) -> bool:
        """Record the step that made the ids `length` long; True once a step is known to have finished every row."""
        if not self.lag:
            self.pending.append((length, unfinished.max() == 0, tokens, None))
        else:
            flag, host_tokens, event = slot = self.free.pop()
            flag.copy_(unfinished.max() == 0, non_blocking=True)
            if self.streamer is not None:
                host_tokens.copy_(tokens, non_blocking=True)
            if event is not None:
                event.record()
            self.pending.append((length, flag, host_tokens, slot))
        while len(self.pending) > self.lag:
            if self._settle():
                return True
        return False

    def finish(self, length: int) -> int:
        """The length of the ids the stock loop returns: up to the first step that finished every row."""
        while self.pending and self.stopped_at is None:
            self._settle()
        return self.stopped_at or length

    def _settle(self) -> bool:
        length, flag, tokens, slot = self.pending.popleft()
        if slot is not None and slot[2] is not None:
            slot[2].synchronize()
        if self.stopped_at is None:
            if self.streamer is not None:
                self.streamer.put(tokens.clone() if slot is not None else tokens.cpu())
            if bool(flag):
                self.stopped_at = length
        if slot is not None:
            self.free.append(slot)  # only now: the next push overwrites it
        return self.stopped_at is not None


class CachePool:
    """Static caches by (batch, length), most recently used last. A cache is taken out while a call uses it, so two
    concurrent calls never share one; the second simply gets a new cache."""

    def __init__(self, size: int = POOL_SIZE):
        self.size, self.free, self.lock = size, OrderedDict(), threading.Lock()

    def take(self, model, key: tuple[int, int]) -> StaticCache:
        with self.lock:
            cache = self.free.pop(key, None)
        if cache is None:
            return StaticCache(config=model.config.get_text_config(decoder=True), max_cache_len=key[1])
        cache.reset()
        return cache

    def give_back(self, key: tuple[int, int], cache: StaticCache) -> None:
        with self.lock:
            self.free[key] = cache
            while len(self.free) > self.size:
                self.free.popitem(last=False)

    def keys(self) -> list[tuple[int, int]]:
        with self.lock:
            return list(self.free)


def cache_pool(model) -> CachePool:
    pool = model.__dict__.get("_codellama_cache_pool")
    if pool is None:
        pool = model.__dict__["_codellama_cache_pool"] = CachePool()
    return pool


def release_caches(model) -> None:
    """Free the static caches the fast path keeps on `model` (they are made again, and re-recorded, when needed)."""
    model.__dict__.pop("_codellama_cache_pool", None)
