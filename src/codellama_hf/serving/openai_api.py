"""OpenAI's shape: POST /v1/completions (`suffix` is real infilling), POST /v1/chat/completions (Instruct variants),
GET /v1/models. Errors are {"error": {"message", "type", "param", "code"}}."""

from __future__ import annotations

import time
import uuid
from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict, Field, field_validator

from .fields import Text, encodable
from .httputil import ApiShape, ClientGone, merged, results, sse, sse_response, unless_disconnected
from .detokenize import MAX_STOPS
from .protocol import Delta, Done, Sampling, ServingError
from .schema import media
from .service import start_all

router = APIRouter()
MAX_N = 8
MAX_CHOICES = 64  # prompts x n in one request, as /score caps its inputs


class OpenAIShape(ApiShape):
    name = "openai"
    prefixes = ("/v1/",)
    error_schema = {"type": "object", "required": ["error"],
                    "properties": {"error": {"type": "object", "required": ["message", "type", "param", "code"]}}}
    TYPES = {"auth": "authentication_error", "overloaded": "rate_limit_error", "internal": "server_error",
             "unavailable": "server_error", "timeout": "server_error", "not_found": "not_found_error"}
    CODES = {"auth": "invalid_api_key", "overloaded": "queue_full", "unavailable": "model_not_ready",
             "too_large": "request_too_large", "unsupported": "unsupported_for_model"}

    def body(self, status, message, *, kind, param):
        return {"error": {"message": message, "type": self.TYPES.get(kind, "invalid_request_error"), "param": param,
                          "code": self.CODES.get(kind)}}


SHAPE = OpenAIShape()


class _Common(BaseModel):
    model_config = ConfigDict(extra="ignore")  # clients send fields we do not use (user, logprobs: null, ...)

    model: str | None = None
    temperature: float = Field(1.0, ge=0, le=2)
    top_p: float = Field(1.0, ge=0, le=1)
    stop: Text | list[Text] | None = Field(None)
    stream: bool = False
    stream_options: dict | None = None
    n: int = Field(1, ge=1, le=MAX_N)
    seed: int | None = None

    @field_validator("stop")
    @classmethod
    def _at_most_four(cls, v):
        if isinstance(v, list) and len(v) > MAX_STOPS:
            raise ValueError(f"at most {MAX_STOPS} stop sequences, got {len(v)}")
        return v

    def sampling(self) -> Sampling:
        greedy = self.temperature == 0 or self.top_p == 0
        return Sampling() if greedy else Sampling(temperature=self.temperature, top_p=self.top_p, seed=self.seed)


class CompletionRequest(_Common):
    prompt: Text | list[Text] = ""
    suffix: Text | None = None
    max_tokens: int | None = Field(16, ge=0)
    echo: bool = False
    max_prompt_tokens: int | None = Field(None, ge=4)  # ours: trim an infilling prompt around the gap

    @field_validator("prompt", mode="before")
    @classmethod
    def _text_only(cls, v):
        if isinstance(v, list) and v and not all(isinstance(p, str) for p in v):
            raise ValueError("must be a string or a list of strings; token-id prompts are not accepted (here text "
                             "is never turned into control ids)")
        return v


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="ignore")
    role: Text
    content: Text | list[dict] | None = None

    def text(self, i: int) -> str:
        if isinstance(self.content, str):
            return self.content
        if self.content is None:
            return ""
        parts = [p.get("text") for p in self.content if p.get("type") == "text"]
        if len(parts) != len(self.content) or not all(isinstance(p, str) for p in parts):
            raise ServingError(f"messages[{i}].content: Code Llama reads text only; send a string or "
                               f"[{{\"type\": \"text\", \"text\": ...}}] parts", param=f"messages.{i}.content")
        try:
            return encodable("".join(parts))
        except ValueError as e:
            raise ServingError(f"messages[{i}].content: {e}", param=f"messages.{i}.content") from None


class ChatRequest(_Common):
    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: int | None = Field(None, ge=0)
    max_completion_tokens: int | None = Field(None, ge=0)


def _service(request: Request):
    return request.app.state.service


def _usage(dones: list[Done], prompts: list[int]) -> dict:
    completion = sum(d.completion_tokens for d in dones)
    prompt = sum(prompts)
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


@router.get("/v1/models")
async def list_models(request: Request):
    service = _service(request)
    return {"object": "list", "data": [{"id": service.model_id, "object": "model",
                                        "created": request.app.state.started, "owned_by": "codellama-hf"}]}


