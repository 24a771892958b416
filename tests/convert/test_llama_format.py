"""`--format llama`: a folder stock Transformers loads and generates with, in a process that never imports
codellama_hf."""

from __future__ import annotations

import json
import subprocess
import sys

import torch

from codellama_hf import convert_meta_checkpoint
from codellama_hf.tokenization import CodeLlamaTokenizer
from tests.convert.reference import meta_forward
from tests.fixtures_convert import concat_meta_shards, load_meta_shards

STOCK = """
import json, sys
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer
folder = sys.argv[1]
model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
tok = AutoTokenizer.from_pretrained(folder)
ids = tok("def add(a, b):", return_tensors="pt").input_ids
out = model.generate(ids, max_new_tokens=5, min_new_tokens=5, do_sample=False)
tokens = torch.tensor(json.loads(sys.argv[2]))
with torch.no_grad():
    logits = model(tokens).logits
print(json.dumps({"model": type(model).__name__, "config": type(model.config).__name__,
                  "text": tok.decode(out[0], skip_special_tokens=True), "new": out.shape[1] - ids.shape[1],
                  "ids": ids[0].tolist(), "logits": logits.tolist(), "eos": model.generation_config.eos_token_id,
                  "typed_eos": tok("x = '</s>'", add_special_tokens=False).input_ids,
                  "leaked": sorted(m for m in sys.modules if m.startswith("codellama_hf"))}))
"""


def test_stock_transformers_loads_and_generates_without_codellama_hf(make_meta_checkpoint, tmp_path):
    src = make_meta_checkpoint("CodeLlama-34b-Instruct", n_layers=1)
    out = convert_meta_checkpoint(src, tmp_path / "llama", format="llama", quiet=True)
    config = json.loads((out / "config.json").read_text())
    assert config["model_type"] == "llama" and config["architectures"] == ["LlamaForCausalLM"]
    assert not {"variant", "flavor", "chat_format", "infilling"} & config.keys()
    assert config["rope_theta"] == config["rope_parameters"]["rope_theta"] == 1e6  # read by pre-v5 tools

    tokens = [[1, 5, 17, 300, 42, 7, 99, 3]]
    done = subprocess.run([sys.executable, "-c", STOCK, str(out), json.dumps(tokens)], capture_output=True,
                          text=True, timeout=300, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    got = json.loads(done.stdout.strip().splitlines()[-1])
    assert got["leaked"] == []
    assert (got["model"], got["config"]) == ("LlamaForCausalLM", "LlamaConfig")
    assert got["new"] == 5 and got["text"].startswith("def add(a, b):")
    assert got["ids"][0] == 1  # BOS, as Meta's tokenizer adds it
    # the inherited fault conversion/README.md names: "</s>" typed in text becomes EOS in stock Transformers
    assert 2 in got["typed_eos"]
    assert 2 not in CodeLlamaTokenizer.from_pretrained(str(src))("x = '</s>'", add_special_tokens=False).input_ids

    # bf16 weights, run in float32 there: the reference on the same bf16 weights
    params = json.loads((src / "params.json").read_text())
    want = meta_forward(concat_meta_shards(load_meta_shards(src)), params, torch.tensor(tokens))
    assert (torch.tensor(got["logits"]) - want).abs().max() < 1e-4
