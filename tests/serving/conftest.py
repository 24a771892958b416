"""Servers for the serving tests: tiny converted checkpoints (tests/fixtures_convert.py), served in-process by
uvicorn on a thread and a free port, started once per module."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass

import httpx
import pytest

pytest.importorskip("fastapi", reason="the serve extra is not installed (pip install -e '.[serve]')")

KV_CACHE_TOKENS = 32768  # the tests' paged cache: 64 MiB for the tiny models, room for many long requests


@dataclass
class LiveServer:
    url: str
    app: object
    server: object
    thread: threading.Thread

    @property
    def service(self):
        return self.app.state.service

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(load, *, ready: bool = True, **options) -> LiveServer:
    """Serve create_app(load) on a free port; with ready=True, wait for /health to say ok."""
    import uvicorn

    from codellama_hf.serving import ServeOptions, create_app

    app = create_app(load, ServeOptions(**options))
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    live = LiveServer(f"http://127.0.0.1:{port}", app, server, thread)
    deadline = time.monotonic() + 120
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("the test server did not start")
        time.sleep(0.01)
    while ready and httpx.get(f"{live.url}/health").status_code != 200:
        if time.monotonic() > deadline or app.state.load_error:
            raise RuntimeError(f"the test model did not load: {app.state.load_error}")
        time.sleep(0.02)
    return live


def loader(folder, **options):
    """Loads `folder` for a test server (continuous batching unless `engine=` says otherwise)."""
    from codellama_hf.serving import load_service

    options = {"engine": "continuous", "kv_cache_tokens": KV_CACHE_TOKENS, **options}
    return lambda: load_service(folder, **options)


@pytest.fixture(scope="session")
def instruct_folder(converted_checkpoint):
    """CodeLlama-7b-Instruct's structure, tiny: it both infills and chats ([INST] turns)."""
    return converted_checkpoint("CodeLlama-7b-Instruct")


@pytest.fixture(scope="session")
def meta(instruct_folder):
    from tests.fixtures_tokenizer import MetaReference

    return MetaReference(instruct_folder / "tokenizer.model")


@pytest.fixture(scope="module")
def server(instruct_folder):
    live = start_server(loader(instruct_folder))
    yield live
    live.stop()


@pytest.fixture
def submitted(server, monkeypatch):
    """Every GenerationRequest the engine receives, in order (its prompt_ids are what the model sees)."""
    calls = []
    engine = server.service.engine
    real = engine.submit

    def spy(request):
        calls.append(request)
        return real(request)

    monkeypatch.setattr(engine, "submit", spy)
    return calls


def sse_events(lines) -> list:
    """The JSON (or "[DONE]") of each `data:` line of a server-sent-event stream."""
    import json

    out = []
    for line in lines:
        if line.startswith("data:"):
            data = line[5:].strip()
            out.append(data if data == "[DONE]" else json.loads(data))
    return out


def reference_greedy(service, ids: list[int], n: int, *, stop_ids=None) -> list[int]:
    """Greedy ids from eager `model.generate` on the served model, the stop id dropped: the independent truth."""
    import torch

    stops = sorted(service.stop_ids if stop_ids is None else stop_ids)
    with torch.no_grad():
        out = service.model.generate(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                                     max_new_tokens=n, do_sample=False, eos_token_id=stops or None,
                                     pad_token_id=stops[0] if stops else 0)
    new = out[0, len(ids):].tolist()
    return new[:-1] if new and new[-1] in stops else new


def poison(model, monkeypatch, prompt_ids: list[int]):
    """Make the model's forward raise on the pass that reads `prompt_ids` (a request's prefill), once; passes for
    other requests still running meanwhile are untouched."""
    real, hits = model.forward, []

    def forward(*args, **kwargs):
        ids = kwargs.get("input_ids", args[0] if args else None)
        flat = ids.reshape(-1).tolist() if ids is not None else []
        n = len(prompt_ids)
        if not hits and any(flat[i:i + n] == prompt_ids for i in range(len(flat) - n + 1)):
            hits.append(1)
            raise RuntimeError("injected failure")
        return real(*args, **kwargs)

    monkeypatch.setattr(model, "forward", forward)
    return hits


class Serve:
    """A real `codellama-hf serve FOLDER` subprocess on a free loopback port, its output in a file."""

    def __init__(self, folder, tmp_path, *args):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = tmp_path / "serve.log"
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
        with open(self.log, "w") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "codellama_hf_cli", "serve", str(folder), "--host", "127.0.0.1", "--port",
                 str(self.port), *args], stdout=log, stderr=subprocess.STDOUT, env=env)

    def health(self) -> int | None:
        try:
            return httpx.get(f"{self.url}/health", timeout=5).status_code
        except httpx.HTTPError:
            return None

    def wait_for(self, statuses, timeout: float = 240) -> int:
        deadline = time.monotonic() + timeout
        while (status := self.health()) not in statuses:
            assert self.process.poll() is None, self.text()
            assert time.monotonic() < deadline, f"no {statuses} from /health"
            time.sleep(0.01)
        return status

    def signal_and_wait(self, sig, timeout: float) -> float:
        """Send `sig`; seconds until the process exited (killed after timeout + 30 s)."""
        t = time.monotonic()
        self.process.send_signal(sig)
        try:
            self.process.wait(timeout=timeout + 30)
        finally:
            if self.process.poll() is None:
                self.process.kill()
                self.process.wait(timeout=30)
        return time.monotonic() - t

    def text(self) -> str:
        return self.log.read_text()

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=30)


@pytest.fixture
def serve(instruct_folder, tmp_path):
    """serve(*args) starts `codellama-hf serve` on the tiny Instruct folder; every one is killed by PID at the end."""
    started = []

    def start(*args):
        started.append(Serve(instruct_folder, tmp_path, *args))
        return started[-1]

    yield start
    for s in started:
        s.stop()
