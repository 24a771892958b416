"""TGI's /generate and /generate_stream (llm-ls), and the model card's /score, with httpx."""

from __future__ import annotations

import httpx
import pytest

from .conftest import reference_greedy, sse_events


def post(server, path, body):
    return httpx.post(f"{server.url}{path}", json=body, timeout=60)


def greedy_text(server, prompt: str, n: int) -> str:
    service = server.service
    return service.tokenizer.decode_infilling(reference_greedy(service, service.plain_ids(prompt), n),
                                              stop_at_eot=False)


# ----- TGI ------------------------------------------------------------------------------------------------------

def test_generate_answers_the_greedy_continuation_with_details(server, submitted):
    r = post(server, "/generate", {"inputs": "def fib(n):", "parameters": {"max_new_tokens": 8}})
    body = r.json()
    assert r.status_code == 200 and body["generated_text"] == greedy_text(server, "def fib(n):", 8)
    assert body["details"]["finish_reason"] in ("length", "eos_token")
    assert body["details"]["generated_tokens"] >= 1 and submitted[-1].sampling.greedy
    full = post(server, "/generate", {"inputs": "def fib(n):",
                                      "parameters": {"max_new_tokens": 8, "return_full_text": True}}).json()
    assert full["generated_text"] == "def fib(n):" + body["generated_text"]


def test_llm_ls_request_body(server):
    # what llm-ls sends for backend "tgi": its request_body plus inputs and return_full_text false
    body = {"inputs": "import os\n", "parameters": {"max_new_tokens": 6, "temperature": 0.2, "do_sample": True,
                                                   "top_p": 0.95, "return_full_text": False}}
    r = post(server, "/generate", body)
    assert r.status_code == 200 and isinstance(r.json()["generated_text"], str)


def test_generate_stream_sends_token_events_then_the_text(server):
    body = {"inputs": "class Stack:", "parameters": {"max_new_tokens": 8}}
    with httpx.stream("POST", f"{server.url}/generate_stream", json=body, timeout=60) as r:
        events = sse_events(r.iter_lines())
    *tokens, last = events
    assert all(e["generated_text"] is None and "id" in e["token"] for e in tokens) and len(tokens) >= 2
    assert last["generated_text"] == "".join(e["token"]["text"] for e in events)
    assert last["generated_text"] == post(server, "/generate", body).json()["generated_text"]
    assert last["details"]["generated_tokens"] >= 1


def test_a_stop_sequence_ends_with_it_as_tgi_does(server):
    full = post(server, "/generate", {"inputs": "def f(x):", "parameters": {"max_new_tokens": 12}}).json()
    stop = full["generated_text"][3:5]
    r = post(server, "/generate", {"inputs": "def f(x):", "parameters": {"max_new_tokens": 12, "stop": [stop]}})
    text = full["generated_text"]
    assert r.json()["generated_text"] == text[:text.index(stop)] + stop
    assert r.json()["details"]["finish_reason"] == "stop_sequence"


@pytest.mark.parametrize("parameters, words", [
    ({"temperature": 0}, "parameters.temperature: Input should be greater than 0"),
    ({"top_p": 1.0}, "parameters.top_p: Input should be less than 1"),
    ({"max_new_tokens": 0}, "parameters.max_new_tokens: Input should be greater than or equal to 1"),
    ({"stop": ["a", "b", "c", "d", "e"]}, "parameters.stop: List should have at most 4 items"),
])
def test_tgi_validation_errors_are_422(server, parameters, words):
    r = post(server, "/generate", {"inputs": "x", "parameters": parameters})
    assert r.status_code == 422 and r.json() == {"error": r.json()["error"], "error_type": "validation"}
    assert words in r.json()["error"]


def test_a_rendered_chat_as_inputs_is_refused_naming_the_fix(server):
    r = post(server, "/generate", {"inputs": "<s>[INST] x [/INST]", "parameters": {}})
    assert r.status_code == 422 and "inputs '<s>[INST] x [/INST]'... starts like" in r.json()["error"]
    assert "/v1/chat/completions" in r.json()["error"] and post(server, "/generate", {"inputs": "x"}).status_code == 200


def test_missing_inputs_is_422(server):
    r = post(server, "/generate_stream", {"parameters": {}})
    assert r.status_code == 422 and r.json()["error"].startswith("inputs: Field required")


# ----- the model card's /score ----------------------------------------------------------------------------------

MODEL_CARD_REQUEST = {"input_data": {"input_string": ["def fibonacci("],
                                     "parameters": {"top_p": 0.9, "temperature": 0.2, "do_sample": True,
                                                    "max_new_tokens": 200}}}


def test_the_model_cards_sample_request(server, submitted):
    r = post(server, "/score", MODEL_CARD_REQUEST)
    body = r.json()
    assert r.status_code == 200 and isinstance(body, list) and len(body) == 1 and list(body[0]) == ["0"]
    assert body[0]["0"].startswith("def fibonacci(")
    s = submitted[-1].sampling
    assert (s.temperature, s.top_p, submitted[-1].max_new_tokens) == (0.2, 0.9, 200)


def test_score_answers_one_object_per_input_and_takes_parameters_beside(server):
    body = {"input_data": {"input_string": ["def a(", "class B:"]}, "parameters": {"max_new_tokens": 6}}
    out = post(server, "/score", body).json()
    assert out == [{"0": "def a(" + greedy_text(server, "def a(", 6)},
                   {"1": "class B:" + greedy_text(server, "class B:", 6)}]


@pytest.mark.parametrize("body, words", [
    ({"input_data": {"input_string": "def f("}}, "input_data.input_string: Input should be a valid list"),
    ({"input_data": {"input_string": []}}, "input_data.input_string: List should have at least 1 item"),
    ({"input_string": ["x"]}, "input_data: Field required"),
    ({"input_data": {"input_string": ["x"], "parameters": {"top_p": 0}}}, "top_p: Input should be greater than 0"),
    ({"input_data": {"input_string": ["<s>[INST] x [/INST]"]}}, "input_string '<s>[INST] x [/INST]'... starts like"),
])
def test_score_errors_name_the_field(server, body, words):
    r = post(server, "/score", body)
    assert r.status_code == 400 and words in r.json()["error"]["message"]
    assert r.json()["error"]["code"] == "BadArgument"
