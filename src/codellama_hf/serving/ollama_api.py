"""Ollama's shape: POST /api/generate (`suffix` is real infilling), POST /api/chat (Instruct variants), and
GET /api/tags, POST /api/show, GET /api/version, which clients read to find the model. Streams are on by default,
as newline-delimited JSON; errors are {"error": "..."} with Ollama's status codes (400 for a bad request, 503
when the queue is full).

What Ollama does for Code Llama, from Meta's ids: `suffix` gives Meta's infilling prompt and the answer is the
middle, with `raw` or without. A prompt written as Code Llama's template (`<PRE> {prefix} <SUF>{suffix} <MID>`, as
Twinny and Tabby send it) is read as /completion reads it, since Ollama's runner turns those markers into the
control ids too. Any other prompt is plain text to continue, except that an Instruct variant without `raw` answers
it as one [INST] turn (with `system` as its system prompt), as Ollama's Instruct templates do. One model is served,
whatever `model` names."""

from __future__ import annotations

import time
from datetime import datetime, timezone

from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict, Field, field_validator

from codellama_hf_core.memory import DTYPE_BYTES, weights_bytes

from .detokenize import MAX_STOPS
from .fields import Text
from .httputil import ApiShape, ClientGone, ndjson, sse_response, unless_disconnected
from .prompts import MARKERS
from .protocol import Delta, Done, Sampling
from .schema import media
from .service import Run, Service, start_all

router = APIRouter()
# The Ollama release whose API this module follows (suffix, done_reason, /api/show's capabilities); clients compare
# /api/version with the release that brought a feature.
API_VERSION = "0.12.0"
NDJSON = "application/x-ndjson"
FINISH = {"stop": "stop", "length": "length"}


class OllamaShape(ApiShape):
    name = "ollama"
    prefixes = ("/api/",)
    overrides = {"overloaded": 503, "unsupported": 400}
    error_schema = {"type": "object", "required": ["error"], "properties": {"error": {"type": "string"}}}

    def body(self, status, message, *, kind, param):
        return {"error": message}


SHAPE = OllamaShape()


class Options(BaseModel):
    """The sampling options this server runs, with Ollama's defaults; the others (num_ctx, repeat_penalty, ...)
    are the runner's business and ignored, as Ollama ignores options a model does not use."""

    model_config = ConfigDict(extra="ignore")
    temperature: float | None = Field(None, ge=0)
    top_p: float | None = Field(None, ge=0, le=1)
    top_k: int | None = Field(None, ge=0)
    num_predict: int | None = Field(None, ge=-2)  # -1: until a stop; -2: until the context is full
    stop: list[Text] | None = Field(None, max_length=MAX_STOPS)
    seed: int | None = None

    def sampling(self) -> Sampling:
        temperature = 0.8 if self.temperature is None else self.temperature
        if temperature == 0:
            return Sampling()
        seed = None if self.seed is None or self.seed < 0 else self.seed
        return Sampling(temperature=temperature, top_p=0.9 if self.top_p is None else self.top_p,
                        top_k=40 if self.top_k is None else self.top_k, seed=seed)

    def max_new_tokens(self) -> int | None:
        return None if self.num_predict is None or self.num_predict < 0 else self.num_predict


class _Common(BaseModel):
    model_config = ConfigDict(extra="ignore")  # keep_alive, think, tools, ...
    model: Text = ""  # echoed in every answer
    stream: bool = True
    options: Options = Field(default_factory=Options)
    format: object = None

    @field_validator("format")
    @classmethod
    def _no_format(cls, v):
        if v not in (None, ""):
            raise ValueError("structured outputs (format) are not supported here; leave format out")
        return v


class GenerateRequest(_Common):
    prompt: Text = ""
    suffix: Text = ""
    system: Text | None = None
    raw: bool = False
    images: list[str] | None = None
    context: list[int] | None = None

    @field_validator("images", "context")
    @classmethod
    def _none(cls, v, info):
        if v:
            why = {"images": "Code Llama reads text only",
                   "context": "send the conversation as text, or use /api/chat"}[info.field_name]
            raise ValueError(f"is not supported here ({why}); leave it out")
        return v


class Message(BaseModel):
    model_config = ConfigDict(extra="ignore")
    role: Text
    content: Text = ""
    images: list[str] | None = None

    @field_validator("images")
    @classmethod
    def _text_only(cls, v):
        if v:
            raise ValueError("Code Llama reads text only; send the message without images")
        return v


class ChatRequest(_Common):
    messages: list[Message] = Field(min_length=1)


def _now() -> str:
    return datetime.now(timezone.utc).isoformat().replace("+00:00", "Z")


def _final(service: Service, run: Run, done: Done) -> dict:
    """Ollama's last object: the counts and durations (nanoseconds); the model was loaded before any request."""
    return {"done": True, "done_reason": FINISH[done.finish_reason],
            "total_duration": int((time.perf_counter() - run.started) * 1e9), "load_duration": 0,
            "prompt_eval_count": done.prompt_tokens, "prompt_eval_duration": int(done.prompt_ms * 1e6),
            "eval_count": done.completion_tokens, "eval_duration": int(done.predicted_ms * 1e6)}


