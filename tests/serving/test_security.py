"""API keys, CORS, the body-size limit and the loading gate: each answered in the endpoint's own error shape."""

from __future__ import annotations

import threading

import httpx
import pytest

from .conftest import loader, start_server

KEYS = ("key-one", "key-two")
LIMIT = 2048


@pytest.fixture(scope="module")
def guarded(instruct_folder):
    live = start_server(loader(instruct_folder), api_keys=KEYS, cors_origins=("localhost",), max_body_bytes=LIMIT)
    yield live
    live.stop()


BODIES = {"/v1/completions": {"prompt": "x", "max_tokens": 1}, "/infill": {"input_prefix": "a", "input_suffix": "b",
                                                                         "n_predict": 1},
          "/completion": {"prompt": "x", "n_predict": 1}, "/generate": {"inputs": "x"},
          "/score": {"input_data": {"input_string": ["x"]}}}


def shape_of(path: str, body) -> str:
    if path.startswith("/v1/"):
        return "openai" if set(body["error"]) == {"message", "type", "param", "code"} else "?"
    if path in ("/infill", "/completion"):
        return "llama.cpp" if set(body["error"]) == {"code", "message", "type"} else "?"
    if path.startswith("/generate"):
        return "tgi" if set(body) == {"error", "error_type"} else "?"
    return "score" if set(body["error"]) == {"code", "message"} else "?"


EXPECTED = {"/v1/completions": "openai", "/infill": "llama.cpp", "/completion": "llama.cpp", "/generate": "tgi",
            "/score": "score"}


@pytest.mark.parametrize("path", list(BODIES))
def test_without_a_key_every_endpoint_answers_401_in_its_shape(guarded, path):
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"X-Api-Key": "key-one-and-more"},
                    {"Authorization": "key-one"}):
        r = httpx.post(f"{guarded.url}{path}", json=BODIES[path], headers=headers, timeout=30)
        assert r.status_code == 401 and shape_of(path, r.json()) == EXPECTED[path], (headers, r.text)
        assert "Authorization: Bearer KEY" in r.text


@pytest.mark.parametrize("headers", [{"Authorization": "Bearer key-one"}, {"authorization": "bearer key-two"},
                                     {"X-Api-Key": "key-two"}])
def test_either_header_with_any_key_is_let_in(guarded, headers):
    for path, body in BODIES.items():
        r = httpx.post(f"{guarded.url}{path}", json=body, headers=headers, timeout=30)
        assert r.status_code == 200, (path, r.text)


@pytest.mark.parametrize("keys", [("",), ("key-one", "  ")])
def test_an_empty_api_key_is_refused_at_start(keys):
    # `--api-key "$KEY"` with KEY unset would otherwise let an empty X-Api-Key header in.
    from codellama_hf.errors import UserInputError
    from codellama_hf.serving import ServeOptions

    with pytest.raises(UserInputError, match="an API key is empty"):
        ServeOptions(api_keys=keys)


def test_health_needs_no_key(guarded):
    assert httpx.get(f"{guarded.url}/health").json() == {"status": "ok", "model": "CodeLlama-7b-Instruct"}


