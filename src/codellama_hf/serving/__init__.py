"""`codellama-hf serve`: one converted folder behind the HTTP APIs that editors and the model card speak.

    protocol.py     the one GenerationRequest every API translates to; events; errors (no HTTP)
    service.py      Meta's prompt ids per kind of request, and runs that turn ids into text events (no HTTP)
    detokenize.py   incremental decoding and stop strings
    prompts.py      the literal <PRE>/<SUF>/<MID> template and llama.cpp's extra context, as text
    parameters.py   the model card's generation parameters (/score and the batch job)
    engines/        Transformers' continuous batching (the default) and eager `generate`, one request at a time
    cache_size.py   the KV cache's size, from --max-concurrent and free memory (never total RAM)
    loading.py      the folder -> model, tokenizer, engine
    app.py          FastAPI: API keys, body limit, 503 while loading, CORS, errors per API shape
    server.py       uvicorn with a graceful shutdown: a grace for running requests, then their final events
    httputil.py     error shapes, server-sent events, disconnects
    openai_api.py, llamacpp_api.py, tgi_api.py, score_api.py   one module per API shape
    batch.py        `codellama-hf generate`, the batch endpoint, on the same engine (no HTTP imports)
    batch_ray.py    `generate --ray`: the same job as Ray Data map_batches over engine replicas (imports Ray;
                    nothing else here imports it)

Serving needs the `serve` extra (FastAPI, uvicorn): pip install 'codellama-hf[serve]'. The HTTP names (create_app,
ServeOptions, serve) load on first use, so the batch job runs without uvicorn.
"""

from __future__ import annotations

from .batch import run_batch
from .loading import load_service

_HTTP = {"ServeOptions": "app", "create_app": "app"}


def __getattr__(name):
    if name in _HTTP:
        import importlib

        return getattr(importlib.import_module(f".{_HTTP[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["ServeOptions", "create_app", "load_service", "run_batch", "serve"]


def serve(model_dir, *, host: str = "127.0.0.1", port: int = 8080, options=None, log_level: str = "info",
          shutdown_grace: float = 10.0, **load_options) -> int | None:
    """Serve `model_dir` until SIGINT/SIGTERM; `load_options` go to load_service (dtype, quantization, engine, ...).

    `options`: a ServeOptions (default: no keys, no CORS). The port opens at once and answers 503 while the model
    loads; if loading fails, the server stops and the error is raised here. On a signal, running requests get
    `shutdown_grace` seconds, then end with their API's final event (server.py). Returns the signal that stopped
    it."""
    import logging
    import sys

    import uvicorn

    from ..errors import UserInputError
    from .app import ServeOptions, create_app
    from .loading import Cancelled, check_folder
    from .server import GracefulServer

    options = options or ServeOptions()
    check_folder(model_dir)
    ours = logging.getLogger("codellama_hf")
    if not ours.handlers:  # our lines (the cache plan, readiness, shutdown) beside uvicorn's, in its format
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(levelname)s:     %(message)s"))
        ours.addHandler(handler)
        ours.setLevel(log_level.upper())
    server = None

    def load():
        try:
            return load_service(model_dir, cancelled=app.state.closing, **load_options)
        except Cancelled:
            raise
        except BaseException:
            server.should_exit = True  # a server that can never answer should not keep the port
            raise

    app = create_app(load, options)
    server = GracefulServer(uvicorn.Config(app, host=host, port=port, log_level=log_level,
                                           timeout_graceful_shutdown=shutdown_grace + 1.5), app=app,
                            grace=shutdown_grace)
    try:
        server.run()
    finally:
        if app.state.service is not None:  # a second Ctrl-C skips the app's shutdown: the engine's threads still stop
            app.state.service.engine.stop()
    if app.state.load_error:
        raise UserInputError(f"the model did not load: {app.state.load_error}")
    if not server.started:
        raise UserInputError(f"could not listen on {host}:{port} (see the log above); pick another --port")
    return server.stopped_by
