"""The model card's real-time endpoint: POST /score with
{"input_data": {"input_string": [...], "parameters": {...}}}, answering [{"0": text}, {"1": text}, ...] where each
text is the input and its continuation. `parameters` may also stand beside `input_data`, as some clients send it.
Errors are {"error": {"code", "message"}}."""

from __future__ import annotations

from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict, Field

from .httputil import ApiShape, ClientGone, results, start_all, unless_disconnected
from .requests import Sampling
from .service import Service

router = APIRouter()
MAX_INPUTS = 64


class ScoreShape(ApiShape):
    name = "score"
    paths = ("/score",)
    CODES = {"invalid": "BadArgument", "unsupported": "BadArgument", "auth": "Unauthorized",
             "too_large": "RequestEntityTooLarge", "overloaded": "TooManyRequests", "unavailable": "ServiceUnavailable",
             "internal": "InternalServerError"}

    def body(self, status, message, *, kind, param):
        return {"error": {"code": self.CODES.get(kind, "BadArgument"), "message": message}}


SHAPE = ScoreShape()


class Parameters(BaseModel):
    """Transformers' generate semantics: temperature and top_p only matter with do_sample."""

    model_config = ConfigDict(extra="ignore")
    max_new_tokens: int = Field(128, ge=0)
    temperature: float = Field(1.0, gt=0)
    top_p: float = Field(1.0, gt=0, le=1)
    top_k: int = Field(0, ge=0)
    do_sample: bool = False
    return_full_text: bool = True
    stop: list[str] = Field(default_factory=list)

    def sampling(self) -> Sampling:
        if not self.do_sample:
            return Sampling()
        return Sampling(temperature=self.temperature, top_p=self.top_p, top_k=self.top_k)


class InputData(BaseModel):
    model_config = ConfigDict(extra="ignore")
    input_string: list[str] = Field(min_length=1, max_length=MAX_INPUTS)
    parameters: Parameters | None = None


class ScoreRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")
    input_data: InputData
    parameters: Parameters | None = None


@router.post("/score")
async def score(body: ScoreRequest, request: Request):
    service: Service = request.app.state.service
    params = body.input_data.parameters or body.parameters or Parameters()
    inputs = body.input_data.input_string
    reqs = [service.request(service.plain_ids(text, param="input_string"), max_new_tokens=params.max_new_tokens,
                            sampling=params.sampling(), stop=params.stop, decode="continue",
                            param="parameters.max_new_tokens") for text in inputs]
    runs = start_all(service, reqs)
    try:
        dones = await unless_disconnected(request, results(runs))
    except ClientGone:
        return None
    return [{str(i): (text if params.return_full_text else "") + done.text}
            for i, (text, done) in enumerate(zip(inputs, dones))]