@router.post("/v1/completions", **media("application/json", "text/event-stream"))
async def completions(body: CompletionRequest, request: Request):
    service = _service(request)
    prompts = [body.prompt] if isinstance(body.prompt, str) else body.prompt
    if not prompts:
        raise ServingError("prompt: send a string or a non-empty list of strings", param="prompt")
    if len(prompts) * body.n > MAX_CHOICES:
        raise ServingError(f"prompt: {len(prompts)} prompts x n={body.n} is {len(prompts) * body.n} completions; at "
                           f"most {MAX_CHOICES} per request: send the rest in another request", param="prompt")
    service.check_room(len(prompts) * body.n)

    def build():
        built = []
        for prompt in prompts:
            if body.suffix is not None:  # real infilling (PSM), Meta's ids; the prompt's text stays text
                ids = service.infill_ids(prompt, body.suffix, max_prompt_tokens=body.max_prompt_tokens)
                decode = "infill"
            else:
                ids, decode = service.plain_ids(prompt), "continue"
            built.append(service.request(ids, max_new_tokens=body.max_tokens, sampling=body.sampling(),
                                         stop=body.stop, decode=decode))
        return built

    built = await service.off_loop(build)
    requests = [r for r in built for _ in range(body.n)]  # choice index = prompt index * n + j, as OpenAI orders
    runs = start_all(service, requests)
    cid, created = f"cmpl-{uuid.uuid4().hex}", int(time.time())
    head = {"id": cid, "object": "text_completion", "created": created, "model": service.model_id}
    echo = [prompts[i // body.n] if body.echo else "" for i in range(len(runs))]

    if body.stream:
        async def chunks():
            if any(echo):
                for i, text in enumerate(echo):
                    yield sse({**head, "choices": [{"index": i, "text": text, "logprobs": None,
                                                    "finish_reason": None}]})
            dones = {}
            async for i, event in merged(runs):
                if isinstance(event, Delta) and event.text:
                    yield sse({**head, "choices": [{"index": i, "text": event.text, "logprobs": None,
                                                    "finish_reason": None}]})
                elif isinstance(event, Done):
                    dones[i] = event
                    yield sse({**head, "choices": [{"index": i, "text": "", "logprobs": None,
                                                    "finish_reason": event.finish_reason}]})
            if (body.stream_options or {}).get("include_usage"):
                yield sse({**head, "choices": [], "usage": _usage(list(dones.values()),
                                                                  [len(r.prompt_ids) for r in built])})
            yield sse("[DONE]")

        return sse_response(chunks(), runs, SHAPE)
    try:
        dones = await unless_disconnected(request, results(runs))
    except ClientGone:
        return None
    choices = [{"index": i, "text": echo[i] + d.text, "logprobs": None, "finish_reason": d.finish_reason}
               for i, d in enumerate(dones)]
    return {**head, "choices": choices, "usage": _usage(dones, [len(r.prompt_ids) for r in built])}


@router.post("/v1/chat/completions", **media("application/json", "text/event-stream"))
async def chat_completions(body: ChatRequest, request: Request):
    service = _service(request)
    messages = [{"role": m.role, "content": m.text(i)} for i, m in enumerate(body.messages)]
    service.check_room(body.n)
    ids = await service.off_loop(service.chat_ids, messages)
    limit = body.max_completion_tokens if body.max_completion_tokens is not None else body.max_tokens
    req = service.request(ids, max_new_tokens=limit, sampling=body.sampling(), stop=body.stop, decode="chat",
                          param="max_tokens")
    runs = start_all(service, [req] * body.n)
    cid, created = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())
    head = {"id": cid, "object": "chat.completion", "created": created, "model": service.model_id}

    if body.stream:
        chunk_head = {**head, "object": "chat.completion.chunk"}

        async def chunks():
            for i in range(len(runs)):
                yield sse({**chunk_head, "choices": [{"index": i, "delta": {"role": "assistant", "content": ""},
                                                      "logprobs": None, "finish_reason": None}]})
            dones = []
            async for i, event in merged(runs):
                if isinstance(event, Delta) and event.text:
                    yield sse({**chunk_head, "choices": [{"index": i, "delta": {"content": event.text},
                                                          "logprobs": None, "finish_reason": None}]})
                elif isinstance(event, Done):
                    dones.append(event)
                    yield sse({**chunk_head, "choices": [{"index": i, "delta": {}, "logprobs": None,
                                                          "finish_reason": event.finish_reason}]})
            if (body.stream_options or {}).get("include_usage"):
                yield sse({**chunk_head, "choices": [], "usage": _usage(dones, [len(ids)])})
            yield sse("[DONE]")

        return sse_response(chunks(), runs, SHAPE)
    try:
        dones = await unless_disconnected(request, results(runs))
    except ClientGone:
        return None
    choices = [{"index": i, "message": {"role": "assistant", "content": d.text}, "logprobs": None,
                "finish_reason": d.finish_reason} for i, d in enumerate(dones)]
    return {**head, "choices": choices, "usage": _usage(dones, [len(ids)])}

