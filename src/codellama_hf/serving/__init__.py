"""`codellama-hf serve`: one converted folder behind the HTTP APIs that editors and the model card speak.

    requests.py    the one GenerationRequest every API translates to; events; errors (no HTTP)
    service.py     Meta's prompt ids per kind of request, and runs that turn ids into text events (no HTTP)
    text.py        incremental decoding and stop strings
    prompts.py     the literal <PRE>/<SUF>/<MID> template and llama.cpp's extra context, as text
    engine.py      Transformers' continuous batching (the default engine); eager.py: one generate at a time
    loading.py     the folder -> model, tokenizer, engine
    app.py         FastAPI: API keys, body limit, 503 while loading, CORS, errors per API shape
    openai_api.py, llamacpp_api.py, tgi_api.py, score_api.py   one module per API shape
    batch.py       `codellama-hf generate`, the batch endpoint, on the same engine

Needs the `serve` extra (FastAPI, uvicorn): pip install 'codellama-hf[serve]'.
"""

from __future__ import annotations

from .app import ServeOptions, create_app
from .batch import run_batch
from .loading import load_service

__all__ = ["ServeOptions", "create_app", "load_service", "run_batch", "serve"]


def serve(model_dir, *, host: str = "127.0.0.1", port: int = 8080, options: ServeOptions = ServeOptions(),
          log_level: str = "info", **load_options) -> None:
    """Serve `model_dir` until interrupted; `load_options` go to load_service (dtype, quantization, engine, ...).

    The port opens at once and answers 503 while the model loads; if loading fails, the server stops and the
    error is raised here."""
    import uvicorn

    from ..errors import UserInputError
    from .loading import check_folder

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
