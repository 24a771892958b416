"""vLLM on converted folders (the vLLM lane: .ci/vllm-lane, a venv of its own): fp32 greedy ids equal to
Transformers' `generate` through the plugin, through trust_remote_code and for a `--format llama` folder; and
vLLM's chat (`LLM.chat`) giving the prompt ids our apply_chat_template gives, for both chat formats."""

from __future__ import annotations

import pytest

from tests.fixtures_tokenizer import stdlib_snippets
from tests.fixtures_vllm import assert_same_greedy, hf_greedy, run_scenario

pytest.importorskip("vllm")
pytestmark = pytest.mark.vllm

MAX_TOKENS = 24


@pytest.fixture(scope="module")
def prompts(vllm_folders):
    """Meta's ids: plain code and an infilling prompt, built by our tokenizer."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(vllm_folders["inst"])
    snippets = [s[:200] for s in stdlib_snippets(3, seed=7)]
    return [tok.encode(s) for s in snippets] + [tok.infilling_prompt_ids(snippets[0][:80], snippets[1][:80])]


@pytest.fixture(scope="module")
def reference(vllm_folders, prompts):
    return hf_greedy(vllm_folders["inst"], prompts, MAX_TOKENS)


@pytest.mark.parametrize("path", ["plugin", "trust_remote_code", "format_llama"])
def test_greedy_ids_equal_transformers_generate(vllm_folders, prompts, reference, path):
    """plugin: vLLM's own Llama through our entry point; trust_remote_code: plugins off, vLLM's Transformers
    backend running our remote code; format_llama: a stock Llama folder, no plugin needed."""
    folder = vllm_folders["llama" if path == "format_llama" else "inst"]
    llm, env = {}, {}
    if path == "trust_remote_code":
        llm = dict(trust_remote_code=True, model_impl="transformers")
        env = {"VLLM_PLUGINS": "none-of-ours"}  # only the plugins named here load: not ours
    if path == "format_llama":  # the same Meta weights, converted the stock way: the reference must agree first
        assert hf_greedy(folder, prompts, MAX_TOKENS) == reference
    got = run_scenario("offline", folder=str(folder), prompts=prompts, max_tokens=MAX_TOKENS, llm=llm, env=env)
    for ids, ref in zip(got["ids"], reference):
        assert_same_greedy(ids, ref)


def test_chat_prompt_ids_equal_ours_for_both_formats(vllm_folders):
    from transformers import AutoTokenizer

    chats = [[{"role": "user", "content": "Write a function that sorts a list."}],
             [{"role": "system", "content": "Answer in Python."}, {"role": "user", "content": "def f(x):"},
              {"role": "assistant", "content": " return x"}, {"role": "user", "content": "Add a docstring."}]]
    for fmt in ("inst", "step"):
        folder = vllm_folders[fmt]
        tok = AutoTokenizer.from_pretrained(folder)
        assert tok.chat_format == fmt
        ours = [tok.apply_chat_template(c, add_generation_prompt=True, return_dict=False) for c in chats]
        got = run_scenario("offline", folder=str(folder), prompts=[], max_tokens=1, chats=chats)
        assert got["chat_prompt_ids"] == ours
        if fmt == "step":
            assert tok.control_token_ids["step_token_id"] in ours[1]
