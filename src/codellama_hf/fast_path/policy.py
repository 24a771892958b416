"""When generation takes the fast path (`loop.fast_sample`), and the calls a user makes directly:
`generate(model, ...)` for a hand-written loop and `warm_up(model, ...)` to compile before the first request.

Our pipelines take the fast path by default on CUDA and pass `fast=False` to opt out; elsewhere it runs only when
asked (`fast=True`), and compiles only when a `compile_config` is passed too. `model.generate` called directly is
never changed. Calls the loop does not handle (beam search, assisted decoding, `return_dict_in_generate`, a cache of
the caller's, extra model inputs) go to stock `generate` unchanged, and so do models that cannot be compiled
(bitsandbytes weights, offloaded layers), with one log line that says why.
"""

from __future__ import annotations

import logging
import time

import torch
from transformers import CompileConfig, GenerationConfig, StoppingCriteria, StoppingCriteriaList
from transformers.generation.configuration_utils import GenerationMode

from .. import _compat
from ..errors import UserInputError
from .loop import MIN_BUCKET, DecodePlan, cache_bucket, fast_sample

logger = logging.getLogger(__name__)

# CUDA graphs ("reduce-overhead") over one graph for the whole forward, with dynamic shapes: the cache length is
# symbolic from the first compile, so a process compiles one graph per model for batch 1 (size 1 is always
# specialised) and one more for larger batches, whatever the prompts and `max_new_tokens`; the buckets then bound only
# the CUDA graphs recorded. (With `dynamic=None`, Transformers' default, dynamo first specialises the length too,
# which costs one more compile.)
DEFAULT_COMPILE_CONFIG = CompileConfig(fullgraph=True, dynamic=True, mode="reduce-overhead")
GENERATION_FIELDS = frozenset(k for k in vars(GenerationConfig()) if not k.startswith("_"))
# generate's own parameters and the model inputs the loop handles; any other keyword is a model input for stock generate
LOOP_KWARGS = frozenset({"input_ids", "attention_mask", "position_ids", "logits_processor", "stopping_criteria",
                         "prefix_allowed_tokens_fn", "streamer", "generation_config", "tokenizer", "compile_config",
                         "synced_gpus"})


def with_fast_path(model, generate_kwargs: dict, *, fast: bool | None, default: bool = True) -> dict:
    """`generate_kwargs` for `model.generate`, routed to the fast loop when it applies; else unchanged.

    `fast`: True or False as the caller asked, None for the default, which is on for CUDA models when `default` is.
    """
    if fast not in (None, True, False):
        raise UserInputError(f"fast={fast!r} is not a switch; pass fast=True, fast=False or leave it out (on for CUDA)")
    if not (fast if fast is not None else default and model.device.type == "cuda"):
        return generate_kwargs
    if (why := model_cannot_compile(model)) is not None:
        if not model.__dict__.get("_codellama_fast_refused"):
            model.__dict__["_codellama_fast_refused"] = True
            logger.warning("fast path off for this model, decoding eagerly: %s", why)
        return generate_kwargs
    if call_needs_stock_loop(model, generate_kwargs):
        return generate_kwargs
    kwargs = dict(generate_kwargs)
    compile_config = kwargs.pop("compile_config", None)
    if compile_config is None and model.device.type == "cuda":
        compile_config = DEFAULT_COMPILE_CONFIG
    config = kwargs.get("generation_config") or model.generation_config
    disabled = kwargs.get("disable_compile", config.disable_compile)
    failed = model.__dict__.get("_codellama_compile_failed", False)  # logged once, when it failed
    compiling = compile_config is not None and not (disabled or failed)
    forward = compiled_forward(model, compile_config) if compiling else None
    kwargs["codellama_plan"] = DecodePlan(forward=forward, lag=1 if model.device.type == "cuda" else 0)
    kwargs["codellama_streamer"] = kwargs.pop("streamer", None)
    kwargs["custom_generate"] = fast_sample
    return kwargs


def model_cannot_compile(model) -> str | None:
    """Why the fast path cannot run `model` (Transformers' own compile criteria, named), or None."""
    quantizer = getattr(model, "hf_quantizer", None)
    if quantizer is not None and not quantizer.is_compileable:
        config = quantizer.quantization_config
        method = getattr(config, "quant_method", "quantized")
        kind = [str(getattr(method, "value", method))] + [bits for bits, flag in (("4-bit", "load_in_4bit"),
                                                                                  ("8-bit", "load_in_8bit"))
                                                          if getattr(config, flag, False)]
        return (f"its {' '.join(kind)} weights cannot be compiled (Transformers marks {type(quantizer).__name__} "
                f"not compileable)")
    placed = set(getattr(model, "hf_device_map", {}).values())
    if "disk" in placed or ("cpu" in placed and len(placed) > 1):
        return f"layers are offloaded ({', '.join(sorted(map(str, placed)))}), which torch.compile does not support"
    attention = _compat.attn_implementation(model.config)
    if attention not in ("sdpa", "eager"):  # the decode step's full-length mask suits these two mask builders only
        return f"its attention implementation {attention!r} is not one the fast path runs (sdpa or eager)"
    if (missing := _compat.fast_path_missing(model)) is not None:
        return f"{missing} (the fast path needs Transformers 5.24 or later)"
    return None


