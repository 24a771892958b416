"""The one bitsandbytes recipe: what `--quantization 8bit|4bit` loads, what the demo loads, and what
`estimate_memory` plans and counts (codellama_hf_core/memory.py's 4-bit bytes assume double quantization)."""

from __future__ import annotations

from codellama_hf_core.errors import UserInputError
from codellama_hf_core.memory import QUANTIZATIONS  # noqa: F401 - "none", "8bit", "4bit"


def bitsandbytes_config(quantization: str, *, compute_dtype, cpu_offload: bool = False):
    """`BitsAndBytesConfig` for "8bit" (LLM.int8) or "4bit" (nf4 with double quantization, computing in
    `compute_dtype`, a torch dtype or its name). cpu_offload: allow a device map that puts layers on cpu or disk."""
    import torch
    from transformers import BitsAndBytesConfig

    if isinstance(compute_dtype, str):
        compute_dtype = getattr(torch, compute_dtype)
    offload = {"llm_int8_enable_fp32_cpu_offload": True} if cpu_offload else {}
    if quantization == "8bit":
        return BitsAndBytesConfig(load_in_8bit=True, **offload)
    if quantization == "4bit":
        return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                                  bnb_4bit_compute_dtype=compute_dtype, **offload)
    raise UserInputError(f"no bitsandbytes recipe for quantization {quantization!r}; expected '8bit' or '4bit'")
