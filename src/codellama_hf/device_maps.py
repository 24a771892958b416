"""Device maps without weights: what `from_pretrained(device_map="auto")` makes, and a cpu+disk split that uses RAM.

Why a helper for cpu+disk: accelerate's planner keeps room on the main device (cpu here) for the largest module it
may have to stream in from disk, and it takes the largest *module*, not the largest decoder layer. At full size that
is one decoder layer, which is fair; on a small or narrow model it is the embedding or lm_head (vocab x hidden), so a
cpu budget of half the model can keep no decoder layer in RAM at all. It also stops filling the cpu at the first
module that does not fit. `cpu_disk_device_map` treats the budget as room for resident weights (as accelerate treats
a GPU's) and fills it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import logging

from codellama_hf_core.errors import UserInputError
from codellama_hf_core.memory import DTYPE_BYTES, QUANTIZATIONS, MemoryEstimate, check_choice, module_bytes
from codellama_hf_core.memory import estimate_memory as _estimate_bytes
from codellama_hf_core.variants import Variant, get_variant

from .quantization import bitsandbytes_config

_DEVICE_KEYS = ("cpu", "disk", "mps")


def parse_max_memory(spec) -> dict[int | str, int]:
    """`"0=24GiB,1=24GiB,cpu=64GiB"` or `{0: "24GiB", "cpu": 64 * 2**30}` -> `{0: bytes, 1: bytes, "cpu": bytes}`."""
    from accelerate.utils import convert_file_size_to_int

    if isinstance(spec, dict):
        pairs = spec.items()
    else:
        pairs = [part.partition("=")[::2] for part in str(spec).split(",") if part.strip()]
    out: dict[int | str, int] = {}
    for key, size in pairs:
        key = key.strip() if isinstance(key, str) else key
        device = int(key) if isinstance(key, int) or key.isdigit() else key
        if device not in _DEVICE_KEYS and not isinstance(device, int):
            raise UserInputError(f"unknown device {key!r} in max memory {spec!r}; use GPU numbers, 'cpu' or 'disk', "
                                 f"e.g. '0=24GiB,1=24GiB,cpu=64GiB'")
        try:
            out[device] = convert_file_size_to_int(size.strip() if isinstance(size, str) else size)
        except (ValueError, TypeError, AttributeError):
            raise UserInputError(f"cannot read the size {size!r} for device {key!r} in max memory {spec!r}; write "
                                 f"sizes like '24GiB', '500MB' or a number of bytes") from None
    if not out:
        raise UserInputError(f"max memory {spec!r} names no device; e.g. '0=24GiB,1=24GiB,cpu=64GiB'")
    return out


def _quantization_config(quantization: str, dtype: str):
    # The fp32-offload flag only lifts the cpu/disk check; the plan itself is the one a GPU load would make.
    return bitsandbytes_config(quantization, compute_dtype=dtype, cpu_offload=True)


def auto_device_map(config, *, max_memory, dtype: str = "bfloat16", quantization: str = "none") -> dict:
    """The device map `from_pretrained(..., device_map="auto", max_memory=max_memory)` makes, on the meta device.

    It runs Transformers' own planning step (the private `_get_device_map`, through `_compat`) on a model with no
    storage, so a 70B plans in a second; tests check it against real loads of small checkpoints. Where Transformers
    no longer has that step, accelerate's public planner makes the plan, without the quantizer's memory reserve.
    """
    import torch

    from . import _compat
    from .modeling import CodeLlamaForCausalLM

    check_choice(dtype, tuple(DTYPE_BYTES), "dtype")
    check_choice(quantization, QUANTIZATIONS, "quantization")
    if isinstance(config, Variant):
        from .configuration import CodeLlamaConfig

        config = CodeLlamaConfig.from_variant(config.name)
    quantizer = None
    with _default_dtype(getattr(torch, dtype)), torch.device("meta"):
        model = CodeLlamaForCausalLM(config)
        if quantization != "none":
            from transformers.quantizers import AutoHfQuantizer

            quantizer = AutoHfQuantizer.from_config(_quantization_config(quantization, dtype), pre_quantized=False)
            quantizer.preprocess_model(model=model, dtype=getattr(torch, dtype), device_map="auto",
                                       checkpoint_files=None, use_kernels=False)
    # Planning for GPUs this machine lacks is the point; accelerate warns about each one.
    with _quiet("accelerate.utils.modeling"):
        planner = _compat.get_device_map() or _public_device_map
        return dict(planner(model, "auto", parse_max_memory(max_memory), quantizer))


def _public_device_map(model, device_map: str, max_memory: dict, hf_quantizer) -> dict:
    """The fallback planner: accelerate's balanced memory and infer_auto_device_map, as Transformers' step runs them,
    less what only the quantizer knows (its reserve per device)."""
    from accelerate.utils import get_balanced_memory, infer_auto_device_map

    from . import _compat

    split = _compat.no_split_modules(model)
    return infer_auto_device_map(model, max_memory=get_balanced_memory(model, max_memory=max_memory,
                                                                       no_split_module_classes=split),
                                 no_split_module_classes=split)


def estimate_memory(config, *, dtype: str = "bfloat16", quantization: str = "none", context: int | None = None,
                    batch: int = 1, max_memory: dict | str | None = None) -> MemoryEstimate:
    """Weights, KV cache and where they fit, for a config, a preset or a variant name; `context` defaults to its own.

    With `max_memory` ({0: "24GiB", "cpu": "64GiB"}), also the device map `from_pretrained(device_map="auto")` makes.
    """
    estimate = _estimate_bytes(config, dtype=dtype, quantization=quantization, context=context, batch=batch)
    if max_memory is None:
        return estimate
    if isinstance(config, str):
        config = get_variant(config)  # known good: the estimate above checked the name
    parsed = parse_max_memory(max_memory)
    device_map = auto_device_map(config, max_memory=parsed, dtype=dtype, quantization=quantization)
    sizes = module_bytes(config, dtype=dtype, quantization=quantization)
    per_device: dict = {}
    for module, device in device_map.items():  # accelerate may split a module: sum what lies under a key
        under = sum(n for m, n in sizes.items() if m == module or m.startswith(module + ".") or not module)
        per_device[device] = per_device.get(device, 0) + under
    return dataclasses.replace(estimate, device_map=device_map, max_memory=parsed, device_bytes=per_device)


def cpu_disk_device_map(config, *, cpu_memory, dtype: str | None = None) -> dict[str, str]:
    """A `device_map` keeping as many weight bytes in RAM as `cpu_memory` holds, and the rest on disk.

    `cpu_memory` is for the weights kept in RAM, as `max_memory` is for a GPU's weights. At run time the module
    being streamed in from disk (one decoder layer) comes on top, like activations and the KV cache; leave room for
    them. Every byte on disk is read again for every token, so the most bytes stay in RAM, which leaves less than one
    decoder layer of the budget unused; the first layers stay on cpu. `config` is a config, a preset or a variant
    name; `dtype` defaults to the config's (a converted checkpoint's), else bfloat16.
    """
    if isinstance(config, str):
        config = get_variant(config)
    dtype = dtype or _config_dtype(config)
    budget = parse_max_memory({"cpu": cpu_memory})["cpu"]
    sizes = module_bytes(config, dtype=dtype)
    layers = [m for m in sizes if m.startswith("model.layers.")]
    outer = [m for m in sizes if m not in layers and sizes[m]]  # rotary_emb holds no weights: it stays on cpu
    layer = max(sizes[m] for m in layers)
    best = (-1, set())
    # Layers are all one size, so the best split is: some of the few outer modules, then as many layers as fit.
    for kept in itertools.product((True, False), repeat=len(outer)):  # all kept first: ties keep them in RAM
        on_cpu = [m for m, k in zip(outer, kept) if k] + [m for m in sizes if not sizes[m]]
        room = budget - sum(sizes[m] for m in on_cpu)
        if room >= 0:
            on_cpu += layers[:room // layer]
            used = sum(sizes[m] for m in on_cpu)
            best = max(best, (used, set(on_cpu)), key=lambda b: b[0])
    return {m: "cpu" if m in best[1] else "disk" for m in sizes}  # in execution order


def _config_dtype(config) -> str:
    dtype = str(getattr(config, "dtype", None) or "bfloat16").removeprefix("torch.")
    return dtype if dtype in DTYPE_BYTES else "bfloat16"


@contextlib.contextmanager
def _default_dtype(dtype):
    import torch

    old = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(old)


@contextlib.contextmanager
def _quiet(logger_name: str):
    log = logging.getLogger(logger_name)
    old = log.level
    log.setLevel(logging.ERROR)
    try:
        yield
    finally:
        log.setLevel(old)
