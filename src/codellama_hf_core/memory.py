"""Exact weight and KV-cache bytes of a Code Llama model, from its config alone (no weights, no torch).

Unquantized weights are numel x dtype bytes. bitsandbytes replaces the decoder layers' nn.Linear weights and keeps
the embedding and lm_head in the compute dtype (Transformers skips the output embedding; the input one is no Linear).
Its layouts, as bitsandbytes 0.50 allocates them (checked in tests/test_memory.py against a loaded model):
  8-bit  int8 weight [out, in] + one float32 scale per output row (`SCB`)
  4-bit  two weights per uint8 byte, + one absmax per block of 64; float32 absmax, or with double quantization a
         uint8 absmax plus float32 absmax per 256 blocks and a 256-entry float32 code; a 16-entry float32 code
         (the nf4/fp4 values) and, when nested, a float32 offset
"""

from __future__ import annotations

from dataclasses import dataclass
from math import ceil, prod

from .errors import UserInputError

DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}
QUANTIZATIONS = ("none", "8bit", "4bit")
BNB_BLOCKSIZE = 64
BNB_NESTED_BLOCKSIZE = 256

# Llama's parameters as named dims. A 2-D parameter inside a decoder layer is an nn.Linear weight: bitsandbytes'.
LAYER_PARAMS = {
    "self_attn.q_proj.weight": ("q", "hidden"),
    "self_attn.k_proj.weight": ("kv", "hidden"),
    "self_attn.v_proj.weight": ("kv", "hidden"),
    "self_attn.o_proj.weight": ("hidden", "q"),
    "mlp.gate_proj.weight": ("ffn", "hidden"),
    "mlp.up_proj.weight": ("ffn", "hidden"),
    "mlp.down_proj.weight": ("hidden", "ffn"),
    "input_layernorm.weight": ("hidden",),
    "post_attention_layernorm.weight": ("hidden",),
}
# Device-map modules outside the decoder layers, in execution order, with their parameters.
OUTER_PARAMS = {
    "model.embed_tokens": {"weight": ("vocab", "hidden")},
    "model.norm": {"weight": ("hidden",)},
    "model.rotary_emb": {},  # buffers only (inv_freq), no weights
    "lm_head": {"weight": ("vocab", "hidden")},
}


def _dims(config) -> dict[str, int]:
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    kv_heads = config.num_key_value_heads or config.num_attention_heads
    return {"hidden": config.hidden_size, "q": config.num_attention_heads * head_dim, "kv": kv_heads * head_dim,
            "ffn": config.intermediate_size, "vocab": config.vocab_size, "head_dim": head_dim, "kv_heads": kv_heads}


def check_choice(value, choices, what: str):
    if value not in choices:
        raise UserInputError(f"unknown {what} {value!r}; expected one of: {', '.join(choices)}")
    return value


def quantized_bytes(numel: int, *, quantization: str, dtype: str, out_features: int = 0,
                    double_quant: bool = True) -> tuple[int, int]:
    """(parameter bytes, quantization-state bytes) of one Linear weight as bitsandbytes stores it."""
    if quantization == "none":
        return numel * DTYPE_BYTES[dtype], 0
    if quantization == "8bit":
        return numel, 4 * out_features
    blocks = ceil(numel / BNB_BLOCKSIZE)
    if double_quant:
        state = blocks + 4 * ceil(blocks / BNB_NESTED_BLOCKSIZE) + 4 * 256 + 4 + 4 * 16
    else:
        state = 4 * blocks + 4 * 16
    return ceil(numel / 2), state


def module_bytes(config, *, dtype: str = "bfloat16", quantization: str = "none", double_quant: bool = True,
                 state: bool = True) -> dict[str, int]:
    """Bytes per device-map module (`model.embed_tokens`, `model.layers.0`, ..., `lm_head`), in execution order.

    `state=False` leaves out bitsandbytes' quantization state: what `get_memory_footprint()` counts.
    """
    check_choice(dtype, tuple(DTYPE_BYTES), "dtype")
    check_choice(quantization, QUANTIZATIONS, "quantization")
    d = _dims(config)

    def plain(shape) -> int:
        return prod(d[n] for n in shape) * DTYPE_BYTES[dtype]

    layer = 0
    for shape in LAYER_PARAMS.values():
        if len(shape) == 2:
            params, qstate = quantized_bytes(d[shape[0]] * d[shape[1]], quantization=quantization, dtype=dtype,
                                             out_features=d[shape[0]], double_quant=double_quant)
            layer += params + (qstate if state else 0)
        else:
            layer += plain(shape)
    sizes = {name: sum(plain(s) for s in params.values()) for name, params in OUTER_PARAMS.items()}
    layers = {f"model.layers.{i}": layer for i in range(config.num_hidden_layers)}
    return {"model.embed_tokens": sizes.pop("model.embed_tokens"), **layers, **sizes}


def weights_bytes(config, *, dtype: str = "bfloat16", quantization: str = "none", double_quant: bool = True) -> int:
    """Every byte the weights take once loaded, bitsandbytes' quantization state included."""
    return sum(module_bytes(config, dtype=dtype, quantization=quantization, double_quant=double_quant).values())


