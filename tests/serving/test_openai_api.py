"""OpenAI's /v1/completions, /v1/chat/completions and /v1/models, with the official `openai` client."""

from __future__ import annotations

import httpx
import pytest

from .conftest import reference_greedy, sse_events

openai = pytest.importorskip("openai")

PREFIX, SUFFIX = 'def remove_non_ascii(s: str) -> str:\n    """ ', "\n    return result\n"


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0, timeout=60)


def test_models_lists_the_one_variant(client, server):
    assert [m.id for m in client.models.list()] == ["CodeLlama-7b-Instruct"]


def test_a_completion_is_greedy_generate(client, server, submitted):
    out = client.completions.create(model="anything", prompt="def fibonacci(n):", max_tokens=8, temperature=0)
    ids = server.service.plain_ids("def fibonacci(n):")
    assert list(submitted[-1].prompt_ids) == ids
    want = reference_greedy(server.service, ids, 8)
    assert out.choices[0].text == server.service.tokenizer.decode_infilling(want, stop_at_eot=False)
    assert out.choices[0].finish_reason in ("length", "stop") and out.model == "CodeLlama-7b-Instruct"
    assert out.usage.prompt_tokens == len(ids) and out.usage.completion_tokens >= len(want)


def test_suffix_is_real_infilling_with_metas_ids(client, server, submitted, meta):
    out = client.completions.create(model="m", prompt=PREFIX, suffix=SUFFIX, max_tokens=10, temperature=0)
    assert list(submitted[-1].prompt_ids) == meta.infilling_prompt(PREFIX, SUFFIX)
    want = reference_greedy(server.service, meta.infilling_prompt(PREFIX, SUFFIX), 10)
    assert out.choices[0].text == meta.decode_infilling(want)  # the middle only: the suffix is not appended
    assert {meta.eot_id, meta.eos_id} <= submitted[-1].stop_ids


def test_text_in_a_prompt_never_becomes_control_ids(client, server, submitted, meta):
    client.completions.create(model="m", prompt="<PRE> x <SUF>y <MID>", max_tokens=1, temperature=0)
    ids = list(submitted[-1].prompt_ids)
    assert ids == server.service.tokenizer.encode("<PRE> x <SUF>y <MID>")
    assert not {meta.prefix_id, meta.suffix_id, meta.middle_id} & set(ids)


def test_streaming_gives_the_same_text_in_chunks(client):
    whole = client.completions.create(model="m", prompt=PREFIX, suffix=SUFFIX, max_tokens=12, temperature=0)
    chunks = list(client.completions.create(model="m", prompt=PREFIX, suffix=SUFFIX, max_tokens=12, temperature=0,
                                            stream=True, stream_options={"include_usage": True}))
    texts = [c.choices[0].text for c in chunks if c.choices]
    assert "".join(texts) == whole.choices[0].text and len(texts) > 2
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == whole.choices[0].finish_reason
    assert chunks[-1].usage.completion_tokens == whole.usage.completion_tokens


def test_the_stream_ends_with_done(server):
    with httpx.stream("POST", f"{server.url}/v1/completions", json={"prompt": "x", "max_tokens": 3, "stream": True},
                      timeout=60) as r:
        events = sse_events(r.iter_lines())
    assert r.headers["content-type"].startswith("text/event-stream") and events[-1] == "[DONE]"


def test_prompt_lists_n_and_echo(client):
    out = client.completions.create(model="m", prompt=["def a(", "class B"], n=2, max_tokens=4, temperature=0,
                                    echo=True)
    texts = [c.text for c in sorted(out.choices, key=lambda c: c.index)]
    assert len(texts) == 4 and texts[0] == texts[1] and texts[2] == texts[3]  # greedy: n copies agree
    assert texts[0].startswith("def a(") and texts[2].startswith("class B")


def test_a_stop_string_truncates_and_the_request_ends(client, server):
    full = client.completions.create(model="m", prompt="def f(x):", max_tokens=12, temperature=0).choices[0].text
    stop = full[4:6]
    assert stop and full.index(stop) >= 1
    out = client.completions.create(model="m", prompt="def f(x):", max_tokens=12, temperature=0, stop=[stop])
    assert out.choices[0].text == full[:full.index(stop)] and out.choices[0].finish_reason == "stop"
    assert server.service.engine.in_flight == 0


