"""`codellama_hf.memory`, the documented home of `estimate_memory`: the exact bytes live in the torch-free
`codellama_hf_core.memory`, the device plans on top of them in `device_maps.py`."""

from codellama_hf_core.memory import (MemoryEstimate, kv_cache_bytes, machine_ram_bytes, module_bytes,  # noqa: F401
                                      quantized_bytes, weights_bytes)

from .device_maps import estimate_memory  # noqa: F401
