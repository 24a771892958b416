"""Every private name of Transformers, torch and bitsandbytes that codellama_hf touches, and what happens without it.

Nothing else in the package imports or reads a private name of those libraries; each one is looked up here, when
first needed, through a function that answers None (or a safe default) when the name has gone. The feature that
needs it then switches off with one log line that says what and why, and the package runs the library's public
path instead, which gives the same tokens:

- the fast path (`_prefill`, `_sample`, `_prepare_generation_config`, `_pad_token_tensor`, `_attn_implementation`)
  falls back to stock `generate`; so it does where the model's forward takes no `cache=` (before Transformers 5.24;
  5.19's takes `past_key_values`);
- without the pipelines' `_prepare_generate_kwargs` hook (absent in 5.19), our pipelines merge their defaults
  themselves;
- the compile-failure retry (torch's dynamo and inductor exception classes) lets such errors propagate;
- the serving engine (the continuous batching manager's `output_router._lock`, `.result_handlers`,
  `background_thread_status`) keeps a cancelled request's handler (it ignores later output) and judges the
  manager's health by its public `is_running()` alone;
- the device-map planner (`_get_device_map`) uses accelerate's public planner, without the quantizer's reserve;
- the 4-bit save fix for AVX512-BF16 CPUs (bitsandbytes' `support_avx512bf16_for_cpu`) and the demo's note on
  bitsandbytes' optional CPU kernel (`gemm_4bit_forward_kernel`) stay off.

`PRIVATE_NAMES` lists each with the release it was checked against; tests/test_compat.py removes each in turn.
"""

from __future__ import annotations

import importlib
import logging

logger = logging.getLogger(__name__)

# (library, private name, checked against, what switches off without it)
PRIVATE_NAMES = (
    ("transformers", "integrations.accelerate._get_device_map", "5.19.0, 5.25.0",
     "device_maps.auto_device_map plans with accelerate's public planner"),
    ("transformers", "PreTrainedModel._no_split_modules", "5.19.0, 5.25.0",
     "the fallback device-map planner splits modules anywhere"),
    ("transformers", "GenerationMixin._prefill", "5.19.0, 5.25.0", "fast path"),
    ("transformers", "GenerationMixin._sample", "5.19.0, 5.25.0", "fast path"),
    ("transformers", "GenerationMixin._prepare_generation_config", "5.19.0, 5.25.0", "fast path"),
    ("transformers", "GenerationConfig._pad_token_tensor", "5.19.0, 5.25.0", "fast path"),
    ("transformers", "PretrainedConfig._attn_implementation", "5.19.0, 5.25.0", "fast path"),
    ("transformers", "Pipeline._prepare_generate_kwargs (extended hook)", "5.25.0 (absent in 5.19)",
     "our pipelines merge their defaults themselves"),
    ("transformers", "ContinuousBatchingManager.output_router._lock/.result_handlers", "5.19.0, 5.25.0",
     "serving: unregistering a cancelled request's handler"),
    ("transformers", "ContinuousBatchingManager.background_thread_status", "5.19.0, 5.25.0",
     "serving: the manager's health beyond is_running()"),
    ("torch", "_dynamo.exc.BackendCompilerFailed/TorchRuntimeError/Unsupported", "2.13.0",
     "fast path: retrying a step eagerly after a failed compile"),
    ("torch", "_inductor.exc.InductorError", "2.13.0", "fast path: retrying a step eagerly after a failed compile"),
    ("bitsandbytes", "nn.Linear4bit.support_avx512bf16_for_cpu", "0.50.2",
     "keeping loaded 4-bit scales for save_pretrained on AVX512-BF16 CPUs"),
    ("bitsandbytes", "backends.cpu.ops.gemm_4bit_forward_kernel", "0.50.2",
     "the demo's note on bitsandbytes' optional CPU kernel"),
)

_switched_off: set[str] = set()


def switched_off(feature: str, why: str) -> None:
    """Log once per process that `feature` is off and why (one line)."""
    if feature not in _switched_off:
        _switched_off.add(feature)
        logger.warning("%s is off: %s", feature, why)


def _attr(module: str, path: str):
    """`module.path` (dotted attributes), or None when the module or any attribute is missing."""
    try:
        obj = importlib.import_module(module)
    except ImportError:
        return None
    for part in path.split("."):
        obj = getattr(obj, part, None)
        if obj is None:
            return None
    return obj


