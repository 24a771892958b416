"""Nothing one request sends stalls the others (issue 22, rows 4, 5 and 10): big bodies are refused or tokenized off
the event loop, stop lists are capped, the queue is checked before any tokenizing, an engine restart runs on a thread,
and a request that gets no tokens fails with a 5xx instead of waiting forever.

/health is polled from a thread while the heavy request runs; its slowest answer must stay under HEALTH_BUDGET_S
(0.25 s: a frozen loop took 2.9-25.7 s; CODELLAMA_HEALTH_BUDGET_S loosens it on a crowded machine)."""

from __future__ import annotations

import contextlib
import os
import threading
import time

import httpx
import pytest

from .conftest import loader, poison, start_server

HEALTH_BUDGET_S = float(os.environ.get("CODELLAMA_HEALTH_BUDGET_S", "0.25"))
RESTART_S = 3.0  # the injected length of an engine restart


@contextlib.contextmanager
def health_latencies(url: str):
    """Seconds each /health took while the block ran (polled every 10 ms from a thread)."""
    seen: list[float] = []
    stop = threading.Event()

    def poll():
        with httpx.Client(base_url=url, timeout=60) as client:
            while not stop.is_set():
                t = time.perf_counter()
                assert client.get("/health").status_code == 200
                seen.append(time.perf_counter() - t)
                time.sleep(0.01)

    thread = threading.Thread(target=poll, daemon=True)
    thread.start()
    time.sleep(0.1)
    try:
        yield seen
    finally:
        time.sleep(0.05)
        stop.set()
        thread.join(timeout=60)


def test_a_body_of_300000_prompts_is_refused_at_once_naming_the_field(server):
    with health_latencies(server.url) as latencies:
        r = httpx.post(f"{server.url}/v1/completions", json={"prompt": [""] * 300_000, "max_tokens": 1}, timeout=120)
    assert r.status_code == 400 and r.json()["error"]["param"] == "prompt", r.text[:300]
    assert max(latencies) < HEALTH_BUDGET_S, max(latencies)


def test_a_4mb_prompt_is_tokenized_off_the_event_loop(server):
    prompt = "total = total + 1\n" * (3_900_000 // 19)  # JSON writes "\n" in 2 bytes: just under 4 MiB
    with health_latencies(server.url) as latencies:
        r = httpx.post(f"{server.url}/v1/completions", json={"prompt": prompt, "max_tokens": 1}, timeout=120)
    assert r.status_code == 400 and r.json()["error"]["param"] == "prompt"  # longer than the context
    assert max(latencies) < HEALTH_BUDGET_S, max(latencies)


FIVE = ["\nclass", "\ndef", "\n#", "\nif", "\nwhile"]


@pytest.mark.parametrize("path, body", [
    ("/completion", {"prompt": "def f(x):", "stop": FIVE}),
    ("/infill", {"input_prefix": "def f(x):", "input_suffix": "\n", "stop": FIVE}),
    ("/score", {"input_data": {"input_string": ["def f(x):"], "parameters": {"stop": FIVE}}}),
    ("/v1/completions", {"prompt": "def f(x):", "stop": FIVE}),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}], "stop": FIVE}),
])
def test_more_than_four_stop_strings_are_refused_naming_the_field(server, path, body):
    r = httpx.post(f"{server.url}{path}", json=body, timeout=60)
    assert r.status_code == 400, r.text
    assert "stop" in r.text and "4" in r.text


def test_a_full_queue_is_refused_before_any_tokenizing(instruct_folder, monkeypatch):
    live = start_server(loader(instruct_folder, max_queue=1))
    try:
        service = live.service
        tokenized = []
        for name in ("plain_ids", "infill_ids", "template_ids", "chat_ids", "llamacpp_infill_ids"):
            real = getattr(service, name)
            monkeypatch.setattr(service, name, lambda *a, _real=real, **k: tokenized.append(1) or _real(*a, **k))
        busy = {"prompt": "x", "n_predict": -1, "ignore_eos": True, "stream": True}
        with httpx.stream("POST", f"{live.url}/completion", json=busy, timeout=60) as stream:
            lines = stream.iter_lines()
            while not next(lines).startswith("data:"):
                pass
            tokenized.clear()
            refused = [httpx.post(f"{live.url}{path}", json=body, timeout=60) for path, body in [
                ("/v1/completions", {"prompt": "x " * 100_000, "max_tokens": 1}),
                ("/completion", {"prompt": "x " * 100_000}),
                ("/infill", {"input_prefix": "x " * 100_000, "input_suffix": ""}),
                ("/score", {"input_data": {"input_string": ["x " * 100_000]}}),
                ("/v1/chat/completions", {"messages": [{"role": "user", "content": "x " * 100_000}]})]]
        assert [r.status_code for r in refused] == [429] * len(refused)
        assert tokenized == []
    finally:
        live.stop()


@pytest.fixture(scope="module")
def impatient(instruct_folder):
    """A server whose requests fail after 2 s without a token."""
    live = start_server(loader(instruct_folder, stall_timeout=2.0))
    yield live
    live.stop()


@pytest.mark.parametrize("stream", [False, True])
def test_a_request_the_engine_loses_fails_with_a_5xx_and_frees_its_slot(impatient, monkeypatch, stream):
    engine = impatient.service.engine
    monkeypatch.setattr(engine, "_add", lambda manager, sub: True)  # "added", but it never reaches the manager
    t = time.monotonic()
    r = httpx.post(f"{impatient.url}/v1/completions", json={"prompt": "x", "max_tokens": 4, "stream": stream},
                   timeout=30)
    assert time.monotonic() - t < 15
    if stream:  # the status went out with the first byte: the error is the stream's last event
        assert r.status_code == 200 and '"type": "server_error"' in r.text and "--stall-timeout" in r.text
    else:
        assert r.status_code == 504 and r.json()["error"]["type"] == "server_error"
    assert engine.in_flight == 0


def test_an_engine_restart_runs_off_the_event_loop(server, monkeypatch):
    engine = server.service.engine
    prompt = "def poisoned_request():"
    poison(server.service.model, monkeypatch, server.service.plain_ids(prompt))
    r = httpx.post(f"{server.url}/v1/completions", json={"prompt": prompt, "max_tokens": 3}, timeout=60)
    assert r.status_code == 500  # the manager's loop is dead now; the next request restarts it
    real = engine._new_manager

    def slow_new_manager():
        time.sleep(RESTART_S)  # Transformers' manager takes seconds to stop and start on a busy machine
        return real()

    monkeypatch.setattr(engine, "_new_manager", slow_new_manager)
    with health_latencies(server.url) as latencies:
        r = httpx.post(f"{server.url}/v1/completions", json={"prompt": "x", "max_tokens": 3}, timeout=60)
    assert r.status_code == 200, r.text  # it waited for the new loop, not failed
    # A restart on the loop would hold /health for the whole RESTART_S; off it, /health only shares the GIL with the
    # real manager's start (measured up to 0.58 s on 2 busy cores), so the bound sits between the two.
    assert max(latencies) < max(HEALTH_BUDGET_S, RESTART_S / 2), max(latencies)