async def _answer(request: Request, service: Service, body: _Common, run_list: list[Run], wrap):
    """Stream NDJSON lines, or one object; `wrap(text)` is the text's field(s) ("response", or "message")."""
    run = run_list[0]
    head = lambda: {"model": body.model or service.model_id, "created_at": _now()}  # noqa: E731
    if body.stream:
        async def chunks():
            async for event in run.events():
                if isinstance(event, Delta) and event.text:
                    yield ndjson({**head(), **wrap(event.text), "done": False})
                elif isinstance(event, Done):
                    yield ndjson({**head(), **wrap(""), **_final(service, run, event)})

        return sse_response(chunks(), run_list, SHAPE, encode=ndjson, media_type=NDJSON)
    try:
        done = await unless_disconnected(request, run.result())
    except ClientGone:
        return None
    return {**head(), **wrap(done.text), **_final(service, run, done)}


def _prompt(service: Service, body: GenerateRequest) -> tuple[list[int], str]:
    """(ids, decode) for /api/generate: infilling with `suffix`, Code Llama's template written into the prompt, one
    Instruct turn, or plain text to continue."""
    if body.suffix:
        return service.infill_ids(body.prompt, body.suffix, param="suffix"), "infill"
    if any(marker in body.prompt for marker in MARKERS):  # Twinny's and Tabby's template, as Ollama's runner reads it
        return service.template_ids(body.prompt)
    if service.chat_format != "none" and not body.raw:
        system = [{"role": "system", "content": body.system}] if body.system else []
        return service.chat_ids(system + [{"role": "user", "content": body.prompt}]), "chat"
    return service.plain_ids(body.prompt), "continue"


@router.post("/api/generate", **media(NDJSON, "application/json"))
async def generate(body: GenerateRequest, request: Request):
    service: Service = request.app.state.service
    service.check_room()  # before any work: a full queue costs no tokenizing
    ids, decode = await service.off_loop(_prompt, service, body)
    o = body.options
    req = service.request(ids, max_new_tokens=o.max_new_tokens(), sampling=o.sampling(), stop=o.stop or (),
                          decode=decode, param="options.num_predict")
    return await _answer(request, service, body, start_all(service, [req]), lambda text: {"response": text})


@router.post("/api/chat", **media(NDJSON, "application/json"))
async def chat(body: ChatRequest, request: Request):
    service: Service = request.app.state.service
    service.check_room()
    ids = await service.off_loop(service.chat_ids, [{"role": m.role, "content": m.content} for m in body.messages])
    o = body.options
    req = service.request(ids, max_new_tokens=o.max_new_tokens(), sampling=o.sampling(), stop=o.stop or (),
                          decode="chat", param="options.num_predict")
    return await _answer(request, service, body, start_all(service, [req]),
                         lambda text: {"message": {"role": "assistant", "content": text}})


LEVELS = {"float32": "F32", "float16": "F16", "bfloat16": "BF16"}  # Ollama's words for them


def _details(service: Service) -> dict:
    config = service.config  # the folder's: under vLLM there is no Transformers model here
    dtype = str(getattr(config, "dtype", None) or "").removeprefix("torch.")
    level = "bnb-4bit" if getattr(config, "quantization_config", None) else LEVELS.get(dtype, "")
    params = weights_bytes(config, dtype="float32") // DTYPE_BYTES["float32"]  # exact: every weight's numel
    return {"parent_model": "", "format": "safetensors", "family": "llama", "families": ["llama"],
            "parameter_size": f"{params / 1e9:.1f}B", "quantization_level": level}


def _size(service: Service) -> int:
    """The weights' bytes in memory: the loaded model's, or (vLLM loads the folder itself) the config's exact count."""
    if service.model is not None:
        return service.model.get_memory_footprint()
    dtype = str(getattr(service.config, "dtype", None) or "bfloat16").removeprefix("torch.")
    return weights_bytes(service.config, dtype=dtype if dtype in DTYPE_BYTES else "bfloat16")


def _capabilities(service: Service) -> list[str]:
    return ["completion"] + (["insert"] if service.infilling else []) + (
        ["chat"] if service.chat_format != "none" else [])


@router.get("/api/tags")
async def tags(request: Request):
    service: Service = request.app.state.service
    modified = datetime.fromtimestamp(request.app.state.started, timezone.utc).isoformat().replace("+00:00", "Z")
    return {"models": [{"name": service.model_id, "model": service.model_id, "modified_at": modified,
                        "size": _size(service),
                        "digest": "", "details": _details(service)}]}


class ShowRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")
    model: str = ""
    name: str = ""  # the older clients' field


@router.post("/api/show")
async def show(body: ShowRequest, request: Request):
    service: Service = request.app.state.service
    return {"modelfile": "", "parameters": "", "template": "", "details": _details(service),
            "model_info": {"general.architecture": "llama", "llama.context_length": service.context_tokens},
            "capabilities": _capabilities(service), "modified_at": _now()}


@router.get("/api/version")
async def version():
    return {"version": API_VERSION}