def _version(name: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(name)
    except PackageNotFoundError:
        return "not installed"


# ----- Transformers: device maps ------------------------------------------------------------------------------------
def get_device_map():
    """Transformers' `_get_device_map(model, device_map, max_memory, hf_quantizer)`: the plan `from_pretrained` makes."""
    found = _attr("transformers.integrations.accelerate", "_get_device_map")
    if found is None:
        switched_off("planning device maps with from_pretrained's own planner",
                     f"transformers {_version('transformers')} has no integrations.accelerate._get_device_map; "
                     f"plans come from accelerate's public infer_auto_device_map, which ignores a quantizer's reserve")
    return found


def no_split_modules(model) -> list[str]:
    """The module classes a device map must not split (`_no_split_modules`; Llama: its decoder layer)."""
    found = getattr(model, "_no_split_modules", None)
    if found is None:
        switched_off("keeping decoder layers whole in fallback device maps",
                     f"transformers {_version('transformers')}'s models have no _no_split_modules")
    return list(found or [])


# ----- Transformers: the fast path ----------------------------------------------------------------------------------
FAST_PATH_NAMES = ("_prefill", "_sample", "_prepare_generation_config")


def fast_path_missing(model=None) -> str | None:
    """Why the fast path cannot run on this Transformers (a private name it needs is gone), or None.
    Without a model, asks of Transformers' Llama, which ours subclasses."""
    if model is None:
        from transformers import LlamaForCausalLM as model
    for name in FAST_PATH_NAMES:
        if not callable(getattr(model, name, None)):
            return f"transformers {_version('transformers')} has no GenerationMixin.{name}"
    import inspect

    if "cache" not in inspect.signature(model.forward).parameters:  # 5.19's forward takes `past_key_values`
        return f"transformers {_version('transformers')}'s forward takes no `cache` argument"
    return None


def attn_implementation(config) -> str | None:
    """The attention implementation a loaded model runs (`config._attn_implementation`), or None if unknown."""
    return getattr(config, "_attn_implementation", None)


def prepare_generation_config(model, generation_config, **fields):
    """`model._prepare_generation_config(...)`: the merged config `generate` will run with (config only)."""
    config, _ = model._prepare_generation_config(generation_config, **fields)
    return config


def prefill(model, input_ids, generation_config, model_kwargs):
    """`model._prefill(...)`: `generate`'s own eager prefill, as its loop runs it."""
    return model._prefill(input_ids, generation_config, model_kwargs)


def stock_sample(model, *args, **kwargs):
    """`GenerationMixin._sample`: the stock decoding loop."""
    from transformers import GenerationMixin

    return GenerationMixin._sample(model, *args, **kwargs)


def has_prepared_pad(generation_config) -> bool:
    """Whether `generate` left its prepared pad id (`_pad_token_tensor`, set per call) where the loop reads it."""
    if hasattr(generation_config, "_pad_token_tensor"):
        return True
    switched_off("the fast path", f"transformers {_version('transformers')}'s generate prepares no "
                                  f"GenerationConfig._pad_token_tensor; decoding with the stock loop")
    return False


def pad_token_tensor(generation_config):
    """The pad id `generate` prepared for its loop (`_pad_token_tensor`; check `has_prepared_pad` first)."""
    return generation_config._pad_token_tensor


def pipeline_generate_kwargs(pipeline, base, generate_kwargs: dict, **overrides) -> dict:
    """`Pipeline._prepare_generate_kwargs` (the hook the fast path's pipelines extend, Transformers 5.2x), through
    `base` (the `super()` of the caller); where it is missing, the same merge: the call's keywords, and the
    pipeline's defaults where neither the call nor the model's generation config sets them."""
    hook = getattr(base, "_prepare_generate_kwargs", None)
    if hook is not None:
        return hook(generate_kwargs, **overrides)
    switched_off("Transformers' merge of pipeline generation defaults", f"transformers {_version('transformers')}'s "
                 f"Pipeline has no _prepare_generate_kwargs; our pipelines merge their defaults themselves")
    from transformers import GenerationConfig

    kwargs = dict(generate_kwargs)
    defaults = getattr(pipeline, "_default_generation_config", None)  # our pipelines' own class attribute
    if defaults is not None and "generation_config" not in kwargs:
        # as the hook does: a pipeline default only where neither the call nor the model's generation config sets it
        model_config, stock = pipeline.model.generation_config, GenerationConfig()
        for key, value in defaults.to_diff_dict().items():
            if key != "transformers_version" and key not in kwargs \
                    and getattr(model_config, key, None) == getattr(stock, key, None):
                kwargs[key] = value
    kwargs.update(overrides)
    return kwargs


# ----- torch ---------------------------------------------------------------------------------------------------------
def compile_errors() -> tuple[type, ...]:
    """What torch raises when it cannot compile (tracing or backend), not when a compiled step fails to run.
    Empty when torch moved them: compile failures then propagate instead of falling back to eager."""
    found = [c for c in (_attr("torch._dynamo.exc", "BackendCompilerFailed"),
                         _attr("torch._dynamo.exc", "TorchRuntimeError"),
                         _attr("torch._dynamo.exc", "Unsupported"),
                         _attr("torch._inductor.exc", "InductorError"))  # torch >= 2.7: inductor's own failures
             if isinstance(c, type)]
    if len(found) < 4:
        switched_off("retrying a decode step eagerly after a failed compile",
                     f"torch {_version('torch')} lacks some of torch._dynamo.exc.BackendCompilerFailed, "
                     f"TorchRuntimeError, Unsupported or torch._inductor.exc.InductorError; retrying on those it has")
    return tuple(found)


# ----- Transformers: continuous batching (serving) -------------------------------------------------------------------
def forget_result_handler(manager, request_id: str) -> None:
    """Unregister a request's result handler (a cancelled request never finishes, so its handler would stay)."""
    router = getattr(manager, "output_router", None)
    lock, handlers = getattr(router, "_lock", None), getattr(router, "result_handlers", None)
    if lock is None or not hasattr(handlers, "pop"):
        switched_off("unregistering a cancelled request's result handler",
                     f"transformers {_version('transformers')}'s continuous batching manager has no "
                     f"output_router._lock/.result_handlers; a cancelled request's handler stays and ignores output")
        return
    with lock:
        handlers.pop(request_id, None)


def manager_accepts_requests(manager) -> bool:
    """Whether the manager's background thread reports nothing wrong (`background_thread_status`); True if unknown."""
    status = getattr(manager, "background_thread_status", None)
    check = getattr(status, "can_accept_new_requests", None)
    if check is None:
        switched_off("checking the continuous batching thread's status",
                     f"transformers {_version('transformers')}'s manager has no background_thread_status; "
                     f"its health is judged by is_running() alone")
        return True
    return check() is None


# ----- bitsandbytes --------------------------------------------------------------------------------------------------
def bnb_repacks_for_cpu(module) -> bool:
    """Whether bitsandbytes repacks this 4-bit module for its AVX512-BF16 CPU kernel (`support_avx512bf16_for_cpu`,
    set in `Linear4bit.__init__`). False, logged once, when a 4-bit module no longer says."""
    flag = getattr(module, "support_avx512bf16_for_cpu", None)
    if flag is None:
        switched_off("keeping the loaded 4-bit scales for save_pretrained",
                     f"bitsandbytes {_version('bitsandbytes')}'s Linear4bit has no support_avx512bf16_for_cpu")
    return bool(flag)


def bnb_optional_cpu_kernel() -> str | None:
    """Whether bitsandbytes' optional CPU 4-bit kernel (fetched from the hub through `kernels`) is in use:
    "not tried" (this CPU lacks AVX512-BF16, so bitsandbytes never asks for it), "loaded", "missing", or None when
    this bitsandbytes no longer says (then the demo passes its log lines through untouched)."""
    has_bf16 = _attr("bitsandbytes.functional", "has_avx512bf16")
    ops = _attr("bitsandbytes.backends.cpu", "ops")
    if has_bf16 is None or ops is None:
        return None
    if not has_bf16():
        return "not tried"
    if "gemm_4bit_forward_kernel" not in vars(ops):
        switched_off("explaining bitsandbytes' optional CPU kernel",
                     f"bitsandbytes {_version('bitsandbytes')} has no backends.cpu.ops.gemm_4bit_forward_kernel")
        return None
    return "missing" if ops.gemm_4bit_forward_kernel is None else "loaded"
