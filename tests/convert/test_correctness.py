"""Converted folders against independent truths: Meta's forward pass on the original shards, and the
Transformers conversion math, on synthetic checkpoints of all 12 variants (real heads, kv heads, vocab,
shard counts and FFN rounding; shrunk width and depth)."""

from __future__ import annotations

import json
import logging

import pytest
import sentencepiece as spm
import torch
from safetensors import safe_open
from transformers import AutoModelForCausalLM

from codellama_hf import CodeLlamaConfig, CodeLlamaForCausalLM, convert_meta_checkpoint
from codellama_hf.variants import VARIANTS, get_variant
from tests.convert.reference import meta_forward, transformers_conversion
from tests.fixtures_convert import CONTROL_PIECES, concat_meta_shards, load_meta_shards, meta_params

STRUCTURES = ["CodeLlama-7b", "CodeLlama-13b-Python", "CodeLlama-34b", "CodeLlama-70b-Instruct"]
TOKENS = torch.tensor([[1, 5, 17, 300, 42, 7, 99, 3, 250, 31], [1, 8, 8, 9, 120, 64, 2, 77, 13, 5]])


def read_safetensors(folder) -> dict[str, torch.Tensor]:
    index = json.loads((folder / "model.safetensors.index.json").read_text())
    tensors = {}
    for fname in sorted(set(index["weight_map"].values())):
        with safe_open(folder / fname, "pt") as f:
            assert f.metadata() == {"format": "pt"}
            for name in f.keys():
                assert name not in tensors and index["weight_map"][name] == fname
                tensors[name] = f.get_tensor(name)
    assert tensors.keys() == index["weight_map"].keys()
    assert index["metadata"]["total_size"] == sum(t.numel() * t.element_size() for t in tensors.values())
    return tensors


@pytest.mark.parametrize("variant", VARIANTS)
def test_every_variant_loads_and_matches_metas_forward_pass(variant, make_meta_checkpoint, tmp_path):
    layers = 1 if variant.startswith("CodeLlama-70b") else 2  # 70b's multiple_of 4096 makes a wide FFN
    src = make_meta_checkpoint(variant, n_layers=layers, rope_freqs=variant == "CodeLlama-7b")
    out = convert_meta_checkpoint(src, tmp_path / "hf", dtype="float32", quiet=True)

    model = AutoModelForCausalLM.from_pretrained(out).eval()
    assert type(model) is CodeLlamaForCausalLM and model.dtype == torch.float32
    with torch.no_grad():
        got = model(TOKENS).logits
    params = json.loads((src / "params.json").read_text())
    want = meta_forward(concat_meta_shards(load_meta_shards(src)), params, TOKENS)
    assert want.abs().max() > 1  # logits large enough for the tolerance to mean something
    assert (got - want).abs().max() < 1e-4

    preset, cfg = get_variant(variant), model.config
    assert (cfg.variant, cfg.flavor, cfg.chat_format, cfg.infilling) == (
        variant, preset.flavor, preset.chat_format, preset.infilling)
    assert cfg.max_position_embeddings == preset.max_position_embeddings
    assert cfg.rope_parameters["rope_theta"] == params["rope_theta"] == preset.rope_theta
    assert (cfg.num_attention_heads, cfg.num_key_value_heads, cfg.vocab_size) == (
        preset.num_attention_heads, preset.num_key_value_heads, preset.vocab_size)
    assert json.loads((out / "config.json").read_text())["dtype"] == "float32"


def test_control_ids_come_from_the_vocabulary_by_piece_name(make_meta_checkpoint, tmp_path, caplog):
    src = make_meta_checkpoint("CodeLlama-70b-Instruct", n_layers=1)
    with caplog.at_level(logging.WARNING, logger="codellama_hf"):
        out = convert_meta_checkpoint(src, tmp_path / "hf", quiet=True)
    sp = spm.SentencePieceProcessor(model_file=str(src / "tokenizer.model"))
    cfg = CodeLlamaConfig.from_pretrained(out)
    pieces = dict(zip(["prefix_token_id", "suffix_token_id", "middle_token_id", "eot_token_id", "step_token_id"],
                      CONTROL_PIECES + ["<step>"]))
    for field, piece in pieces.items():
        assert getattr(cfg, field) == sp.piece_to_id(piece) != 0
    # the tiny vocab puts them elsewhere than the preset: said in the warning, with what else differs
    warning = " ".join(r.getMessage() for r in caplog.records)
    assert "CodeLlama-70b-Instruct preset" in warning and "hidden_size 8192 -> 512" in warning
    assert f"step_token_id 32015 -> {sp.piece_to_id('<step>')}" in warning
    gen = json.loads((out / "generation_config.json").read_text())
    assert gen["eos_token_id"] == [sp.eos_id(), sp.piece_to_id("<step>")]
    assert (out / "tokenizer.model").read_bytes() == (src / "tokenizer.model").read_bytes()


def test_python_vocabulary_has_no_infilling_ids(make_meta_checkpoint, tmp_path):
    out = convert_meta_checkpoint(make_meta_checkpoint("CodeLlama-7b-Python"), tmp_path / "hf", quiet=True)
    cfg = CodeLlamaConfig.from_pretrained(out)
    assert cfg.fim_token_ids is None and cfg.step_token_id is None and cfg.infilling is False
    assert json.loads((out / "generation_config.json").read_text())["eos_token_id"] == 2