def test_a_seed_repeats_a_sampled_completion(client):
    texts = {client.completions.create(model="m", prompt="def f(x):", max_tokens=8, temperature=0.9,
                                       seed=7).choices[0].text for _ in range(2)}
    assert len(texts) == 1


def test_chat_uses_metas_inst_prompt(client, server, submitted, meta):
    messages = [{"role": "system", "content": "Answer in Python."}, {"role": "user", "content": "Sort a list."}]
    out = client.chat.completions.create(model="m", messages=messages, max_tokens=6, temperature=0)
    assert list(submitted[-1].prompt_ids) == meta.chat_inst(messages)
    want = reference_greedy(server.service, meta.chat_inst(messages), 6)
    assert out.choices[0].message.content == server.service.tokenizer.decode(want, skip_special_tokens=True)
    assert out.choices[0].message.role == "assistant"


def test_chat_streams(client):
    messages = [{"role": "user", "content": [{"type": "text", "text": "Sort a list."}]}]
    whole = client.chat.completions.create(model="m", messages=messages, max_tokens=8, temperature=0)
    chunks = list(client.chat.completions.create(model="m", messages=messages, max_tokens=8, temperature=0,
                                                 stream=True))
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == whole.choices[0].message.content


# ----- errors: one line naming the field, the server keeps serving -----------------------------------------------

@pytest.mark.parametrize("body, param, words", [
    ({"prompt": "x", "temperature": -1}, "temperature", "greater than or equal to 0"),
    ({"prompt": "x", "max_tokens": -3}, "max_tokens", "greater than or equal to 0"),
    ({"prompt": "x", "n": 9}, "n", "less than or equal to 8"),
    ({"prompt": "x", "top_p": 1.5}, "top_p", "less than or equal to 1"),
    ({"prompt": [1, 2, 3]}, "prompt", "token-id prompts are not accepted"),
    ({"prompt": "x", "stop": ["a", "b", "c", "d", "e"]}, "stop", "at most 4 stop sequences"),
    ({"prompt": "x", "max_tokens": "lots"}, "max_tokens", "valid integer"),
    ({"messages": []}, "messages", "at least 1 item"),
    ({"prompt": "<s>[INST] hi [/INST]"}, "prompt", "send the messages to /v1/chat/completions"),
])
def test_bad_values_get_400_naming_the_field(server, body, param, words):
    path = "/v1/chat/completions" if "messages" in body else "/v1/completions"
    r = httpx.post(f"{server.url}{path}", json=body, timeout=30)
    error = r.json()["error"]
    assert r.status_code == 400 and error["param"] == param and words in error["message"], r.text
    assert error["type"] == "invalid_request_error" and set(error) == {"message", "type", "param", "code"}


def test_malformed_json_gets_400(server):
    r = httpx.post(f"{server.url}/v1/completions", content=b'{"prompt": "x",', timeout=30,
                   headers={"Content-Type": "application/json"})
    assert r.status_code == 400 and "not valid JSON" in r.json()["error"]["message"]


def test_the_official_client_raises_on_a_bad_request(client):
    with pytest.raises(openai.BadRequestError, match="temperature"):
        client.completions.create(model="m", prompt="x", temperature=3)


def test_a_prompt_over_the_context_is_refused_before_streaming(server):
    long_prompt = "x = 1\n" * 6000
    r = httpx.post(f"{server.url}/v1/completions", json={"prompt": long_prompt, "stream": True}, timeout=60)
    assert r.status_code == 400 and r.headers["content-type"] == "application/json"
    assert "context is 16384" in r.json()["error"]["message"] and r.json()["error"]["param"] == "prompt"
    r = httpx.post(f"{server.url}/v1/completions", json={"prompt": "x", "max_tokens": 2}, timeout=60)
    assert r.status_code == 200  # still serving


def test_special_tags_in_a_chat_are_refused(client):
    with pytest.raises(openai.BadRequestError, match=r"\[INST\]"):
        client.chat.completions.create(model="m", messages=[{"role": "user", "content": "[INST] hi"}])
