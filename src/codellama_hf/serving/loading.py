"""Load a converted folder for serving: the model (dtype, bitsandbytes quantization, device map) and its tokenizer,
then the engine around them; or, on vLLM, the engine that loads the folder itself. Only the command line names the
folder; no request can."""

from __future__ import annotations

import asyncio
import logging
import threading
from pathlib import Path

from codellama_hf_core.memory import DTYPE_BYTES

from ..errors import UserInputError
from ..quantization import QUANTIZATIONS, bitsandbytes_config
from .cache_size import MAX_CONCURRENT, CachePlan, free_memory, plan_cache
from .engines import make_engine
from .service import Service

logger = logging.getLogger(__name__)


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
    from transformers import AutoModelForCausalLM, AutoTokenizer

    import codellama_hf  # noqa: F401 - registers the model type and the tokenizer

    folder = check_folder(folder)
    if dtype not in DTYPES or quantization not in QUANTIZATIONS:
        raise UserInputError(f"dtype {dtype!r} / quantization {quantization!r}; expected one of {DTYPES} / "
                             f"{QUANTIZATIONS}")
    cuda = torch.cuda.is_available()
    kwargs = {"dtype": _dtype(dtype, cuda=cuda)}
    if quantization != "none":
        kwargs["quantization_config"] = bitsandbytes_config(quantization, compute_dtype=kwargs["dtype"])
    kwargs["device_map"] = device_map or ("cuda" if cuda else "cpu")
    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder, **kwargs).eval()
    return model, tokenizer


def resolve_engine(engine: str, *, quantization: str = "none", device_map: str | None = None) -> str:
    """"auto": vLLM where it is installed and supports the device (and no bitsandbytes quantization or device map,
    which are Transformers' options, is asked for); Transformers' continuous batching elsewhere. Logged once."""
    from .engines import ENGINES
    from .engines.vllm import vllm_usable

    if engine not in ENGINES:
        raise UserInputError(f"unknown engine {engine!r}; expected one of: {', '.join(ENGINES)}")
    if engine == "vllm":
        if (why := vllm_usable()) is not None:
            raise UserInputError(f"--engine vllm: {why}; install vLLM for this device, or pass --engine continuous")
        if quantization != "none" or device_map is not None:
            raise UserInputError(f"--engine vllm loads the folder itself: drop --quantization {quantization!r} / "
                                 f"--device-map {device_map!r} (vLLM's parallelism options place the model)")
    if engine != "auto":
        logger.warning("engine: %s (as asked)", engine)
        return engine
    why = vllm_usable() if quantization == "none" and device_map is None else "a Transformers option was given"
    chosen = "vllm" if why is None else "continuous"
    logger.warning("engine: %s (%s)", chosen, "vLLM runs here" if why is None else f"not vLLM: {why}")
    return chosen


def plan_for(model, *, max_concurrent: int = MAX_CONCURRENT, kv_cache_tokens: int | None = None,
             max_batch_tokens: int | None = None) -> CachePlan:
    """The continuous-batching cache for a loaded model, from the memory free now (after its weights)."""
    dtype = str(model.dtype).removeprefix("torch.")
    return plan_cache(model.config, dtype=dtype if dtype in DTYPE_BYTES else "bfloat16", device=model.device.type,
                      free_bytes=free_memory(model.device), context=int(model.config.max_position_embeddings),
                      max_concurrent=max_concurrent, kv_cache_tokens=kv_cache_tokens,
                      max_batch_tokens=max_batch_tokens)


def load_service(folder, *, dtype: str = "auto", quantization: str = "none", device_map: str | None = None,
                 engine: str = "auto", max_queue: int = 256, max_batch_tokens: int | None = None,
                 kv_cache_tokens: int | None = None, max_concurrent: int = MAX_CONCURRENT,
                 stall_timeout: float | None = 600.0, model_id: str | None = None,
                 vllm_options: dict | None = None, cancelled: threading.Event | None = None) -> Service:
    """Everything `codellama-hf serve` and `codellama-hf generate` run on, started and warmed up.

    engine "auto" picks vLLM where it runs (resolve_engine). With vLLM, the model is loaded by vLLM only (not also
    into Transformers): the service gets the folder's config and tokenizer. `vllm_options`: more AsyncEngineArgs
    (tensor_parallel_size, pipeline_parallel_size, nnodes, node_rank, master_addr, enforce_eager, ...).
    The continuous engine's cache is planned by cache_size.plan_cache (logged in one line). `cancelled`: set by a
    server that is shutting down while this runs; no engine thread is then left behind."""
    engine = resolve_engine(engine, quantization=quantization, device_map=device_map)
    if engine == "vllm":
        from transformers import AutoConfig, AutoTokenizer

        import codellama_hf  # noqa: F401 - registers the model type and the tokenizer

        from .engines.vllm import VllmEngine

        folder = check_folder(folder)
        config = AutoConfig.from_pretrained(folder)
        tokenizer = AutoTokenizer.from_pretrained(folder)
        eng = VllmEngine(folder, max_queue=max_queue, dtype=dtype, max_batch_tokens=max_batch_tokens,
                         max_model_len=kv_cache_tokens, stall_timeout=stall_timeout, **(vllm_options or {}))
        model = None
    else:
        if vllm_options:
            raise UserInputError(f"vLLM options {sorted(vllm_options)!r} need --engine vllm (the engine is {engine!r})")
        model, tokenizer = load_model(folder, dtype=dtype, quantization=quantization, device_map=device_map)
        config = model.config
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
    try:
        if cancelled is not None and cancelled.is_set():
            raise Cancelled()
        service = Service(model, tokenizer, eng, folder=folder, model_id=model_id, config=config)
        if kv_cache_tokens is not None:  # a request must fit the cache whole, or the batch loop cannot schedule it
            service.context_tokens = min(service.context_tokens, kv_cache_tokens)
        asyncio.run(service.warm_up())
    except BaseException:
        eng.stop()
        raise
    return service
