"""Memory planning: the exact bytes (codellama_hf_core.memory, torch-free) and, above them, device maps.

The byte arithmetic lives in the core so the CLI answers without torch; this layer adds what needs torch and
Transformers: the device map `from_pretrained(device_map="auto", max_memory=...)` would make.
"""

from __future__ import annotations

import dataclasses

from codellama_hf_core.memory import (BNB_BLOCKSIZE, BNB_NESTED_BLOCKSIZE, DTYPE_BYTES, GPUS_GIB, HEADROOM,  # noqa: F401
                                      LAYER_PARAMS, OUTER_PARAMS, QUANTIZATIONS, MemoryEstimate, check_choice,
                                      kv_cache_bytes, machine_ram_bytes, module_bytes, quantized_bytes, weights_bytes)
from codellama_hf_core.memory import estimate_memory as _estimate_bytes

from .device_maps import auto_device_map, parse_max_memory


def estimate_memory(config, *, dtype: str = "bfloat16", quantization: str = "none", context: int | None = None,
                    batch: int = 1, max_memory: dict | str | None = None) -> MemoryEstimate:
    """Weights, KV cache and where they fit, for a config, a preset or a variant name; `context` defaults to its own.

    With `max_memory` ({0: "24GiB", "cpu": "64GiB"}), also the device map `from_pretrained(device_map="auto")` makes.
    """
    estimate = _estimate_bytes(config, dtype=dtype, quantization=quantization, context=context, batch=batch)
    if max_memory is None:
        return estimate
    if isinstance(config, str):
        from codellama_hf_core.variants import get_variant

        config = get_variant(config)  # known good: the estimate above checked the name
    parsed = parse_max_memory(max_memory)
    device_map = auto_device_map(config, max_memory=parsed, dtype=dtype, quantization=quantization)
    sizes = module_bytes(config, dtype=dtype, quantization=quantization)
    per_device: dict = {}
    for module, device in device_map.items():  # accelerate may split a module: sum what lies under a key
        under = sum(n for m, n in sizes.items() if m == module or m.startswith(module + ".") or not module)
        per_device[device] = per_device.get(device, 0) + under
    return dataclasses.replace(estimate, device_map=device_map, max_memory=parsed, device_bytes=per_device)
