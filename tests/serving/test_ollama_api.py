"""Ollama's /api/generate (suffix = infilling), /api/chat, /api/tags, /api/show and /api/version, with the official
`ollama` client and with httpx for the wire format (NDJSON, status codes)."""

from __future__ import annotations

import json

import httpx
import pytest

from .conftest import reference_greedy

ollama = pytest.importorskip("ollama")

PREFIX, SUFFIX = 'def remove_non_ascii(s: str) -> str:\n    """ ', "\n    return result\n"
GREEDY = {"temperature": 0, "num_predict": 8}


@pytest.fixture(scope="module")
def client(server):
    return ollama.Client(host=server.url, timeout=60)


def test_generate_with_suffix_is_metas_infilling_prompt_and_answers_the_middle(client, server, submitted, meta):
    out = client.generate(model="codellama", prompt=PREFIX, suffix=SUFFIX, options=GREEDY)
    assert list(submitted[-1].prompt_ids) == meta.infilling_prompt(PREFIX, SUFFIX)
    assert {meta.eot_id, meta.eos_id} <= submitted[-1].stop_ids
    want = reference_greedy(server.service, meta.infilling_prompt(PREFIX, SUFFIX), 8)
    assert out.response == meta.decode_infilling(want) and out.done is True
    assert out.done_reason in ("stop", "length") and out.eval_count == len(want) + (out.done_reason == "stop")
    assert out.prompt_eval_count == len(meta.infilling_prompt(PREFIX, SUFFIX))
    assert out.total_duration >= out.eval_duration > 0 and out.load_duration == 0
    # raw does not change infilling: the same ids
    client.generate(model="codellama", prompt=PREFIX, suffix=SUFFIX, raw=True, options=GREEDY)
    assert submitted[-1].prompt_ids == submitted[-2].prompt_ids


def test_generate_streams_by_default_and_joins_to_the_same_text(client, server, submitted, meta):
    whole = client.generate(model="codellama", prompt=PREFIX, suffix=SUFFIX, options=GREEDY).response
    parts = list(client.generate(model="codellama", prompt=PREFIX, suffix=SUFFIX, options=GREEDY, stream=True))
    assert list(submitted[-1].prompt_ids) == meta.infilling_prompt(PREFIX, SUFFIX)
    assert [p.done for p in parts] == [False] * (len(parts) - 1) + [True] and parts[-1].done_reason
    assert "".join(p.response for p in parts) == whole and parts[-1].eval_count >= 1
    body = {"model": "x", "prompt": PREFIX, "suffix": SUFFIX, "options": GREEDY}  # no "stream": true by default
    with httpx.stream("POST", f"{server.url}/api/generate", json=body, timeout=60) as r:
        lines = [json.loads(line) for line in r.iter_lines() if line]
    assert r.headers["content-type"] == "application/x-ndjson" and len(lines) >= 2 and lines[-1]["done"] is True
    assert "".join(line["response"] for line in lines) == whole and lines[0]["model"] == "x"


def test_a_raw_prompt_is_plain_text_and_a_prompt_on_instruct_is_one_turn(client, server, submitted, meta):
    client.generate(model="codellama", prompt="def fib(n):", raw=True, options=GREEDY)
    assert list(submitted[-1].prompt_ids) == [meta.bos_id] + meta.encode("def fib(n):")
    client.generate(model="codellama", prompt="Write fib", system="Be brief", options=GREEDY)
    want = meta.chat_inst([{"role": "system", "content": "Be brief"}, {"role": "user", "content": "Write fib"}])
    assert list(submitted[-1].prompt_ids) == want


def test_twinnys_and_tabbys_template_in_prompt_is_metas_infilling_prompt(server, submitted, meta):
    # Twinny (FIM template "codellama") and Tabby (ollama/completion with a prompt_template) send the template as text
    body = {"model": "codellama:7b-code", "prompt": f"<PRE> {PREFIX} <SUF>{SUFFIX} <MID>", "stream": False,
            "options": GREEDY}
    r = httpx.post(f"{server.url}/api/generate", json=body, timeout=60)
    assert r.status_code == 200 and list(submitted[-1].prompt_ids) == meta.infilling_prompt(PREFIX, SUFFIX)
    want = reference_greedy(server.service, meta.infilling_prompt(PREFIX, SUFFIX), 8)
    assert r.json()["response"] == meta.decode_infilling(want)


def test_options_reach_the_request(client, submitted):
    client.generate(model="codellama", prompt="x", raw=True,
                    options={"temperature": 0.5, "top_p": 0.7, "top_k": 5, "seed": 3, "num_predict": 4,
                             "stop": ["\n\n"]})
    s, req = submitted[-1].sampling, submitted[-1]
    assert (s.temperature, s.top_p, s.top_k, s.seed, req.max_new_tokens, req.stop) == (0.5, 0.7, 5, 3, 4, ("\n\n",))


def test_chat_streamed_and_not(client, server, submitted, meta):
    messages = [{"role": "user", "content": "Write a function that adds two numbers"}]
    out = client.chat(model="codellama", messages=messages, options={"temperature": 0, "num_predict": 6})
    assert list(submitted[-1].prompt_ids) == meta.chat_inst(messages)
    want = reference_greedy(server.service, meta.chat_inst(messages), 6)
    assert out.message.role == "assistant" and out.message.content == meta.decode(want) and out.done
    parts = list(client.chat(model="codellama", messages=messages, stream=True,
                             options={"temperature": 0, "num_predict": 6}))
    assert "".join(p.message.content for p in parts) == out.message.content and parts[-1].done


def test_clients_find_the_model(client, server):
    listed = client.list().models
    assert [m.model for m in listed] == ["CodeLlama-7b-Instruct"] and listed[0].details.family == "llama"
    shown = client.show("CodeLlama-7b-Instruct")
    assert {"completion", "insert", "chat"} <= set(shown.capabilities)
    assert shown.modelinfo["llama.context_length"] == server.service.context_tokens
    version = httpx.get(f"{server.url}/api/version").json()["version"]
    assert all(part.isdigit() for part in version.split("."))


@pytest.mark.parametrize("body, status, words", [
    ({"prompt": "x", "options": {"temperature": -1}}, 400, "options.temperature"),
    ({"prompt": "x", "images": ["aGk="]}, 400, "images"),
    ({"prompt": "x", "format": "json"}, 400, "format"),
    ({"prompt": 3}, 400, "prompt"),
])
def test_errors_are_ollamas_shape(server, body, status, words):
    r = httpx.post(f"{server.url}/api/generate", json=body, timeout=60)
    assert r.status_code == status and list(r.json()) == ["error"] and words in r.json()["error"]


def test_the_client_raises_response_error_with_the_message(client):
    with pytest.raises(ollama.ResponseError) as e:
        client.generate(model="codellama", prompt="x", options={"top_p": 3})
    assert e.value.status_code == 400 and "options.top_p" in e.value.error


def test_a_variant_not_trained_for_infilling_refuses_suffix(converted_checkpoint):
    from .conftest import loader, start_server

    live = start_server(loader(converted_checkpoint("CodeLlama-7b-Python")))
    try:
        r = httpx.post(f"{live.url}/api/generate", json={"prompt": "a", "suffix": "b", "stream": False}, timeout=60)
        assert r.status_code == 400 and "not trained for infilling" in r.json()["error"]
        shown = httpx.post(f"{live.url}/api/show", json={"model": "x"}).json()
        assert "insert" not in shown["capabilities"] and "chat" not in shown["capabilities"]
    finally:
        live.stop()