@pytest.mark.parametrize("variant", STRUCTURES)
def test_bf16_tensors_equal_the_transformers_conversion_bit_for_bit(variant, make_meta_checkpoint, tmp_path):
    src = make_meta_checkpoint(variant)
    out = convert_meta_checkpoint(src, tmp_path / "hf", max_shard_size="4MB", quiet=True)
    got = read_safetensors(out)
    want = transformers_conversion(load_meta_shards(src), meta_params(variant))
    assert got.keys() == want.keys()
    for name, w in want.items():
        assert got[name].dtype == torch.bfloat16 and torch.equal(got[name], w), name
    assert len(set(json.loads((out / "model.safetensors.index.json").read_text())["weight_map"].values())) > 1
    assert json.loads((out / "config.json").read_text())["dtype"] == "bfloat16"


def test_small_chunks_cross_heads_rows_and_shards_exactly(make_meta_checkpoint, tmp_path, monkeypatch):
    """Chunk boundaries inside a shard slice (permuted q/k, dim-1 concatenation) must not show in the output."""
    from codellama_hf.convert import assemble

    monkeypatch.setattr(assemble, "CHUNK_BYTES", 3000)  # a couple of heads, a handful of rows
    src = make_meta_checkpoint("CodeLlama-34b", n_layers=1)
    got = read_safetensors(convert_meta_checkpoint(src, tmp_path / "hf", quiet=True))
    want = transformers_conversion(load_meta_shards(src), meta_params("CodeLlama-34b", n_layers=1))
    assert all(torch.equal(got[k], want[k]) for k in want)


def test_float16_is_written_and_recorded_as_float16(make_meta_checkpoint, tmp_path):
    src = make_meta_checkpoint("CodeLlama-13b-Instruct", n_layers=1)
    out = convert_meta_checkpoint(src, tmp_path / "hf", dtype=torch.float16, quiet=True)
    got = read_safetensors(out)
    want = transformers_conversion(load_meta_shards(src), meta_params("CodeLlama-13b-Instruct", n_layers=1))
    assert all(got[k].dtype == torch.float16 and torch.equal(got[k], want[k].half()) for k in want)
    assert json.loads((out / "config.json").read_text())["dtype"] == "float16"


def test_loads_through_auto_tokenizer_and_pipeline_with_the_chat_template(make_meta_checkpoint, tmp_path):
    from transformers import AutoTokenizer, pipeline

    out = convert_meta_checkpoint(make_meta_checkpoint("CodeLlama-7b-Instruct", n_layers=1), tmp_path / "hf",
                                  quiet=True)
    tok = AutoTokenizer.from_pretrained(out)
    assert type(tok).__name__ == "CodeLlamaTokenizer" and tok.chat_template
    assert tok.model_max_length == 16384  # the variant's context length
    assert "[INST]" in tok.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False)
    generate = pipeline("text-generation", model=str(out))
    text = generate("def add(a, b):", max_new_tokens=4, do_sample=False)[0]["generated_text"]
    assert text.startswith("def add(a, b):")


def test_folder_name_or_variant_option_names_the_preset(make_meta_checkpoint, tmp_path):
    import shutil

    from codellama_hf.errors import UserInputError

    src = tmp_path / "downloads" / "my-model"
    shutil.copytree(make_meta_checkpoint("CodeLlama-13b", n_layers=1), src)
    with pytest.raises(UserInputError, match=r"folder name 'my-model' is not a variant name.*--variant NAME"):
        convert_meta_checkpoint(src, tmp_path / "hf", quiet=True)
    assert not (tmp_path / "hf").exists()
    out = convert_meta_checkpoint(src, tmp_path / "hf", variant="CodeLlama-13b", quiet=True)
    assert CodeLlamaConfig.from_pretrained(out).variant == "CodeLlama-13b"


def test_verify_passes_on_an_intact_download(make_meta_checkpoint, tmp_path):
    out = convert_meta_checkpoint(make_meta_checkpoint("CodeLlama-13b", n_layers=1), tmp_path / "hf", verify=True,
                                  quiet=True)
    assert (out / "config.json").is_file()


@pytest.mark.parametrize("size, n", [("5GB", 5 * 10**9), ("500MiB", 500 * 2**20), (12345, 12345), ("1.5KB", 1500)])
def test_max_shard_size_parses_transformers_style_sizes(size, n):
    from codellama_hf.convert.converter import parse_size

    assert parse_size(size) == n


@pytest.mark.real_vocab
@pytest.mark.parametrize("variant, vocab", [("CodeLlama-7b", "codellama"), ("CodeLlama-34b-Python", "llama2"),
                                            ("CodeLlama-70b-Instruct", "codellama-70b-instruct")])
def test_real_vocabularies_give_exactly_the_preset_ids(variant, vocab, shared_tokenizers, make_meta_checkpoint,
                                                       tmp_path, caplog):
    src = make_meta_checkpoint(variant, n_layers=1, tokenizer_model=shared_tokenizers / vocab / "tokenizer.model")
    with caplog.at_level(logging.WARNING, logger="codellama_hf"):
        out = convert_meta_checkpoint(src, tmp_path / "hf", quiet=True)
    preset = CodeLlamaConfig.from_variant(variant)
    cfg = CodeLlamaConfig.from_pretrained(out)
    for field in ("prefix_token_id", "suffix_token_id", "middle_token_id", "eot_token_id", "step_token_id",
                  "bos_token_id", "eos_token_id"):
        assert getattr(cfg, field) == getattr(preset, field), field
    warning = " ".join(r.getMessage() for r in caplog.records)
    assert "hidden_size" in warning and "token_id" not in warning  # only the shrunk shapes differ
