"""`codellama-hf serve`: one converted folder behind the HTTP APIs that editors and the model card speak.

    protocol.py     the one GenerationRequest every API translates to; events; errors (no HTTP)
    service.py      Meta's prompt ids per kind of request, and runs that turn ids into text events (no HTTP)
    detokenize.py   incremental decoding and stop strings
    prompts.py      the literal <PRE>/<SUF>/<MID> template and llama.cpp's extra context, as text
    parameters.py   the model card's generation parameters (/score and the batch job)
    engines/        Transformers' continuous batching (the default) and eager `generate`, one request at a time
    loading.py      the folder -> model, tokenizer, engine
    app.py          FastAPI: API keys, body limit, 503 while loading, CORS, errors per API shape
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


def serve(model_dir, *, host: str = "127.0.0.1", port: int = 8080, options=None, log_level: str = "info", **load_options) -> None:
    """Serve `model_dir` until interrupted; `load_options` go to load_service (dtype, quantization, engine, ...).

    `options`: a ServeOptions (default: no keys, no CORS). The port opens at once and answers 503 while the model loads; if loading fails, the server stops and the
    error is raised here."""
    import uvicorn

    from ..errors import UserInputError
    from .app import ServeOptions, create_app
    from .loading import check_folder

    options = options or ServeOptions()
    check_folder(model_dir)
    server = None

    def load():
        try:
            return load_service(model_dir, **load_options)
        except BaseException:
            server.should_exit = True  # a server that can never answer should not keep the port
            raise

    app = create_app(load, options)
    server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level=log_level,
                                           timeout_graceful_shutdown=5))
    server.run()
    if app.state.load_error:
        raise UserInputError(f"the model did not load: {app.state.load_error}")
    if not server.started:
        raise UserInputError(f"could not listen on {host}:{port} (see the log above); pick another --port")
