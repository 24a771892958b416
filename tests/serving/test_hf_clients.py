"""Hugging Face's clients unchanged: huggingface_hub's InferenceClient(base_url).text_generation (streamed and not,
with details), and the wire shapes of text_generation.Client (TGI's own client, which cannot share this environment:
it pins huggingface-hub < 1), which posts to TGI's POST / route. TGI's `inputs` is plain text, so the prompt ids to
match are Meta's plain encode."""

from __future__ import annotations

import httpx
import pytest

from .conftest import reference_greedy, sse_events

hub = pytest.importorskip("huggingface_hub")

PROMPT = "def fibonacci(n):"


@pytest.fixture(scope="module")
def client(server):
    return hub.InferenceClient(base_url=server.url, timeout=60)


def greedy(server, meta, n):
    ids = [meta.bos_id] + meta.encode(PROMPT)
    return ids, reference_greedy(server.service, ids, n)


def test_text_generation_is_greedy_on_metas_ids(client, server, submitted, meta):
    text = client.text_generation(PROMPT, max_new_tokens=8)
    ids, want = greedy(server, meta, 8)
    assert list(submitted[-1].prompt_ids) == ids and text == meta.decode_infilling(want)


def test_details_hold_every_generated_token(client, server, submitted, meta):
    out = client.text_generation(PROMPT, max_new_tokens=8, details=True, decoder_input_details=True)
    ids, want = greedy(server, meta, 8)
    d = out.details
    assert list(submitted[-1].prompt_ids) == ids and out.generated_text == meta.decode_infilling(want)
    assert d.generated_tokens == len(d.tokens) and [t.id for t in d.tokens][:len(want)] == want
    assert "".join(t.text for t in d.tokens) == out.generated_text
    assert [t.id for t in d.prefill] == ids and d.finish_reason in ("length", "eos_token")


def test_streaming_with_details_sends_one_event_per_generated_token(client, server, meta):
    events = list(client.text_generation(PROMPT, max_new_tokens=8, stream=True, details=True))
    _, want = greedy(server, meta, 8)
    assert events[-1].details.generated_tokens == len(events)  # TGI: the last token's event carries the details
    assert [e.token.id for e in events][:len(want)] == want
    assert events[-1].generated_text == "".join(e.token.text for e in events) == meta.decode_infilling(want)
    assert all(e.generated_text is None for e in events[:-1])
    assert "".join(client.text_generation(PROMPT, max_new_tokens=8, stream=True)) == events[-1].generated_text


def test_generate_stream_counts_match_with_a_stop_sequence(server):
    full = httpx.post(f"{server.url}/generate", json={"inputs": PROMPT, "parameters": {"max_new_tokens": 12}},
                      timeout=60).json()
    stop = full["generated_text"][3:5]
    body = {"inputs": PROMPT, "parameters": {"max_new_tokens": 12, "stop": [stop]}}
    with httpx.stream("POST", f"{server.url}/generate_stream", json=body, timeout=60) as r:
        events = sse_events(r.iter_lines())
    last = events[-1]
    assert last["details"]["generated_tokens"] == len(events) and last["details"]["finish_reason"] == "stop_sequence"
    text = last["generated_text"]
    assert "".join(e["token"]["text"] for e in events) == text and text.endswith(stop)


# ----- what text_generation.Client sends: POST / with its request.dict(); `stream` picks the answer ----------------

CLIENT_BODY = {"inputs": PROMPT, "stream": False,
               "parameters": {"best_of": None, "details": True, "decoder_input_details": False, "do_sample": False,
                              "max_new_tokens": 8, "repetition_penalty": None, "frequency_penalty": None,
                              "return_full_text": False, "seed": None, "stop": [], "temperature": None,
                              "top_k": None, "top_n_tokens": None, "top_p": None, "truncate": None,
                              "typical_p": None, "watermark": False, "grammar": None, "adapter_id": None}}


def test_text_generation_clients_generate_gets_a_one_item_list(server, submitted, meta):
    r = httpx.post(server.url + "/", json=CLIENT_BODY, timeout=60)
    ids, want = greedy(server, meta, 8)
    payload = r.json()
    assert r.status_code == 200 and isinstance(payload, list) and len(payload) == 1  # Response(**payload[0])
    assert payload[0]["generated_text"] == meta.decode_infilling(want) and list(submitted[-1].prompt_ids) == ids
    assert {"finish_reason", "generated_tokens", "seed", "prefill", "tokens"} <= set(payload[0]["details"])


@pytest.mark.parametrize("path", ["/", "/generate"])
def test_stream_true_streams_on_post_root_and_generate(server, path, meta):
    with httpx.stream("POST", server.url + path, json={**CLIENT_BODY, "stream": True}, timeout=60) as r:
        assert r.headers["content-type"].startswith("text/event-stream")
        events = sse_events(r.iter_lines())
    _, want = greedy(server, meta, 8)
    assert events[-1]["generated_text"] == meta.decode_infilling(want)
    assert events[-1]["details"]["generated_tokens"] == len(events)
