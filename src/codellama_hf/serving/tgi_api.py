"""Text Generation Inference's shape: POST /generate and POST /generate_stream (llm-vscode's llm-ls with backend
"tgi"). Validation errors are 422 {"error": "...", "error_type": "validation"}, as TGI answers them.

`inputs` is plain text: a FIM template written into it stays text (only llama.cpp's /completion reads Code Llama's
template; see docs/serving.md for llm-ls set up either way)."""

from __future__ import annotations

from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict, Field

from .httputil import ApiShape, ClientGone, sse, sse_response, unless_disconnected
from .protocol import Delta, Done, Sampling
from .service import Service, start_all

router = APIRouter()
FINISH = {"eos": "eos_token", "word": "stop_sequence", "limit": "length"}


class TgiShape(ApiShape):
    name = "tgi"
    paths = ("/generate", "/generate_stream")
    overrides = {"invalid": 422, "unsupported": 422}
    TYPES = {"invalid": "validation", "unsupported": "validation", "overloaded": "overloaded",
             "auth": "authentication", "unavailable": "unhealthy", "internal": "generation"}

    def body(self, status, message, *, kind, param):
        return {"error": message, "error_type": self.TYPES.get(kind, "validation")}


SHAPE = TgiShape()


class Parameters(BaseModel):
    model_config = ConfigDict(extra="ignore")  # best_of, details, decoder_input_details, ... (details always come)

    max_new_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, gt=0)
    top_p: float | None = Field(None, gt=0, lt=1)
    top_k: int | None = Field(None, gt=0)
    do_sample: bool = False
    stop: list[str] = Field(default_factory=list, max_length=4)
    seed: int | None = Field(None, ge=0)
    return_full_text: bool = False

    def sampling(self) -> Sampling:
        # TGI samples when asked to, or when any warper is set (its NextTokenChooser does the same)
        warped = self.temperature not in (None, 1.0) or self.top_p is not None or self.top_k is not None
        if not (self.do_sample or warped):
            return Sampling()
        return Sampling(temperature=self.temperature or 1.0, top_p=self.top_p or 1.0, top_k=self.top_k or 0,
                        seed=self.seed)


class GenerateRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")
    inputs: str
    parameters: Parameters = Field(default_factory=Parameters)


DEFAULT_MAX_NEW_TOKENS = 100  # TGI's default when max_new_tokens is not sent


def _start(service: Service, body: GenerateRequest):
    p = body.parameters
    req = service.request(service.plain_ids(body.inputs, param="inputs"),
                          max_new_tokens=p.max_new_tokens or DEFAULT_MAX_NEW_TOKENS, sampling=p.sampling(),
                          stop=p.stop, decode="continue", param="parameters.max_new_tokens")
    return start_all(service, [req])


def _text(body: GenerateRequest, done: Done) -> str:
    # TGI stops after the token that completes a stop sequence and keeps it in the text
    text = done.text + done.stopping_word
    return body.inputs + text if body.parameters.return_full_text else text


def _details(body: GenerateRequest, done: Done) -> dict:
    return {"finish_reason": FINISH[done.stop_type], "generated_tokens": done.completion_tokens,
            "seed": body.parameters.seed}


@router.post("/generate")
async def generate(body: GenerateRequest, request: Request):
    service: Service = request.app.state.service
    runs = _start(service, body)
    try:
        done = await unless_disconnected(request, runs[0].result())
    except ClientGone:
        return None
    return {"generated_text": _text(body, done), "details": _details(body, done)}


@router.post("/generate_stream")
async def generate_stream(body: GenerateRequest, request: Request):
    service: Service = request.app.state.service
    runs = _start(service, body)

    async def chunks():
        index, last = 0, None
        async for event in runs[0].events():
            if isinstance(event, Delta) and event.ids:
                index += 1
                last = event.ids[-1]
                yield sse({"index": index, "token": {"id": last, "text": event.text, "logprob": None,
                                                     "special": False},
                           "generated_text": None, "details": None})
            elif isinstance(event, Delta) and event.text:  # held-back text released at the end
                index += 1
                yield sse({"index": index, "token": {"id": last, "text": event.text, "logprob": None,
                                                     "special": False}, "generated_text": None, "details": None})
            elif isinstance(event, Done):
                index += 1
                yield sse({"index": index, "token": {"id": last, "text": event.stopping_word, "logprob": None,
                                                     "special": True},
                           "generated_text": _text(body, event), "details": _details(body, event)})

    return sse_response(chunks(), runs, SHAPE)
