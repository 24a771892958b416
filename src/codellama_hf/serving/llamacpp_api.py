"""llama.cpp's shape: POST /infill (llama.vim, llama.vscode) and POST /completion (Continue's, Tabby's and Twinny's
llama.cpp providers, which send Code Llama's infilling template as text). Errors are
{"error": {"code", "message", "type"}}; /infill answers 501 for a variant not trained for infilling, as llama.cpp
does for a model without infilling tokens."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict, Field, field_validator

from .detokenize import MAX_STOPS
from .fields import Text
from .httputil import ApiShape, ClientGone, sse, sse_response, unless_disconnected
from .protocol import Delta, Done, Sampling
from .schema import media
from .service import Service, start_all

router = APIRouter()


class LlamaCppShape(ApiShape):
    name = "llama.cpp"
    paths = ("/infill", "/completion")
    error_schema = {"type": "object", "required": ["error"],
                    "properties": {"error": {"type": "object", "required": ["code", "message", "type"]}}}
    TYPES = {400: "invalid_request_error", 401: "authentication_error", 404: "not_found_error",
             413: "invalid_request_error", 429: "unavailable_error", 500: "server_error", 501: "not_supported_error",
             503: "unavailable_error"}

    def body(self, status, message, *, kind, param):
        return {"error": {"code": status, "message": message, "type": self.TYPES.get(status, "server_error")}}


class InfillShape(LlamaCppShape):
    paths = ("/infill",)
    overrides = {"unsupported": 501}


SHAPE, INFILL_SHAPE = LlamaCppShape(), InfillShape()


class _Common(BaseModel):
    """The sampling fields both endpoints take, with llama.cpp's defaults; other llama.cpp fields are ignored."""

    model_config = ConfigDict(extra="ignore")

    n_predict: int = Field(-1, ge=-1)  # -1: until a stop or the end of the context
    temperature: float = Field(0.8, ge=0)  # 0: greedy
    top_k: int = Field(40, ge=0)
    top_p: float = Field(0.95, ge=0, le=1)
    stop: list[Text] = Field(default_factory=list, max_length=MAX_STOPS)
    stream: bool = False
    seed: int = -1  # -1: a fresh draw each time
    ignore_eos: bool = False
    t_max_predict_ms: int = Field(0, ge=0)
    response_fields: list[str] | None = None
    max_prompt_tokens: int | None = Field(None, ge=4)  # ours: trim an infilling prompt around the gap

    def sampling(self) -> Sampling:
        if self.temperature == 0 or self.top_k == 1:
            return Sampling()
        return Sampling(temperature=self.temperature, top_p=self.top_p, top_k=self.top_k,
                        seed=None if self.seed < 0 else self.seed)

    def request(self, service: Service, ids: list[int], decode: str):
        return service.request(ids, max_new_tokens=None if self.n_predict < 0 else self.n_predict,
                               sampling=self.sampling(), stop=self.stop, decode=decode, ignore_eos=self.ignore_eos,
                               max_predict_seconds=self.t_max_predict_ms / 1000 if self.t_max_predict_ms else None,
                               param="n_predict")


class InfillRequest(_Common):
    input_prefix: Text
    input_suffix: Text
    prompt: Text = ""  # the text at the cursor: after the prefix, before the gap
    input_extra: Any = None  # [{"filename", "text"}], checked where the prompt is built, with llama.cpp's words


class CompletionRequest(_Common):
    prompt: Text

    @field_validator("prompt", mode="before")
    @classmethod
    def _text_only(cls, v):
        if not isinstance(v, str):
            raise ValueError("must be a string (token-id and multimodal prompts are not accepted)")
        return v


def _final(service: Service, done: Done, *, content: str, truncated: bool) -> dict:
    prompt_ms, predicted_ms = max(done.prompt_ms, 1e-3), max(done.predicted_ms, 1e-3)
    return {"index": 0, "content": content, "id_slot": 0, "stop": True, "model": service.model_id,
            "tokens_predicted": done.completion_tokens, "tokens_evaluated": done.prompt_tokens, "tokens_cached": 0,
            "truncated": truncated, "stop_type": done.stop_type, "stopping_word": done.stopping_word,
            "has_new_line": "\n" in done.text,
            "timings": {"prompt_n": done.prompt_tokens, "prompt_ms": prompt_ms,
                        "prompt_per_token_ms": prompt_ms / max(done.prompt_tokens, 1),
                        "prompt_per_second": done.prompt_tokens / prompt_ms * 1000,
                        "predicted_n": done.completion_tokens, "predicted_ms": predicted_ms,
                        "predicted_per_token_ms": predicted_ms / max(done.completion_tokens, 1),
                        "predicted_per_second": done.completion_tokens / predicted_ms * 1000}}


def _select(body: dict, fields: list[str] | None) -> dict:
    """llama.cpp's response_fields: only these, a nested one as its flat "a/b" path (llama.vim reads
    "timings/prompt_n")."""
    if not fields:
        return body
    out = {}
    for field in fields:
        value = body
        for part in field.split("/"):
            value = value.get(part) if isinstance(value, dict) else None
        if value is not None:
            out[field] = value
    return out


def _trimmed(build, limit: int | None) -> tuple[list[int], str, bool]:
    """(ids, decode, truncated): `build(max_prompt_tokens)`'s prompt, and whether the limit trimmed it (llama.cpp's
    `truncated`). Built whole first: only a prompt over the limit is built twice."""
    ids, decode = build(None)
    if limit is None or len(ids) <= limit:
        return ids, decode, False
    return *build(limit), True


async def _answer(request: Request, body: _Common, req, service: Service, shape: LlamaCppShape, truncated: bool):
    runs = start_all(service, [req])
    run = runs[0]
    if body.stream:
        async def chunks():
            async for event in run.events():
                if isinstance(event, Delta) and event.text:
                    yield sse({"index": 0, "content": event.text, "tokens": event.ids, "stop": False,
                               "id_slot": 0, "tokens_predicted": None, "tokens_evaluated": None})
                elif isinstance(event, Done):
                    yield sse(_select(_final(service, event, content="", truncated=truncated), body.response_fields))

        return sse_response(chunks(), runs, shape)
    try:
        done = await unless_disconnected(request, run.result())
    except ClientGone:
        return None
    return _select(_final(service, done, content=done.text, truncated=truncated), body.response_fields)


@router.post("/infill", **media("application/json", "text/event-stream"))
async def infill(body: InfillRequest, request: Request):
    service: Service = request.app.state.service
    service.check_room()
    ids, decode, truncated = await service.off_loop(
        _trimmed, lambda limit: (service.llamacpp_infill_ids(body.input_prefix, body.input_suffix, body.prompt,
                                                             body.input_extra, max_prompt_tokens=limit), "infill"),
        body.max_prompt_tokens)
    return await _answer(request, body, body.request(service, ids, decode), service, INFILL_SHAPE, truncated)


@router.post("/completion", **media("application/json", "text/event-stream"))
async def completion(body: CompletionRequest, request: Request):
    service: Service = request.app.state.service
    service.check_room()
    ids, decode, truncated = await service.off_loop(
        _trimmed, lambda limit: service.template_ids(body.prompt, max_prompt_tokens=limit), body.max_prompt_tokens)
    return await _answer(request, body, body.request(service, ids, decode), service, SHAPE, truncated)
