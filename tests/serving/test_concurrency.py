"""Concurrent clients, disconnects and a full queue, against the in-process server."""

from __future__ import annotations

import asyncio
import json
import time

import httpx
import pytest

from .conftest import loader, poison, start_server

GAPS = [(f"def f{i}(x):\n    y = x * {i}\n", f"\n    return y + {i}\n") for i in range(16)]


def wait_until(condition, what: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, what
        time.sleep(0.01)


async def stream_infill(client: httpx.AsyncClient, prefix: str, suffix: str) -> str:
    body = {"input_prefix": prefix, "input_suffix": suffix, "n_predict": 12, "temperature": 0, "stream": True}
    text = []
    async with client.stream("POST", "/infill", json=body) as r:
        assert r.status_code == 200
        async for line in r.aiter_lines():
            if line.startswith("data:"):
                text.append(json.loads(line[5:])["content"])
    return "".join(text)


@pytest.fixture(scope="module")
def eager_server(instruct_folder):
    live = start_server(loader(instruct_folder, engine="eager"))
    yield live
    live.stop()


@pytest.fixture(params=["continuous", "eager"])
def any_server(request):
    return request.getfixturevalue("server" if request.param == "continuous" else "eager_server")


def test_sixteen_concurrent_streams_get_what_each_gets_alone(any_server, monkeypatch):
    server = any_server
    async def alone():
        async with httpx.AsyncClient(base_url=server.url, timeout=120) as client:
            return [await stream_infill(client, p, s) for p, s in GAPS]

    engine, peak = server.service.engine, []
    real = engine.submit

    def submit(request):
        sub = real(request)
        peak.append(engine.in_flight)
        return sub

    async def together():
        async with httpx.AsyncClient(base_url=server.url, timeout=120,
                                     limits=httpx.Limits(max_connections=32)) as client:
            return await asyncio.gather(*(stream_infill(client, p, s) for p, s in GAPS))

    one_by_one = asyncio.run(alone())
    monkeypatch.setattr(engine, "submit", submit)
    assert asyncio.run(together()) == one_by_one
    assert max(peak) >= 8  # they really were in the engine at the same time (the eager one queues them)
    assert len(set(one_by_one)) > 8  # and the gaps differ, so each client got its own text back


def long_request() -> dict:
    # a budget that takes minutes: only a cancel ends it in time
    return {"prompt": "def f(x):", "n_predict": 16000, "ignore_eos": True, "temperature": 0}


def test_a_streaming_client_that_disconnects_is_cancelled(any_server):
    engine = any_server.service.engine
    server = any_server
    with httpx.stream("POST", f"{server.url}/completion", json={**long_request(), "stream": True}, timeout=60) as r:
        lines = r.iter_lines()
        while not next(lines).startswith("data:"):
            pass
        assert engine.in_flight == 1
    wait_until(lambda: engine.in_flight == 0, "the disconnected stream still holds its slot")
    if engine.name == "continuous":
        wait_until(lambda: not engine._manager.batch_processor.scheduler.active_requests,
                   "the batch still generates for the disconnected client")
    else:  # the worker stops at its next step and takes the next request
        r = httpx.post(f"{server.url}/completion", json={"prompt": "x", "n_predict": 2}, timeout=10)
        assert r.status_code == 200


def test_a_non_streaming_client_that_disconnects_is_cancelled(any_server):
    # llama.vim cancels a completion by killing its curl
    engine, server = any_server.service.engine, any_server
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(f"{server.url}/infill", json={"input_prefix": "a", "input_suffix": "b", **long_request()},
                   timeout=httpx.Timeout(60, read=0.5))
    wait_until(lambda: engine.in_flight == 0, "the abandoned request still holds its slot")


@pytest.fixture(scope="module")
def one_slot(instruct_folder):
    live = start_server(loader(instruct_folder, max_queue=1))
    yield live
    live.stop()


def test_a_full_queue_gets_429_with_retry_after_and_a_disconnect_frees_it(one_slot):
    url = one_slot.url
    with httpx.stream("POST", f"{url}/completion", json={**long_request(), "stream": True}, timeout=60) as r:
        lines = r.iter_lines()  # held: dropping a half-read iterator closes the connection (httpcore does)
        while not next(lines).startswith("data:"):
            pass
        busy = {path: httpx.post(f"{url}{path}", json=body, timeout=30) for path, body in [
            ("/v1/completions", {"prompt": "x", "max_tokens": 2}),
            ("/infill", {"input_prefix": "a", "input_suffix": "b", "n_predict": 2}),
            ("/generate", {"inputs": "x"}), ("/score", {"input_data": {"input_string": ["x"]}})]}
    for path, response in busy.items():
        assert response.status_code == 429 and response.headers["retry-after"] == "1", (path, response.text)
    assert busy["/v1/completions"].json()["error"]["type"] == "rate_limit_error"
    assert busy["/infill"].json()["error"]["code"] == 429
    assert busy["/generate"].json()["error_type"] == "overloaded"
    wait_until(lambda: one_slot.service.engine.in_flight == 0, "the slot was not freed")
    r = httpx.post(f"{url}/v1/completions", json={"prompt": "x", "max_tokens": 2}, timeout=30)
    assert r.status_code == 200


def test_a_request_that_fails_inside_generation_gets_500_and_the_server_goes_on(server, monkeypatch):
    # Continuous batching: Transformers' manager stops its loop on any error in a forward pass, failing every
    # request in it; the engine starts a new loop for the next requests.
    prompt = "def poisoned_request():"
    poison(server.service.model, monkeypatch, server.service.plain_ids(prompt))
    r = httpx.post(f"{server.url}/v1/completions", json={"prompt": prompt, "max_tokens": 3}, timeout=60)
    assert r.status_code == 500 and "injected failure" in r.json()["error"]["message"]
    assert r.json()["error"]["type"] == "server_error"
    r = httpx.post(f"{server.url}/infill", json={"input_prefix": "a", "input_suffix": "b", "n_predict": 3},
                   timeout=60)
    assert r.status_code == 200 and r.json()["tokens_predicted"] >= 1


def test_with_the_eager_engine_a_failing_request_fails_alone(eager_server, monkeypatch):
    prompt = "def poisoned_request():"
    poison(eager_server.service.model, monkeypatch, eager_server.service.plain_ids(prompt))

    async def both():
        async with httpx.AsyncClient(base_url=eager_server.url, timeout=60) as client:
            return await asyncio.gather(
                client.post("/completion", json={"prompt": "x", "n_predict": 40, "ignore_eos": True}),
                client.post("/completion", json={"prompt": prompt, "n_predict": 4}))

    fine, failed = asyncio.run(both())
    assert failed.status_code == 500 and "injected failure" in failed.json()["error"]["message"]
    assert fine.status_code == 200 and fine.json()["tokens_predicted"] == 40
