"""What a variant can do comes from its CodeLlamaConfig: no infilling, no chat, or 70b-Instruct's Source:/<step>
turns."""

from __future__ import annotations

import httpx
import pytest

from codellama_hf.variants import INFILLING_VARIANTS
from codellama_hf.serving import load_service
from codellama_hf.serving.protocol import ServingError
from codellama_hf.tokenization import INSTRUCT_VARIANTS
from tests.fixtures_tokenizer import MetaReference

from .conftest import KV_CACHE_TOKENS, loader, start_server


@pytest.fixture(scope="module")
def python_server(converted_checkpoint):
    live = start_server(loader(converted_checkpoint("CodeLlama-7b-Python")))
    yield live
    live.stop()


def test_infill_on_a_variant_without_infilling_is_501_naming_those_with_it(python_server):
    r = httpx.post(f"{python_server.url}/infill", json={"input_prefix": "a", "input_suffix": "b"})
    assert r.status_code == 501 and r.json()["error"]["type"] == "not_supported_error"
    assert r.json()["error"]["message"].startswith("CodeLlama-7b-Python was not trained for infilling")
    assert ", ".join(INFILLING_VARIANTS) in r.json()["error"]["message"]


def test_suffix_on_a_variant_without_infilling_is_400(python_server):
    r = httpx.post(f"{python_server.url}/v1/completions", json={"prompt": "a", "suffix": "b"})
    error = r.json()["error"]
    assert r.status_code == 400 and error["param"] == "suffix" and "not trained for infilling" in error["message"]


def test_the_template_on_a_variant_without_infilling_is_400(python_server):
    r = httpx.post(f"{python_server.url}/completion", json={"prompt": "<PRE> a <SUF>b <MID>"})
    assert r.status_code == 400 and "not trained for infilling" in r.json()["error"]["message"]


def test_chat_on_a_variant_that_does_not_chat_is_400_naming_the_instruct_variants(python_server):
    r = httpx.post(f"{python_server.url}/v1/chat/completions", json={"messages": [{"role": "user", "content": "hi"}]})
    error = r.json()["error"]
    assert r.status_code == 400 and error["param"] == "messages"
    assert error["message"].startswith("CodeLlama-7b-Python is not an Instruct variant")
    assert ", ".join(INSTRUCT_VARIANTS) in error["message"]


def test_plain_completion_still_works_there(python_server):
    r = httpx.post(f"{python_server.url}/v1/completions", json={"prompt": "def f(", "max_tokens": 3})
    assert r.status_code == 200 and r.json()["model"] == "CodeLlama-7b-Python"


def test_70b_instruct_chats_in_source_step_turns_and_stops_at_step(converted_checkpoint):
    folder = converted_checkpoint("CodeLlama-70b-Instruct")
    service = load_service(folder, engine="continuous", kv_cache_tokens=KV_CACHE_TOKENS)
    try:
        meta = MetaReference(folder / "tokenizer.model")
        chat = [{"role": "system", "content": "Answer in Python."}, {"role": "user", "content": "Sort a list."}]
        assert service.chat_ids(chat) == meta.chat_step(chat)
        assert meta.step_id in service.request(service.chat_ids(chat), max_new_tokens=4, decode="chat").stop_ids
        with pytest.raises(ServingError, match="not trained for infilling") as err:  # it has the pieces, not the skill
            service.infill_ids("a", "b")
        assert err.value.kind == "unsupported"
    finally:
        service.engine.stop()
