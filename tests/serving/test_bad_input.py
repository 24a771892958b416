"""Input the tokenizer cannot take, bodies that cannot be parsed, wrong methods: a 4xx in the endpoint's own shape
that names the field or the problem, one log line and no traceback, and the server keeps serving."""

from __future__ import annotations

import json
import logging

import httpx
import pytest

LONE = "\ud800"
# (path, body with LONE where a text field takes it, the field the error must name, status)
CASES = [
    ("/v1/completions", {"prompt": "a" + LONE, "max_tokens": 1}, "prompt", 400),
    ("/v1/completions", {"prompt": "a", "suffix": LONE, "max_tokens": 1}, "suffix", 400),
    ("/v1/completions", {"prompt": "a", "stop": [LONE], "max_tokens": 1}, "stop", 400),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": LONE}]}, "messages.0.content", 400),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": [{"type": "text", "text": LONE}]}]},
     "messages[0].content", 400),
    ("/infill", {"input_prefix": LONE, "input_suffix": "", "n_predict": 1}, "input_prefix", 400),
    ("/infill", {"input_prefix": "", "input_suffix": "", "prompt": LONE, "n_predict": 1}, "prompt", 400),
    ("/completion", {"prompt": LONE, "n_predict": 1}, "prompt", 400),
    ("/completion", {"prompt": "x", "stop": [LONE], "n_predict": 1}, "stop.0", 400),
    ("/generate", {"inputs": LONE}, "inputs", 422),
    ("/generate_stream", {"inputs": "x", "parameters": {"stop": [LONE]}}, "parameters.stop.0", 422),
    ("/", {"inputs": LONE}, "inputs", 422),
    ("/score", {"input_data": {"input_string": [LONE]}}, "input_data.input_string.0", 400),
    ("/api/generate", {"prompt": "x", "suffix": LONE}, "suffix", 400),
    ("/api/chat", {"messages": [{"role": "user", "content": LONE}]}, "messages.0.content", 400),
    ("/api/generate", {"model": LONE, "prompt": "x", "stream": False, "options": {"num_predict": 1}}, "model", 400),
]


def raw_post(server, path, raw: bytes, **headers):
    return httpx.post(server.url + path, content=raw, headers={"Content-Type": "application/json", **headers},
                      timeout=60)


def message(r) -> str:
    body = r.json()
    error = body["error"]
    return error if isinstance(error, str) else error["message"]


@pytest.mark.parametrize("path, body, field, status", CASES)
def test_a_lone_surrogate_is_a_client_error_naming_the_field(server, caplog, path, body, field, status):
    caplog.set_level(logging.INFO)
    r = raw_post(server, path, json.dumps(body).encode())  # ensure_ascii: the surrogate travels as "\ud800"
    assert r.status_code == status and field in message(r) and "surrogate" in message(r)
    assert not [rec for rec in caplog.records if rec.exc_info or rec.levelno >= logging.ERROR]
    assert raw_post(server, "/health", b"").status_code in (200, 405)


@pytest.mark.parametrize("path, status", [("/generate", 422), ("/generate_stream", 422), ("/", 422),
                                          ("/v1/completions", 400), ("/infill", 400), ("/api/generate", 400)])
def test_bodies_that_cannot_be_parsed_name_the_problem(server, path, status):
    not_utf8 = raw_post(server, path, b'{"inputs": "\xff"}')
    assert not_utf8.status_code == status and "not UTF-8" in message(not_utf8) and "0xff" in message(not_utf8)
    broken = raw_post(server, path, b'{"inputs": ')
    assert broken.status_code == status and "not valid JSON" in message(broken)


@pytest.mark.parametrize("method, path, allow", [("GET", "/v1/completions", "POST"), ("GET", "/generate", "POST"),
                                                 ("POST", "/api/tags", "GET"), ("POST", "/health", "GET")])
def test_405_says_which_methods_are_allowed(server, method, path, allow):
    r = httpx.request(method, server.url + path, timeout=60)
    assert r.status_code == 405 and r.headers["allow"] == allow


def test_infill_says_truncated_when_max_prompt_tokens_trimmed_it(server):
    body = {"input_prefix": "def f(x):\n" * 20, "input_suffix": "    return x\n" * 10, "n_predict": 1}
    assert httpx.post(f"{server.url}/infill", json=body, timeout=60).json()["truncated"] is False
    trimmed = httpx.post(f"{server.url}/infill", json={**body, "max_prompt_tokens": 16}, timeout=60).json()
    assert trimmed["truncated"] is True and trimmed["tokens_evaluated"] == 16
    roomy = httpx.post(f"{server.url}/infill", json={**body, "max_prompt_tokens": 4000}, timeout=60).json()
    assert roomy["truncated"] is False
