"""llama.cpp's /infill (llama.vim, llama.vscode) and /completion (Continue, Tabby, Twinny), with httpx."""

from __future__ import annotations

import httpx
import pytest

from codellama_hf.serving.prompts import SNIPPET_SEPARATOR

from .conftest import reference_greedy, sse_events

PREFIX, SUFFIX, CURSOR = "def add(a, b):\n", "\n    return total\n", "    total"


def post(server, path, body, **kwargs):
    return httpx.post(f"{server.url}{path}", json=body, timeout=60, **kwargs)


def test_infill_builds_metas_prompt_and_answers_llamacpps_fields(server, submitted, meta):
    r = post(server, "/infill", {"input_prefix": PREFIX, "input_suffix": SUFFIX, "prompt": CURSOR, "n_predict": 8,
                                 "temperature": 0})
    body = r.json()
    ids = meta.infilling_prompt(PREFIX + CURSOR, SUFFIX)  # the text at the cursor continues the prefix
    assert r.status_code == 200 and list(submitted[-1].prompt_ids) == ids
    assert body["content"] == meta.decode_infilling(reference_greedy(server.service, ids, 8))
    assert body["stop"] is True and body["stop_type"] in ("eos", "limit") and body["tokens_evaluated"] == len(ids)
    assert {"prompt_n", "prompt_ms", "predicted_n", "predicted_ms", "predicted_per_second"} <= set(body["timings"])


def test_infill_puts_extra_context_before_the_prefix(server, submitted, meta):
    extra = [{"filename": "util.py", "text": "def helper():\n    pass\n", "time": [1, 2]}, {"text": "X = 1\n"}]
    post(server, "/infill", {"input_prefix": PREFIX, "input_suffix": SUFFIX, "input_extra": extra, "n_predict": 2})
    text = SNIPPET_SEPARATOR + extra[0]["text"] + SNIPPET_SEPARATOR + extra[1]["text"]
    assert list(submitted[-1].prompt_ids) == meta.infilling_prompt(text + PREFIX, SUFFIX)


def test_infill_streams_the_same_content(server):
    body = {"input_prefix": PREFIX, "input_suffix": SUFFIX, "n_predict": 10, "temperature": 0}
    whole = post(server, "/infill", body).json()["content"]
    with httpx.stream("POST", f"{server.url}/infill", json={**body, "stream": True}, timeout=60) as r:
        events = sse_events(r.iter_lines())
    assert "".join(e["content"] for e in events) == whole
    assert events[-1]["stop"] is True and all(e["stop"] is False for e in events[:-1])


def test_response_fields_flatten_as_llama_vim_reads_them(server):
    r = post(server, "/infill", {"input_prefix": PREFIX, "input_suffix": SUFFIX, "n_predict": 2,
                                 "response_fields": ["content", "timings/prompt_n", "truncated"]})
    assert set(r.json()) == {"content", "timings/prompt_n", "truncated"}


def test_a_zero_token_request_warms_nothing_up(server, submitted):
    r = post(server, "/infill", {"input_prefix": "", "input_suffix": "", "input_extra": [{"text": "x"}],
                                 "n_predict": 0, "temperature": 0.0, "samplers": []})
    assert r.status_code == 200 and r.json()["content"] == "" and submitted == []


@pytest.mark.parametrize("suffix_first", [False, True])
def test_completion_turns_the_literal_template_into_metas_ids(server, submitted, meta, suffix_first):
    prompt = (f"<PRE> <SUF>{SUFFIX} <MID> {PREFIX}" if suffix_first else f"<PRE> {PREFIX} <SUF>{SUFFIX} <MID>")
    r = post(server, "/completion", {"prompt": prompt, "n_predict": 8, "temperature": 0,
                                     "stop": ["<PRE>", "<SUF>", "<MID>", "<EOT>"]})
    ids = meta.infilling_prompt(PREFIX, SUFFIX, suffix_first=suffix_first)
    assert list(submitted[-1].prompt_ids) == ids
    assert meta.eot_id in submitted[-1].stop_ids  # generation stops at EOT
    want = meta.decode_infilling(reference_greedy(server.service, ids, 8))
    assert r.json()["content"] == want.split("<EOT>")[0]


def test_completion_without_markers_is_a_plain_prompt(server, submitted):
    post(server, "/completion", {"prompt": "import os\n", "n_predict": 2})
    assert list(submitted[-1].prompt_ids) == server.service.tokenizer.encode("import os\n")


def test_completion_streams_for_continue(server):
    # Continue's llama.cpp provider: stream true, reads each event's `content`
    body = {"prompt": f"<PRE> {PREFIX} <SUF>{SUFFIX} <MID>", "n_predict": 12, "temperature": 0, "stream": True,
            "top_k": 40, "min_p": None, "model": "codellama"}
    with httpx.stream("POST", f"{server.url}/completion", json=body, timeout=60,
                      headers={"Authorization": "Bearer undefined"}) as r:
        events = sse_events(r.iter_lines())
    whole = post(server, "/completion", {**body, "stream": False}).json()["content"]
    assert r.status_code == 200 and "".join(e["content"] for e in events) == whole


def test_ignore_eos_generates_the_whole_budget(server, submitted):
    r = post(server, "/completion", {"prompt": "x", "n_predict": 20, "ignore_eos": True, "temperature": 0})
    assert r.json()["tokens_predicted"] == 20 and submitted[-1].stop_ids == frozenset()


# ----- errors ---------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("body, words", [
    ({"input_suffix": "x"}, "input_prefix: Field required"),
    ({"input_prefix": "x"}, "input_suffix: Field required"),
    ({"input_prefix": 3, "input_suffix": "x"}, "input_prefix: Input should be a valid string"),
    ({"input_prefix": "x", "input_suffix": ["y"]}, "input_suffix: Input should be a valid string"),
    ({"input_prefix": "x", "input_suffix": "y", "input_extra": {"text": "z"}}, "input_extra must be an array"),
    ({"input_prefix": "x", "input_suffix": "y", "input_extra": [{"filename": "a.py"}]}, "needs a string \"text\""),
    ({"input_prefix": "x", "input_suffix": "y", "input_extra": [{"text": "z", "filename": 1}]},
     "filename must be a string"),
    ({"input_prefix": "x", "input_suffix": "y", "n_predict": -2}, "n_predict: Input should be greater than or equal"),
    ({"input_prefix": "x", "input_suffix": "y", "temperature": -0.5}, "temperature: Input should be greater"),
])
def test_bad_infill_requests_get_400_in_llamacpps_shape(server, body, words):
    r = post(server, "/infill", body)
    assert r.status_code == 400 and words in r.json()["error"]["message"], r.text
    assert r.json() == {"error": {"code": 400, "message": r.json()["error"]["message"],
                                  "type": "invalid_request_error"}}


@pytest.mark.parametrize("prompt, words", [("<PRE> a <SUF> b <MID> <MID>", "<MID> x2"),
                                           ("<PRE> a <SUF> b <MID> more", "text after <MID>")])
def test_a_broken_template_gets_400(server, prompt, words):
    r = post(server, "/completion", {"prompt": prompt})
    assert r.status_code == 400 and words in r.json()["error"]["message"]


def test_a_token_id_prompt_is_refused(server):
    r = post(server, "/completion", {"prompt": [1, 32007, 5]})
    assert r.status_code == 400 and "prompt: Value error, must be a string" in r.json()["error"]["message"]