def call_needs_stock_loop(model, generate_kwargs: dict) -> bool:
    """Whether this call asks for something only stock generate does (decided as generate itself decides)."""
    if generate_kwargs.get("custom_generate") is not None or generate_kwargs.get("cache") is not None \
            or generate_kwargs.get("synced_gpus") or generate_kwargs.get("negative_prompt_ids") is not None:
        return True
    if set(generate_kwargs) - GENERATION_FIELDS - LOOP_KWARGS - {"assistant_model", "assistant_tokenizer"}:
        return True  # model inputs beyond ids, mask and positions
    fields = {k: v for k, v in generate_kwargs.items() if k in GENERATION_FIELDS}
    config = _compat.prepare_generation_config(model, generate_kwargs.get("generation_config"), **fields)
    mode = config.get_generation_mode(generate_kwargs.get("assistant_model"))
    return (mode not in (GenerationMode.GREEDY_SEARCH, GenerationMode.SAMPLE) or config.return_dict_in_generate
            or config.cache_implementation is not None or config.use_cache is False
            or config.prefill_chunk_size is not None)


def compiled_forward(model, compile_config: CompileConfig):
    """`torch.compile(model.__call__)` for this config, made once per model and config."""
    compiled = model.__dict__.setdefault("_codellama_compiled", {})
    key = repr(sorted(compile_config.to_dict().items()))
    if key not in compiled:
        compiled[key] = torch.compile(model.__call__, **compile_config.to_dict())
    return compiled[key]


def generate(model, *, fast: bool | None = True, **generate_kwargs):
    """`model.generate(**generate_kwargs)` on the fast path (where it applies), for hand-written loops."""
    return model.generate(**with_fast_path(model, generate_kwargs, fast=fast))


class _StopAfter(StoppingCriteria):
    def __init__(self, new_tokens: int, prompt_length: int):
        self.until = prompt_length + new_tokens

    def __call__(self, input_ids, scores, **kwargs):
        return torch.full((input_ids.shape[0],), input_ids.shape[1] >= self.until, device=input_ids.device)


def warm_up(model, *, batch_sizes=(1,), max_lengths=(2048,), compile_config: CompileConfig | None = None,
            fast: bool | None = None) -> float:
    """Compile the fast path's decode step for `model` and record its CUDA graphs, before the first request.

    `batch_sizes` and `max_lengths` (prompt + new tokens) name the shapes to come. Batch 1 at the two smallest cache
    buckets, and batch 2 where a larger batch is named, run first, so that the graphs are general in the cache length
    and batch size (also under a `compile_config` with `dynamic=None`) and later shapes never compile; the shapes
    named then record their CUDA graphs. 5 tokens per shape; returns the seconds it took. A model or device the fast path does not take is left alone (0.0). `fast` and `compile_config`
    as for the pipelines (None: on for CUDA).
    """
    for name, values in (("batch_sizes", batch_sizes), ("max_lengths", max_lengths)):
        if not values or any(not isinstance(v, int) or v < 1 for v in values):
            raise UserInputError(f"{name}={values!r} must be a non-empty list of positive ints")
    shapes = [(1, MIN_BUCKET), (1, 2 * MIN_BUCKET)] + ([(2, MIN_BUCKET)] if max(batch_sizes) > 1 else [])
    shapes += [(b, cache_bucket(n)) for b in sorted(batch_sizes) for n in sorted(max_lengths)]
    start = time.perf_counter()
    pad = model.generation_config.pad_token_id
    pad = 0 if pad is None else pad if isinstance(pad, int) else pad[0]
    for batch, length in dict.fromkeys(shapes):
        kwargs = {} if compile_config is None else {"compile_config": compile_config}
        ids = torch.full((batch, 8), 3, dtype=torch.long, device=model.device)  # any ids; only the shapes matter
        mask = torch.ones_like(ids)
        mask[1:, :2] = 0  # a left-padded row, as batches of different prompt lengths have
        routed = with_fast_path(model, dict(input_ids=ids, attention_mask=mask, max_new_tokens=length - 8,
                                            do_sample=False, pad_token_id=pad, **kwargs), fast=fast)
        if "custom_generate" not in routed:
            return 0.0
        # 5 tokens: 4 decode steps, enough for CUDA graph trees to warm up, record and replay
        routed["stopping_criteria"] = StoppingCriteriaList([_StopAfter(5, ids.shape[1])])
        model.generate(**routed)
    if model.device.type == "cuda":
        torch.cuda.synchronize(model.device)
    return time.perf_counter() - start


class FastPathPipeline:
    """Mixin for our pipelines: `fast=` at construction or per call; `warmup=True` (or a dict of `warm_up`'s keyword
    arguments) at construction compiles before the first request."""

    def _fast_default(self) -> bool:
        return True

    def _warm_up_if_asked(self, warmup, fast) -> None:
        if not warmup:
            return
        if fast is None and not self._fast_default():
            fast = False
        options = {"batch_sizes": sorted({1, self._batch_size or 1})}
        if isinstance(warmup, dict):
            options.update(warmup)
        elif warmup is not True:
            raise UserInputError(f"warmup={warmup!r}: pass True, or a dict of warm_up's keyword arguments")
        seconds = warm_up(self.model, fast=fast, **options)
        logger.info("fast path warmed up in %.1f s for %s", seconds, options)

    def _prepare_generate_kwargs(self, generate_kwargs: dict, **overrides) -> dict:
        generate_kwargs = dict(generate_kwargs)
        fast = generate_kwargs.pop("fast", None)
        kwargs = _compat.pipeline_generate_kwargs(self, super(), generate_kwargs, **overrides)
        return with_fast_path(self.model, kwargs, fast=fast, default=self._fast_default())
