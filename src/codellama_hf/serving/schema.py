"""/openapi.json as the server answers: FastAPI's schema, with each path's error statuses and error body taken from
its API shape (FastAPI would list 422 everywhere, where OpenAI, llama.cpp, Ollama and /score answer 400), and the
media types a route declares as its only ones (server-sent events, NDJSON)."""

from __future__ import annotations

from collections.abc import Callable

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from .httputil import ApiShape

MEDIA_KEY = "x-codellama-media-types"  # set by media(), removed from the schema served
ERROR_KINDS = ("invalid", "unsupported", "auth", "forbidden", "too_large", "overloaded", "internal", "unavailable")
DESCRIPTIONS = {400: "Bad request", 401: "Missing or wrong API key", 403: "Host not allowed on a loopback address",
                413: "Body too large", 422: "Validation error", 429: "Queue full", 500: "Internal error",
                501: "Variant not trained for this", 503: "Loading, or the queue is full"}


def media(*types: str) -> dict:
    """A route's keyword arguments that make `types` its only success media types in the schema."""
    return {"openapi_extra": {MEDIA_KEY: list(types)}}


def build(app: FastAPI, shape_for: Callable[[str], ApiShape]) -> dict:
    schema = get_openapi(title=app.title, version=app.version, routes=app.routes,
                         description="codellama-hf serve: OpenAI, llama.cpp, TGI, Ollama and the model card's /score "
                                     "over one model; see docs/serving.md")
    for path, operations in schema["paths"].items():
        shape = shape_for(path)
        for operation in operations.values():
            responses = operation["responses"]
            responses.pop("422", None)
            types = operation.pop(MEDIA_KEY, None)
            if types:
                json_schema = responses["200"].get("content", {}).get("application/json", {"schema": {}})
                responses["200"]["content"] = {t: json_schema if t == "application/json" else {"schema": {}}
                                               for t in types}
            for kind in ERROR_KINDS:
                status = shape.status(kind)
                responses[str(status)] = {"description": DESCRIPTIONS.get(status, "Error"),
                                          "content": {"application/json": {"schema": shape.error_schema}}}
    for name in ("HTTPValidationError", "ValidationError"):
        schema.get("components", {}).get("schemas", {}).pop(name, None)
    return schema
