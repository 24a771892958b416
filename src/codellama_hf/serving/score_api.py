"""The model card's real-time endpoint: POST /score with
{"input_data": {"input_string": [...], "parameters": {...}}}, answering [{"0": text}, {"1": text}, ...] where each
text is the input and its continuation. `parameters` may also stand beside `input_data`, as some clients send it.
Errors are {"error": {"code", "message"}}."""

from __future__ import annotations

from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict, Field

from .fields import Text
from .httputil import ApiShape, ClientGone, results, unless_disconnected
from .parameters import Parameters
from .service import Service, start_all

router = APIRouter()
MAX_INPUTS = 64


class ScoreShape(ApiShape):
    name = "score"
    paths = ("/score",)
    error_schema = {"type": "object", "required": ["error"],
                    "properties": {"error": {"type": "object", "required": ["code", "message"]}}}
    CODES = {"invalid": "BadArgument", "unsupported": "BadArgument", "auth": "Unauthorized",
             "too_large": "RequestEntityTooLarge", "overloaded": "TooManyRequests", "unavailable": "ServiceUnavailable",
             "internal": "InternalServerError", "timeout": "GatewayTimeout"}

    def body(self, status, message, *, kind, param):
        return {"error": {"code": self.CODES.get(kind, "BadArgument"), "message": message}}


SHAPE = ScoreShape()


class InputData(BaseModel):
    model_config = ConfigDict(extra="ignore")
    input_string: list[Text] = Field(min_length=1, max_length=MAX_INPUTS)
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
    service.check_room(len(inputs))
    reqs = await service.off_loop(lambda: [
        service.request(service.plain_ids(text, param="input_string"), max_new_tokens=params.max_new_tokens,
                        sampling=params.sampling(), stop=params.stop, decode="continue",
                        param="parameters.max_new_tokens") for text in inputs])
    runs = start_all(service, reqs)
    try:
        dones = await unless_disconnected(request, results(runs))
    except ClientGone:
        return None
    return [{str(i): (text if params.return_full_text else "") + done.text}
            for i, (text, done) in enumerate(zip(inputs, dones))]
