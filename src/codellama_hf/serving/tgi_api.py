"""Text Generation Inference's shape: POST / (text_generation.Client and huggingface_hub's InferenceClient with a
base_url: `stream` picks a stream or a one-item list), POST /generate (`stream` honoured too) and
POST /generate_stream (llm-vscode's llm-ls with backend "tgi"). Validation errors, and bodies that cannot be
parsed, are 422 {"error": "...", "error_type": "validation"}, as TGI answers them.

`inputs` is plain text: a FIM template written into it stays text (only llama.cpp's /completion reads Code Llama's
template; see docs/serving.md for llm-ls set up either way)."""

from __future__ import annotations

from collections.abc import AsyncIterator

from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict, Field

from .fields import Text
from .httputil import ApiShape, ClientGone, sse, sse_response, unless_disconnected
from .protocol import Delta, Done, Sampling
from .schema import media
from .service import Run, Service, start_all

router = APIRouter()
FINISH = {"eos": "eos_token", "word": "stop_sequence", "limit": "length"}


class TgiShape(ApiShape):
    name = "tgi"
    paths = ("/", "/generate", "/generate_stream")
    overrides = {"invalid": 422, "unsupported": 422}
    error_schema = {"type": "object", "required": ["error", "error_type"],
                    "properties": {"error": {"type": "string"}, "error_type": {"type": "string"}}}
    TYPES = {"invalid": "validation", "unsupported": "validation", "overloaded": "overloaded",
             "auth": "authentication", "unavailable": "unhealthy", "internal": "generation", "timeout": "generation"}

    def body(self, status, message, *, kind, param):
        return {"error": message, "error_type": self.TYPES.get(kind, "validation")}


SHAPE = TgiShape()


class Parameters(BaseModel):
    model_config = ConfigDict(extra="ignore")  # best_of, watermark, truncate, top_n_tokens, ... are not used

    max_new_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, gt=0)
    top_p: float | None = Field(None, gt=0, lt=1)
    top_k: int | None = Field(None, gt=0)
    do_sample: bool = False
    stop: list[Text] | None = Field(None, max_length=4)
    seed: int | None = Field(None, ge=0)
    return_full_text: bool | None = False
    details: bool = True  # TGI's default for /generate; `details` always come here
    decoder_input_details: bool = False  # the prompt's tokens as details.prefill

    def sampling(self) -> Sampling:
        # TGI samples when asked to, or when any warper is set (its NextTokenChooser does the same)
        warped = self.temperature not in (None, 1.0) or self.top_p is not None or self.top_k is not None
        if not (self.do_sample or warped):
            return Sampling()
        return Sampling(temperature=self.temperature or 1.0, top_p=self.top_p or 1.0, top_k=self.top_k or 0,
                        seed=self.seed)


class GenerateRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")
    inputs: Text
    parameters: Parameters = Field(default_factory=Parameters)
    stream: bool = False


DEFAULT_MAX_NEW_TOKENS = 100  # TGI's default when max_new_tokens is not sent


async def _start(service: Service, body: GenerateRequest) -> list[Run]:
    p = body.parameters
    service.check_room()  # before any work: a full queue costs no tokenizing
    ids = await service.off_loop(service.plain_ids, body.inputs, param="inputs")
    req = service.request(ids,
                          max_new_tokens=p.max_new_tokens or DEFAULT_MAX_NEW_TOKENS, sampling=p.sampling(),
                          stop=p.stop or (), decode="continue", param="parameters.max_new_tokens")
    return start_all(service, [req])


def _text(body: GenerateRequest, done: Done) -> str:
    # TGI stops after the token that completes a stop sequence and keeps it in the text
    text = done.text + done.stopping_word
    return body.inputs + text if body.parameters.return_full_text else text


async def _tokens(service: Service, run: Run) -> AsyncIterator[tuple[dict, Done | None]]:
    """One TGI token per generated id, as ({id, text, logprob, special}, None), the last one with its Done.

    A step's text goes on its last id; text the stop-string check held back, and the stop sequence, go on the last
    token, so the tokens' texts join to generated_text. The stop id (EOS, EOT) is a special token with no text."""
    pending: dict | None = None
    async for event in run.events():
        if isinstance(event, Delta):
            for k, i in enumerate(event.ids):
                if pending is not None:
                    yield pending, None
                pending = {"id": i, "text": event.text if k == len(event.ids) - 1 else "", "logprob": None,
                           "special": i in run.request.stop_ids}
            if not event.ids and event.text:
                pending["text"] += event.text
        elif isinstance(event, Done):
            if pending is None:  # nothing generated (cannot happen with max_new_tokens >= 1; kept whole anyway)
                pending = {"id": service.tokenizer.eos_token_id, "text": "", "logprob": None, "special": True}
            pending["text"] += event.stopping_word
            yield pending, event


def _details(run: Run, body: GenerateRequest, done: Done, tokens: list[dict]) -> dict:
    prefill = []
    if body.parameters.decoder_input_details:
        decode = run.service.tokenizer.decode
        prefill = [{"id": i, "text": decode([i]), "logprob": None} for i in run.request.prompt_ids]
    return {"finish_reason": FINISH[done.stop_type], "generated_tokens": done.completion_tokens,
            "seed": body.parameters.seed, "prefill": prefill, "tokens": tokens}


async def _generate(service: Service, body: GenerateRequest, request: Request) -> dict | None:
    runs = await _start(service, body)

    async def collect():
        tokens = []
        async for token, done in _tokens(service, runs[0]):
            tokens.append(token)
            if done is not None:
                return {"generated_text": _text(body, done), "details": _details(runs[0], body, done, tokens)}

    try:
        return await unless_disconnected(request, collect())
    except ClientGone:
        return None
    finally:
        runs[0].cancel()


async def _stream(service: Service, body: GenerateRequest):
    runs = await _start(service, body)

    async def chunks():
        index, tokens = 0, []
        async for token, done in _tokens(service, runs[0]):
            index += 1
            tokens.append(token)
            last = done is not None
            yield sse({"index": index, "token": token, "generated_text": _text(body, done) if last else None,
                       "details": _details(runs[0], body, done, tokens) if last else None})

    return sse_response(chunks(), runs, SHAPE)


@router.post("/", **media("application/json", "text/event-stream"))
async def compat_generate(body: GenerateRequest, request: Request):
    """TGI's route for its clients: a stream with `stream: true`, else a one-item list."""
    service: Service = request.app.state.service
    if body.stream:
        return await _stream(service, body)
    answer = await _generate(service, body, request)
    return None if answer is None else [answer]


@router.post("/generate", **media("application/json", "text/event-stream"))
async def generate(body: GenerateRequest, request: Request):
    service: Service = request.app.state.service
    return await _stream(service, body) if body.stream else await _generate(service, body, request)


@router.post("/generate_stream", **media("text/event-stream"))
async def generate_stream(body: GenerateRequest, request: Request):
    return await _stream(request.app.state.service, body)