def kv_cache_bytes(config, *, context: int, batch: int = 1, dtype: str = "bfloat16") -> int:
    """Keys and values of every layer for `batch` sequences of `context` tokens, in the compute dtype."""
    d = _dims(config)
    return 2 * config.num_hidden_layers * batch * context * d["kv_heads"] * d["head_dim"] * DTYPE_BYTES[dtype]


# Common accelerators by their marketed size; their usable memory is in GiB (e.g. a 24 GB RTX 4090 has 24 GiB).
GPUS_GIB = (24, 40, 80)
# Transformers' device_map="auto" keeps 10% of a single GPU free for activations and the CUDA context; so do we.
HEADROOM = 0.10


@dataclass(frozen=True)
class MemoryEstimate:
    variant: str | None
    dtype: str
    quantization: str
    context: int
    batch: int
    weights_bytes: int
    kv_cache_bytes: int
    fits: dict[str, bool]
    device_map: dict[str, int | str] | None = None
    max_memory: dict[int | str, int] | None = None
    device_bytes: dict[int | str, int] | None = None  # weights per device under device_map

    @property
    def total_bytes(self) -> int:
        return self.weights_bytes + self.kv_cache_bytes

    def describe(self) -> str:
        """The estimate as a short human-readable report."""
        q = {"none": "no quantization", "8bit": "8-bit (LLM.int8)", "4bit": "4-bit nf4, double quantization"}
        lines = [f"{self.variant or 'model'} · {self.dtype} · {q[self.quantization]} · context {self.context} · "
                 f"batch {self.batch}"]
        rows = (("weights", self.weights_bytes), ("KV cache", self.kv_cache_bytes), ("total", self.total_bytes))
        for what, n in rows:
            lines.append(f"  {what:9s} {n / 2**30:9.2f} GiB  ({n:,} bytes)")
        fits = " · ".join(f"{k} {'yes' if v else 'no'}" for k, v in self.fits.items())
        lines.append(f"  fits (keeping {HEADROOM:.0%} free): {fits}")
        if self.device_map is not None:
            budget = ",".join(f"{k}={v / 2**30:.4g}GiB" for k, v in self.max_memory.items())
            lines.append(f'  device_map="auto" with max_memory {budget}:')
            for device, modules in _group_by_device(self.device_map).items():
                lines.append(f"    {device!s:5s} {self.device_bytes[device] / 2**30:7.2f} GiB  {modules}")
        return "\n".join(lines)

    def to_json(self) -> dict:
        out = {k: getattr(self, k) for k in ("variant", "dtype", "quantization", "context", "batch",
                                             "weights_bytes", "kv_cache_bytes", "total_bytes", "fits")}
        if self.device_map is not None:
            out["max_memory"] = {str(k): v for k, v in self.max_memory.items()}
            out["device_map"] = self.device_map
            out["device_bytes"] = {str(k): v for k, v in self.device_bytes.items()}
        return out


def _group_by_device(device_map: dict) -> dict:
    """{device: "model.embed_tokens, model.layers.0-35"}: runs of consecutive layers folded."""
    runs: dict = {}  # device -> [module name, or [first layer, last layer]]
    for module, device in device_map.items():
        parts = runs.setdefault(device, [])
        head, _, index = module.rpartition(".")
        if head != "model.layers" or not index.isdigit():
            parts.append(module or "the whole model")
        elif parts and isinstance(parts[-1], list) and parts[-1][1] == int(index) - 1:
            parts[-1][1] = int(index)
        else:
            parts.append([int(index), int(index)])
    return {device: ", ".join(p if isinstance(p, str) else f"model.layers.{p[0]}" + (f"-{p[1]}" if p[1] > p[0] else "")
                              for p in parts) for device, parts in runs.items()}


def machine_ram_bytes() -> int:
    import psutil  # accelerate's dependency

    return psutil.virtual_memory().total


def estimate_memory(config, *, dtype: str = "bfloat16", quantization: str = "none", context: int | None = None,
                    batch: int = 1) -> MemoryEstimate:
    """Weights, KV cache and where they fit, for a config, a preset or a variant name; `context` defaults to its own.

    No device map here: `codellama_hf.estimate_memory(..., max_memory=...)` plans one on top (it needs torch).
    """
    if isinstance(config, str):  # a preset row has every shape needed
        from .variants import get_variant

        config = get_variant(config)
    context = config.max_position_embeddings if context is None else context
    if context < 1 or batch < 1:
        raise UserInputError(f"context {context!r} and batch {batch!r} must be positive; pass e.g. --context 4096")
    # The embeddings, lm_head, norms and the KV cache stay in `dtype`, bitsandbytes' compute dtype too.
    w = weights_bytes(config, dtype=dtype, quantization=quantization)
    kv = kv_cache_bytes(config, context=context, batch=batch, dtype=dtype)
    need = w + kv
    fits = {f"{g}GB GPU": need <= (1 - HEADROOM) * g * 2**30 for g in GPUS_GIB}
    fits["this machine's RAM"] = need <= (1 - HEADROOM) * machine_ram_bytes()
    name = getattr(config, "variant", None) or getattr(config, "name", None)
    return MemoryEstimate(name, dtype=dtype, quantization=quantization, context=context, batch=batch,
                          weights_bytes=w, kv_cache_bytes=kv, fits=fits)