def test_the_openai_client_sends_its_key(guarded):
    openai = pytest.importorskip("openai")
    good = openai.OpenAI(base_url=f"{guarded.url}/v1", api_key="key-one", max_retries=0)
    assert good.completions.create(model="m", prompt="x", max_tokens=1).choices
    bad = openai.OpenAI(base_url=f"{guarded.url}/v1", api_key="nope", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        bad.models.list()


@pytest.mark.parametrize("origin", ["http://localhost:5173", "https://localhost", "http://127.0.0.1:8000",
                                    "http://[::1]:3000"])
def test_cors_admits_local_origins(guarded, origin):
    r = httpx.options(f"{guarded.url}/v1/completions", headers={
        "Origin": origin, "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization,content-type"})
    assert r.status_code == 200 and r.headers["access-control-allow-origin"] == origin
    r = httpx.get(f"{guarded.url}/health", headers={"Origin": origin})
    assert r.headers["access-control-allow-origin"] == origin


@pytest.mark.parametrize("origin", ["http://localhost.evil.com", "http://evil.com", "http://localhost:8000.evil.com",
                                    "http://127.0.0.1.nip.io", "null", "http://evil.com/http://localhost"])
def test_cors_refuses_other_origins(guarded, origin):
    r = httpx.options(f"{guarded.url}/v1/completions", headers={"Origin": origin,
                                                                "Access-Control-Request-Method": "POST"})
    assert r.status_code == 400 and "access-control-allow-origin" not in r.headers
    r = httpx.post(f"{guarded.url}/v1/completions", json=BODIES["/v1/completions"],
                   headers={"Origin": origin, "Authorization": "Bearer key-one"})
    assert "access-control-allow-origin" not in r.headers


@pytest.mark.parametrize("path", list(BODIES))
def test_a_body_over_the_limit_gets_413_in_its_shape(guarded, path):
    big = {**BODIES[path], "padding": "x" * LIMIT}
    r = httpx.post(f"{guarded.url}{path}", json=big, headers={"X-Api-Key": "key-one"}, timeout=30)
    assert r.status_code == 413 and shape_of(path, r.json()) == EXPECTED[path] and "--max-body-bytes" in r.text


def test_a_chunked_body_over_the_limit_gets_413(guarded):
    def chunks():
        yield b'{"prompt": "'
        for _ in range(8):
            yield b"x" * 512
        yield b'"}'

    r = httpx.post(f"{guarded.url}/v1/completions", content=chunks(), timeout=30,
                   headers={"X-Api-Key": "key-one", "Content-Type": "application/json"})
    assert r.status_code == 413


def test_no_request_names_a_model_or_a_path(guarded, tmp_path):
    r = httpx.post(f"{guarded.url}/v1/completions", json={"model": str(tmp_path / "other-model"), "prompt": "x",
                                                          "max_tokens": 1}, headers={"X-Api-Key": "key-one"})
    assert r.status_code == 200 and r.json()["model"] == "CodeLlama-7b-Instruct"


# ----- defaults and the loading gate ----------------------------------------------------------------------------

def test_cors_is_off_by_default(server):
    r = httpx.options(f"{server.url}/v1/completions", headers={"Origin": "http://localhost:3000",
                                                               "Access-Control-Request-Method": "POST"})
    assert "access-control-allow-origin" not in r.headers
    r = httpx.get(f"{server.url}/health", headers={"Origin": "http://localhost:3000"})
    assert "access-control-allow-origin" not in r.headers


def test_every_endpoint_answers_503_while_the_model_loads(instruct_folder):
    release = threading.Event()
    load = loader(instruct_folder)

    def slow_load():
        release.wait(60)
        return load()

    live = start_server(slow_load, ready=False)
    try:
        r = httpx.get(f"{live.url}/health")
        assert r.status_code == 503 and r.json() == {"status": "loading"}
        for path, body in BODIES.items():
            r = httpx.post(f"{live.url}{path}", json=body, timeout=30)
            assert r.status_code == 503 and shape_of(path, r.json()) == EXPECTED[path], r.text
            assert r.headers["retry-after"] == "5"
        assert httpx.get(f"{live.url}/v1/models").status_code == 503
        release.set()
        for _ in range(500):
            if httpx.get(f"{live.url}/health").status_code == 200:
                break
            threading.Event().wait(0.02)
        assert httpx.post(f"{live.url}/v1/completions", json=BODIES["/v1/completions"]).status_code == 200
    finally:
        release.set()
        live.stop()


def test_a_model_that_fails_to_load_says_why(tmp_path):
    from codellama_hf.serving import load_service

    live = start_server(lambda: load_service(tmp_path / "missing"), ready=False)
    try:
        for _ in range(500):
            if live.app.state.load_error:
                break
            threading.Event().wait(0.02)
        r = httpx.get(f"{live.url}/health")
        assert r.status_code == 500 and "is not a converted model folder" in r.json()["error"]
        r = httpx.post(f"{live.url}/infill", json=BODIES["/infill"])
        assert r.status_code == 500 and "failed to load" in r.json()["error"]["message"]
    finally:
        live.stop()


# ----- Host on a loopback address (DNS rebinding: a page on evil.example whose name now points at 127.0.0.1) -----

@pytest.mark.parametrize("host", ["localhost", "localhost:8080", "127.0.0.1:1", "[::1]", "[::1]:8080", "LOCALHOST"])
def test_local_host_names_are_admitted_on_loopback(server, host):
    assert httpx.get(f"{server.url}/health", headers={"Host": host}).status_code == 200


@pytest.mark.parametrize("path", [*BODIES, "/health", "/api/generate"])
@pytest.mark.parametrize("host", ["evil.example", "evil.example:8080", "localhost.evil.example", "127.0.0.2",
                                  "[::2]"])
def test_other_host_names_get_403_in_the_endpoints_shape(server, path, host):
    r = httpx.post(f"{server.url}{path}", json=BODIES.get(path, {"prompt": "x"}), headers={"Host": host}, timeout=30)
    assert r.status_code == 403, r.text
    words = r.text
    assert "--allowed-hosts" in words and "DNS rebinding" in words
    if path in BODIES:
        assert shape_of(path, r.json()) == EXPECTED[path]


def never_loads():
    threading.Event().wait(60)


@pytest.mark.parametrize("allowed, host, status", [(("my.box",), "my.box:8080", 503),
                                                   (("my.box",), "evil.example", 403),
                                                   (("*",), "evil.example", 503)])
def test_allowed_hosts_admit_more_names(allowed, host, status):
    live = start_server(never_loads, ready=False, allowed_hosts=allowed)
    try:
        r = httpx.post(f"{live.url}/v1/completions", json={"prompt": "x"}, headers={"Host": host}, timeout=30)
        assert r.status_code == status  # 503: past the Host check, at the loading gate
    finally:
        live.stop()


def test_the_cli_passes_allowed_hosts_and_the_openapi_switch(monkeypatch, tmp_path):
    import codellama_hf.serving as serving
    import codellama_hf_cli

    seen = {}
    monkeypatch.setattr(serving, "serve", lambda model_dir, *, options, **kwargs: seen.update(options=options))
    argv = ["serve", str(tmp_path), "--allowed-hosts", "my.box", "--allowed-hosts", "other.box", "--no-openapi"]
    assert codellama_hf_cli.main(argv) == 0
    assert seen["options"].allowed_hosts == ("my.box", "other.box") and seen["options"].openapi is False
    assert codellama_hf_cli.main(["serve", str(tmp_path)]) == 0
    assert seen["options"].allowed_hosts == () and seen["options"].openapi is True
