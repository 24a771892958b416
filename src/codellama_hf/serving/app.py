"""The FastAPI app: the API modules' routes, plus what every request passes first: API keys, the body-size limit,
503 while the model loads, CORS, and errors in the shape of the API the path belongs to."""

from __future__ import annotations

import hmac
import ipaddress
import logging
import threading
import time
from collections.abc import Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from . import llamacpp_api, ollama_api, openai_api, schema, score_api, tgi_api
from .. import __version__
from ..errors import UserInputError
from .httputil import ApiShape, validation_error
from .loading import Cancelled
from .protocol import ServingError
from .service import Service

logger = logging.getLogger(__name__)

# Most specific first: /infill's 501 differs from /completion's shape.
SHAPES: tuple[ApiShape, ...] = (llamacpp_api.INFILL_SHAPE, llamacpp_api.SHAPE, tgi_api.SHAPE, score_api.SHAPE,
                                ollama_api.SHAPE, openai_api.SHAPE)
UNGUARDED = ("/health", "/openapi.json")  # answer without a key, and while loading
# `--cors-origins localhost`: these hosts on any port, http or https; nothing else (not localhost.evil.com)
LOCAL_ORIGINS = r"https?://(localhost|127\.0\.0\.1|\[::1\])(:[0-9]{1,5})?"
# The Host names a request reaching a loopback address may carry (any port); others need --allowed-hosts.
LOCAL_HOSTS = ("localhost", "127.0.0.1", "[::1]")


def shape_for(path: str) -> ApiShape:
    for shape in SHAPES:
        if path in shape.paths or path.startswith(shape.prefixes):
            return shape
    return openai_api.SHAPE


@dataclass(frozen=True)
class ServeOptions:
    api_keys: tuple[str, ...] = ()
    cors_origins: tuple[str, ...] = ()  # "localhost" for local pages on any port; else exact origins
    max_body_bytes: int = 4 * 2**20  # editors send context chunks; 4 MiB is far above what they send
    allowed_hosts: tuple[str, ...] = ()  # Host names admitted on a loopback address besides LOCAL_HOSTS; "*": any
    openapi: bool = True  # serve /openapi.json

    def __post_init__(self):
        # An empty key (`--api-key "$KEY"` with KEY unset) would let an empty X-Api-Key header in.
        if any(not k.strip() for k in self.api_keys):
            raise UserInputError("an API key is empty; pass a non-empty --api-key (is the variable you passed set?)")


def host_name(host: str) -> str:
    """A Host header without its port, lowercased: 'LocalHost:8080' -> 'localhost', '[::1]:80' -> '[::1]'."""
    host = host.strip().lower()
    return host[:host.index("]") + 1] if host.startswith("[") and "]" in host else host.rsplit(":", 1)[0]


class Gate:
    """ASGI middleware: Host (against DNS rebinding), API key, body size (read up to the limit, then replayed to the
    app), UTF-8, and readiness."""

    def __init__(self, app, *, owner: FastAPI, options: ServeOptions):
        self.app, self.owner, self.options = app, owner, options
        self.keys = [k.encode() for k in options.api_keys]
        self.hosts = None if "*" in options.allowed_hosts else {
            host_name(h) for h in (*LOCAL_HOSTS, *options.allowed_hosts)}

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        shape = shape_for(scope["path"])
        headers = dict(scope["headers"])
        if not self._host_allowed(scope, headers):
            host = headers[b"host"].decode("latin-1")
            error = ServingError(f"Host {host!r} is not allowed on a loopback address (DNS rebinding); use "
                                 f"http://localhost, or start the server with --allowed-hosts {host_name(host)}",
                                 kind="forbidden")
            return await shape.response(error)(scope, receive, send)
        if scope["path"] in UNGUARDED or scope["method"] == "OPTIONS":
            return await self.app(scope, receive, send)
        if self.keys and not self._authorized(headers):
            error = ServingError("missing or wrong API key; send 'Authorization: Bearer KEY' or 'X-Api-Key: KEY'",
                                 kind="auth")
            return await shape.response(error)(scope, receive, send)
        body, too_large = b"", False
        if scope["method"] in ("POST", "PUT", "PATCH"):
            body, too_large = await self._read_body(headers, receive)
        if too_large:
            error = ServingError(f"the request body is over {self.options.max_body_bytes} bytes (--max-body-bytes); "
                                 f"send less context", kind="too_large")
            return await shape.response(error)(scope, receive, send)
        try:
            body.decode("utf-8")
        except UnicodeDecodeError as e:
            error = ServingError(f"the body is not UTF-8 (byte {body[e.start]:#04x} at offset {e.start}); send UTF-8 "
                                 f"JSON")
            return await shape.response(error)(scope, receive, send)
        state = self.owner.state
        if state.service is None:
            error = (ServingError(f"the model failed to load: {state.load_error}", kind="internal")
                     if state.load_error else ServingError("the model is loading; retry in a few seconds",
                                                           kind="unavailable"))
            return await shape.response(error)(scope, receive, send)
        await self.app(scope, self._replay(body, receive), send)

    def _host_allowed(self, scope, headers: dict) -> bool:
        """A page on another site can point its own name at 127.0.0.1 (DNS rebinding) and so reach a server on this
        machine, but its requests still carry its name as Host; on a loopback address only local names pass."""
        if self.hosts is None or b"host" not in headers:
            return True
        server = scope.get("server")
        if server is not None:
            try:
                if not ipaddress.ip_address(server[0]).is_loopback:
                    return True
            except ValueError:  # a name rather than an address: not a socket we listen on by IP
                return True
        return host_name(headers[b"host"].decode("latin-1")) in self.hosts

    def _authorized(self, headers: dict) -> bool:
        offered = []
        auth = headers.get(b"authorization", b"")
        if auth[:7].lower() == b"bearer ":
            offered.append(auth[7:].strip())
        if b"x-api-key" in headers:
            offered.append(headers[b"x-api-key"].strip())
        return any(hmac.compare_digest(o, k) for o in offered for k in self.keys)

    async def _read_body(self, headers: dict, receive) -> tuple[bytes, bool]:
        limit = self.options.max_body_bytes
        try:
            if int(headers.get(b"content-length", b"0")) > limit:
                return b"", True
        except ValueError:
            pass
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                break
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                return b"", True
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        return b"".join(chunks), False

    @staticmethod
    def _replay(body: bytes, receive):
        sent = False

        async def replay():
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()  # later: http.disconnect, which streaming and disconnect checks wait for

        return replay


