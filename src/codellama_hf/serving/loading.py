"""Load a converted folder for serving: the model (dtype, bitsandbytes quantization, device map) and its tokenizer,
then the engine around them. Only the command line names the folder; no request can."""

from __future__ import annotations

import asyncio
import logging
import threading
from pathlib import Path

from codellama_hf_core.memory import DTYPE_BYTES

from ..errors import UserInputError
from .cache_size import MAX_CONCURRENT, CachePlan, free_memory, plan_cache
from .engines import make_engine
from .service import Service

logger = logging.getLogger(__name__)

QUANTIZATIONS = ("none", "8bit", "4bit")


class Cancelled(Exception):
    """Loading stopped because the server is shutting down."""


DTYPES = ("auto", "bfloat16", "float16", "float32")


def _dtype(name: str, *, cuda: bool):
    import torch

    # auto: bfloat16 on a GPU; float32 on CPU, where bfloat16 matmuls are slow on most processors
    return getattr(torch, name) if name != "auto" else (torch.bfloat16 if cuda else torch.float32)


def check_folder(folder) -> Path:
    folder = Path(folder)
    if not (folder / "config.json").is_file():
        raise UserInputError(f"{str(folder)!r} is not a converted model folder (no config.json); pass the output "
                             f"folder of `codellama-hf convert`")
    return folder


def load_model(folder, *, dtype: str = "auto", quantization: str = "none", device_map: str | None = None):
    """(model, tokenizer) from a converted folder, in eval mode."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig

    import codellama_hf  # noqa: F401 - registers the model type and the tokenizer

    folder = check_folder(folder)
    if dtype not in DTYPES or quantization not in QUANTIZATIONS:
        raise UserInputError(f"dtype {dtype!r} / quantization {quantization!r}; expected one of {DTYPES} / "
                             f"{QUANTIZATIONS}")
    cuda = torch.cuda.is_available()
    kwargs = {"dtype": _dtype(dtype, cuda=cuda)}
    if quantization != "none":
        kwargs["quantization_config"] = (
            BitsAndBytesConfig(load_in_8bit=True) if quantization == "8bit" else
            BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                               bnb_4bit_compute_dtype=kwargs["dtype"]))
    kwargs["device_map"] = device_map or ("cuda" if cuda else "cpu")
    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder, **kwargs).eval()
    return model, tokenizer


def plan_for(model, *, max_concurrent: int = MAX_CONCURRENT, kv_cache_tokens: int | None = None,
             max_batch_tokens: int | None = None) -> CachePlan:
    """The continuous-batching cache for a loaded model, from the memory free now (after its weights)."""
    dtype = str(model.dtype).removeprefix("torch.")
    return plan_cache(model.config, dtype=dtype if dtype in DTYPE_BYTES else "bfloat16", device=model.device.type,
                      free_bytes=free_memory(model.device), context=int(model.config.max_position_embeddings),
                      max_concurrent=max_concurrent, kv_cache_tokens=kv_cache_tokens,
                      max_batch_tokens=max_batch_tokens)


def load_service(folder, *, dtype: str = "auto", quantization: str = "none", device_map: str | None = None,
                 engine: str = "continuous", max_queue: int = 256, max_batch_tokens: int | None = None,
                 kv_cache_tokens: int | None = None, max_concurrent: int = MAX_CONCURRENT,
                 stall_timeout: float | None = 600.0, model_id: str | None = None,
                 cancelled: threading.Event | None = None) -> Service:
    """Everything `codellama-hf serve` and `codellama-hf generate` run on, started and warmed up.

    The continuous engine's cache is planned by cache_size.plan_cache (logged in one line). `cancelled`: set by a
    server that is shutting down while this runs; no engine thread is then left behind."""
    model, tokenizer = load_model(folder, dtype=dtype, quantization=quantization, device_map=device_map)
    if engine == "continuous":
        plan = plan_for(model, max_concurrent=max_concurrent, kv_cache_tokens=kv_cache_tokens,
                        max_batch_tokens=max_batch_tokens)
        logger.info(plan.describe())
        kv_cache_tokens, max_batch_tokens = plan.kv_cache_tokens, plan.max_batch_tokens
    if cancelled is not None and cancelled.is_set():
        raise Cancelled()
    eng = make_engine(model, engine=engine, max_queue=max_queue, max_batch_tokens=max_batch_tokens,
                      kv_cache_tokens=kv_cache_tokens, stall_timeout=stall_timeout)
    eng.start()
    if cancelled is not None and cancelled.is_set():
        eng.stop()
        raise Cancelled()
    service = Service(model, tokenizer, eng, folder=folder, model_id=model_id)
    if kv_cache_tokens is not None:  # a request must fit the cache whole, or the batch loop cannot schedule it
        service.context_tokens = min(service.context_tokens, kv_cache_tokens)
    asyncio.run(service.warm_up())
    return service
