"""Converted folders load with trust_remote_code=True in processes that never import codellama_hf, and only then."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

FILES = ["configuration_codellama_hf.py", "modeling_codellama_hf.py", "tokenization_codellama_hf.py"]
CODE = "def fib(n):\n    return n if n < 2 else fib(n - 1) + fib(n - 2)  # <s> stays text\n"

# Runs in a fresh interpreter that never imports codellama_hf itself (only Transformers' remote code may).
LOADER = textwrap.dedent("""
    import json, sys
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer
    folder, resave, code = sys.argv[1], sys.argv[2], sys.argv[3]
    out = {"imported_before": sorted(m for m in sys.modules if m.startswith("codellama_hf"))}
    for name, load in (("config", AutoConfig), ("model", AutoModelForCausalLM), ("tokenizer", AutoTokenizer)):
        try:
            load.from_pretrained(folder)
            out[name + "_without_trust"] = "loaded"
        except Exception as e:
            out[name + "_without_trust"] = f"{type(e).__name__}: {e}"
    model = AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True)
    tok = AutoTokenizer.from_pretrained(folder, trust_remote_code=True)
    ids = tok(code)["input_ids"]
    with torch.no_grad():
        logits = model(torch.tensor([ids])).logits[0, -1]
    model.save_pretrained(resave)
    tok.save_pretrained(resave)
    out.update(classes=[type(x).__module__ + "." + type(x).__name__ for x in (model.config, model, tok)],
               ids=ids, infill=tok("def f(<FILL_ME>):")["input_ids"], logits=logits.tolist())
    print(json.dumps(out))
""")


def _run_loader(folder: Path, resave: Path) -> dict:
    # Transformers copies remote modules into HF_MODULES_CACHE: a temporary one, not the user's.
    env = {**os.environ, "HF_MODULES_CACHE": str(resave.parent / "hf_modules")}
    done = subprocess.run([sys.executable, "-c", LOADER, str(folder), str(resave), CODE], capture_output=True,
                          text=True, timeout=300, stdin=subprocess.DEVNULL, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    line = done.stdout.strip().splitlines()[-1]
    return json.loads(line[line.index("{"):])  # after any unanswered trust_remote_code question


def test_converted_folder_names_the_installed_package(converted_checkpoint):
    from codellama_hf.remote_code import CONFIG_AUTO_MAP, TOKENIZER_AUTO_MAP

    folder = converted_checkpoint("CodeLlama-7b-Instruct")
    assert json.loads((folder / "config.json").read_text())["auto_map"] == CONFIG_AUTO_MAP
    assert json.loads((folder / "tokenizer_config.json").read_text())["auto_map"] == TOKENIZER_AUTO_MAP
    for name in FILES:
        text = (folder / name).read_text()
        assert "from codellama_hf import CodeLlama" in text and text.count("import") == 1  # names, never copies
        compile(text, name, "exec")


def test_llama_format_folder_has_no_remote_code(make_meta_checkpoint, tmp_path):
    from codellama_hf import convert_meta_checkpoint

    out = convert_meta_checkpoint(make_meta_checkpoint("CodeLlama-7b"), tmp_path / "llama", format="llama",
                                  quiet=True)
    assert not any((out / name).exists() for name in FILES)
    assert "auto_map" not in json.loads((out / "config.json").read_text())
    assert "auto_map" not in json.loads((out / "tokenizer_config.json").read_text())


def test_conversion_stays_byte_for_byte_reproducible(make_meta_checkpoint, tmp_path):
    from codellama_hf import convert_meta_checkpoint

    src = make_meta_checkpoint("CodeLlama-7b-Instruct")
    a = convert_meta_checkpoint(src, tmp_path / "a" / "CodeLlama-7b-Instruct", quiet=True)
    b = convert_meta_checkpoint(src, tmp_path / "b" / "CodeLlama-7b-Instruct", quiet=True)
    names = sorted(p.name for p in a.iterdir())
    assert set(FILES) <= set(names) and names == sorted(p.name for p in b.iterdir())
    assert all((a / n).read_bytes() == (b / n).read_bytes() for n in names)


def test_a_process_that_never_imports_the_package_loads_it_only_with_trust_remote_code(converted_checkpoint,
                                                                                      tmp_path):
    import torch

    from codellama_hf import CodeLlamaForCausalLM, CodeLlamaTokenizer

    folder = converted_checkpoint("CodeLlama-7b")
    out = _run_loader(folder, tmp_path / "resaved")
    assert out["imported_before"] == []
    assert "trust_remote_code=True" in out["config_without_trust"]
    assert "trust_remote_code=True" in out["model_without_trust"]
    assert "run `import codellama_hf`" in out["tokenizer_without_trust"]  # the guard's loud error, as before
    assert out["classes"] == ["codellama_hf.configuration.CodeLlamaConfig",
                              "codellama_hf.modeling.CodeLlamaForCausalLM",
                              "codellama_hf.tokenization.CodeLlamaTokenizer"]
    tok = CodeLlamaTokenizer.from_pretrained(folder)
    assert out["ids"] == tok(CODE)["input_ids"] and out["infill"] == tok("def f(<FILL_ME>):")["input_ids"]
    model = CodeLlamaForCausalLM.from_pretrained(folder)
    with torch.no_grad():
        expected = model(torch.tensor([out["ids"]])).logits[0, -1]
    assert torch.equal(torch.tensor(out["logits"]), expected)

    resaved = tmp_path / "resaved"  # saved in that process after its remote-code loads
    assert set(FILES) <= {p.name for p in resaved.iterdir()}
    assert not [p.name for p in resaved.glob("*.py") if p.name not in FILES]  # no copy of the package's source
    assert json.loads((resaved / "config.json").read_text())["auto_map"]["AutoModelForCausalLM"] == (
        "modeling_codellama_hf.CodeLlamaForCausalLM")
    assert _run_loader(resaved, tmp_path / "again")["ids"] == out["ids"]


@pytest.mark.parametrize("kind", ["config", "tokenizer"])
def test_save_pretrained_writes_auto_map_and_its_module(kind, tmp_path, tiny_vocabs):
    from codellama_hf import CodeLlamaConfig, CodeLlamaTokenizer

    if kind == "config":
        CodeLlamaConfig.from_variant("CodeLlama-7b").save_pretrained(tmp_path)
        assert sorted(p.name for p in tmp_path.glob("*.py")) == FILES[:2]
        assert "AutoConfig" in json.loads((tmp_path / "config.json").read_text())["auto_map"]
    else:
        CodeLlamaTokenizer.from_pretrained(tiny_vocabs["fim"]).save_pretrained(tmp_path)
        assert sorted(p.name for p in tmp_path.glob("*.py")) == FILES[2:]
        assert "AutoTokenizer" in json.loads((tmp_path / "tokenizer_config.json").read_text())["auto_map"]