def create_app(load: Callable[[], Service], options: ServeOptions = ServeOptions()) -> FastAPI:
    """The app; `load` runs on a thread at startup (the server answers 503 until it returns)."""

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        def run():
            try:
                service = load()
            except Cancelled:  # the server is stopping (Ctrl-C while loading)
                return
            except UserInputError as e:  # e.g. a --kv-cache-tokens that does not fit: /health and `serve` say it
                app.state.load_error = str(e)  # (the CLI prints it once; no traceback for a user's mistake)
                return
            except Exception as e:  # noqa: BLE001 - reported by /health and every endpoint, and logged
                logger.exception("loading failed")
                app.state.load_error = f"{type(e).__name__}: {e}"
                return
            with lock:
                if app.state.closing.is_set():  # loaded after the server stopped: leave no engine thread behind
                    if service is not None:
                        service.engine.stop()
                    return
                app.state.service = service
            logger.info("ready: %s", service.model_id)

        lock = threading.Lock()
        loader = threading.Thread(target=run, name="codellama-load", daemon=True)
        loader.start()
        try:
            yield
        finally:
            with lock:
                app.state.closing.set()
            loader.join(timeout=0.1)
            if app.state.service is not None:
                app.state.service.engine.stop()

    app = FastAPI(title="codellama-hf", version=__version__, lifespan=lifespan, docs_url=None, redoc_url=None,
                  openapi_url="/openapi.json" if options.openapi else None)
    app.state.service, app.state.load_error, app.state.started = None, None, int(time.time())
    app.state.closing = threading.Event()  # set when the server stops; a load still running gives up
    for module in (openai_api, llamacpp_api, tgi_api, score_api, ollama_api):
        app.include_router(module.router)

    @app.get("/health")
    async def health():
        if app.state.service is not None:
            return {"status": "ok", "model": app.state.service.model_id}
        if app.state.load_error:
            return JSONResponse({"status": "error", "error": app.state.load_error}, status_code=500)
        return JSONResponse({"status": "loading"}, status_code=503, headers={"Retry-After": "5"})

    @app.exception_handler(ServingError)
    async def serving_error(request: Request, exc: ServingError):
        return shape_for(request.url.path).response(exc)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError):
        return shape_for(request.url.path).response(validation_error(list(exc.errors())))

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException):
        shape = shape_for(request.url.path)
        if exc.status_code == 400:  # FastAPI could not parse the body: a validation error in the API's terms
            error = ServingError(f"the body could not be parsed ({exc.detail}); send one JSON object with "
                                 f"Content-Type: application/json")
            return shape.response(error)
        kind = {404: "not_found", 405: "method"}.get(exc.status_code, "invalid")
        message = (f"no endpoint {request.method} {request.url.path}; see docs/serving.md for the endpoints"
                   if exc.status_code in (404, 405) else str(exc.detail))
        return shape.response(ServingError(message, kind=kind), status=exc.status_code, headers=exc.headers)

    @app.exception_handler(Exception)
    async def crashed(request: Request, exc: Exception):
        logger.exception("request failed")
        error = ServingError(f"internal error: {type(exc).__name__}: {exc}", kind="internal")
        return shape_for(request.url.path).response(error)

    def openapi():
        if app.openapi_schema is None:
            app.openapi_schema = schema.build(app, shape_for)
        return app.openapi_schema

    app.openapi = openapi
    app.add_middleware(Gate, owner=app, options=options)
    if options.cors_origins:  # off by default: a web page cannot reach the server unless told
        exact = [o for o in options.cors_origins if o != "localhost"]
        app.add_middleware(CORSMiddleware, allow_origins=exact,
                           allow_origin_regex=LOCAL_ORIGINS if "localhost" in options.cors_origins else None,
                           allow_methods=["GET", "POST", "OPTIONS"],
                           allow_headers=["Authorization", "Content-Type", "X-Api-Key"], max_age=600)
    return app
