"""Fixtures for the converter tests: synthetic Meta checkpoints the tests write themselves.

Each keeps its variant's real head and kv-head counts, real vocab size, Meta's model-parallel shard
count and FFN rounding, and shrinks width (head_dim 8) and depth. Shards are split as fairscale does
(wq wk wv w1 w3 output on dim 0, wo w2 tok_embeddings on dim 1, norms replicated).
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.fixtures_tokenizer import TINY_SPM_VOCAB


@dataclass(frozen=True)
class MetaStructure:
    shards: int  # Meta's model-parallel size for the download
    multiple_of: int
    ffn_dim_multiplier: float


# Meta's params.json per size (7b/13b/34b from the Aug 2023 release, 70b from Jan 2024).
STRUCTURES = {
    "7b": MetaStructure(shards=1, multiple_of=256, ffn_dim_multiplier=1.0),
    "13b": MetaStructure(shards=2, multiple_of=256, ffn_dim_multiplier=1.0),
    "34b": MetaStructure(shards=4, multiple_of=256, ffn_dim_multiplier=1.0),
    "70b": MetaStructure(shards=8, multiple_of=4096, ffn_dim_multiplier=1.3),
}
# Meta name suffix -> dim fairscale splits it on (None: replicated). The tests' own table, kept apart from
# the package's weight_map so a mistake there cannot hide here.
META_SPLIT = {"tok_embeddings": 1, "output": 0, "norm": None, "wq": 0, "wk": 0, "wv": 0, "wo": 1,
              "w1": 0, "w2": 1, "w3": 0, "attention_norm": None, "ffn_norm": None}
CONTROL_PIECES = ["▁<PRE>", "▁<SUF>", "▁<MID>", "▁<EOT>"]
TINY_VOCAB = 400  # pieces in the tokenizers train_tokenizer makes


def structure_of(variant: str) -> MetaStructure:
    return STRUCTURES[variant.split("-")[1]]


def split_dim(meta_name: str):
    return META_SPLIT[meta_name.removesuffix(".weight").split(".")[-1]]


def meta_params(variant: str, *, n_layers: int = 2, head_dim: int = 8, **overrides) -> dict:
    from codellama_hf.variants import get_variant

    v, s = get_variant(variant), structure_of(variant)
    params = {"dim": v.num_attention_heads * head_dim, "n_layers": n_layers, "n_heads": v.num_attention_heads,
              "multiple_of": s.multiple_of, "ffn_dim_multiplier": s.ffn_dim_multiplier, "norm_eps": 1e-5,
              "rope_theta": v.rope_theta}
    if v.num_key_value_heads != v.num_attention_heads:
        params["n_kv_heads"] = v.num_key_value_heads
    return {**params, **overrides}


def meta_state_dict(params: dict, vocab: int, *, seed: int = 0, dtype=None, rope_freqs: bool = False) -> dict:
    """Full (unsplit) Meta-named weights, random at scales that make every tensor matter to the logits."""
    import torch

    dtype = dtype or torch.bfloat16
    g = torch.Generator().manual_seed(seed)
    dim, n_heads = params["dim"], params["n_heads"]
    head_dim, kv = dim // n_heads, params.get("n_kv_heads") or n_heads
    hidden = int(2 * 4 * dim / 3)
    if params.get("ffn_dim_multiplier") is not None:
        hidden = int(params["ffn_dim_multiplier"] * hidden)
    ffn = params["multiple_of"] * math.ceil(hidden / params["multiple_of"])

    def mat(rows, cols, std):
        return (torch.randn(rows, cols, generator=g) * std).to(dtype)

    def norm():
        return (1 + 0.2 * torch.randn(dim, generator=g)).to(dtype)

    sd = {"tok_embeddings.weight": mat(vocab, dim, 1.0)}
    for i in range(params["n_layers"]):
        p = f"layers.{i}."
        sd.update({
            p + "attention.wq.weight": mat(n_heads * head_dim, dim, 2 / math.sqrt(dim)),
            p + "attention.wk.weight": mat(kv * head_dim, dim, 2 / math.sqrt(dim)),
            p + "attention.wv.weight": mat(kv * head_dim, dim, 1 / math.sqrt(dim)),
            p + "attention.wo.weight": mat(dim, n_heads * head_dim, 1 / math.sqrt(dim)),
            p + "feed_forward.w1.weight": mat(ffn, dim, 1 / math.sqrt(dim)),
            p + "feed_forward.w2.weight": mat(dim, ffn, 1 / math.sqrt(ffn)),
            p + "feed_forward.w3.weight": mat(ffn, dim, 1 / math.sqrt(dim)),
            p + "attention_norm.weight": norm(),
            p + "ffn_norm.weight": norm(),
        })
    sd["norm.weight"] = norm()
    sd["output.weight"] = mat(vocab, dim, 2 / math.sqrt(dim))
    if rope_freqs:  # older checkpoints carry it; converters must ignore it
        sd["rope.freqs"] = torch.ones(head_dim // 2)
    return sd


def shard_state_dict(sd: dict, n_shards: int) -> list[dict]:
    import torch

    shards = [{} for _ in range(n_shards)]
    for name, t in sd.items():
        d = None if name == "rope.freqs" else split_dim(name)
        parts = [t] * n_shards if d is None else torch.chunk(t, n_shards, dim=d)
        for shard, part in zip(shards, parts):
            shard[name] = part.clone()  # its own storage, as each rank saved it
    return shards


def write_meta_folder(folder: Path, params: dict, shards: list[dict], tokenizer_model: Path) -> Path:
    import torch

    folder.mkdir(parents=True)
    for i, shard in enumerate(shards):
        torch.save(shard, folder / f"consolidated.{i:02d}.pth")
    (folder / "params.json").write_text(json.dumps(params))
    shutil.copyfile(tokenizer_model, folder / "tokenizer.model")
    write_checklist(folder)
    return folder


def write_checklist(folder: Path) -> None:
    names = sorted(p.name for p in folder.iterdir() if p.name != "checklist.chk")
    lines = [f"{hashlib.md5((folder / n).read_bytes()).hexdigest()}  {n}" for n in names]
    (folder / "checklist.chk").write_text("\n".join(lines) + "\n")


def train_tokenizer(path: Path, user_symbols: list[str]) -> Path:
    """A tiny Llama-style SentencePiece BPE model (byte fallback, digits split, no normalization)."""
    import sentencepiece as spm

    text = ("def fibonacci(n):\n    if n < 2:\n        return n\n    return fibonacci(n - 1) + fibonacci(n - 2)\n"
            "class Stack:\n    def push(self, item):\n        self.items.append(item)\n"
            "print('hello world') # comment 0123456789\nfor i in range(10): total += i * 2\n"
            "Write a function that sorts a list. The quick brown fox jumps over the lazy dog.\n")
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(text.splitlines() * 20), model_writer=model, vocab_size=TINY_VOCAB, model_type="bpe",
        byte_fallback=True, split_digits=True, normalization_rule_name="identity", remove_extra_whitespaces=False,
        add_dummy_prefix=True, allow_whitespace_only_pieces=True, user_defined_symbols=user_symbols,
        unk_id=0, bos_id=1, eos_id=2, pad_id=-1, character_coverage=1.0, minloglevel=2)
    path.write_bytes(model.getvalue())
    return path


@pytest.fixture(scope="session")
def tiny_tokenizers(tmp_path_factory) -> dict[str, Path]:
    """tokenizer.model per vocabulary kind: 'plain' (Llama 2), 'fim' (Code Llama's 16 extra), 'step' (70b-Instruct)."""
    d = tmp_path_factory.mktemp("spm")
    return {"plain": train_tokenizer(d / "plain.model", []),
            "fim": train_tokenizer(d / "fim.model", CONTROL_PIECES),
            "step": train_tokenizer(d / "step.model", CONTROL_PIECES + ["<step>"])}


def tokenizer_kind(variant: str) -> str:
    from codellama_hf.variants import get_variant

    v = get_variant(variant)
    return "step" if v.chat_format == "step" else "fim" if v.vocab_size == 32016 else "plain"


@pytest.fixture(scope="session")
def make_meta_checkpoint(tmp_path_factory, tiny_tokenizers):
    """make_meta_checkpoint(variant, **options) -> a fresh Meta folder named after the variant.

    Options: n_layers, head_dim, seed, params (overrides), tokenizer_model (a path), rope_freqs, vocab (embedding
    rows; default: the variant's).
    Built once per distinct request; tests that damage a folder copy it first (see `copy_meta`).
    """
    from codellama_hf.variants import get_variant

    cache: dict = {}

    def make(variant: str, *, n_layers: int = 2, head_dim: int = 8, seed: int = 0, params: dict | None = None,
             tokenizer_model: Path | None = None, rope_freqs: bool = False, vocab: int | None = None) -> Path:
        key = (variant, n_layers, head_dim, seed, json.dumps(params, sort_keys=True), str(tokenizer_model),
               rope_freqs, vocab)
        if key not in cache:
            p = meta_params(variant, n_layers=n_layers, head_dim=head_dim, **(params or {}))
            sd = meta_state_dict(p, vocab or get_variant(variant).vocab_size, seed=seed, rope_freqs=rope_freqs)
            folder = tmp_path_factory.mktemp("meta") / variant
            tok = tokenizer_model or tiny_tokenizers[tokenizer_kind(variant)]
            cache[key] = write_meta_folder(folder, p, shard_state_dict(sd, structure_of(variant).shards), tok)
        return cache[key]

    return make


@pytest.fixture(scope="session")
def converted_checkpoint(make_meta_checkpoint, tmp_path_factory, tiny_vocabs):
    """converted_checkpoint(variant, **options) -> a converted HF folder named after the variant, cached.

    Its tokenizer is one of fixtures_tokenizer's (trained on stdlib code, `☺` a piece as in Meta's vocabulary, so
    Meta's `encode_infilling` holds), and its embedding has as many rows as that tokenizer has pieces, so every id
    the random model generates decodes to text. Options as for make_meta_checkpoint, plus dtype (default float32).
    """
    from codellama_hf import convert_meta_checkpoint

    cache: dict = {}

    def convert(variant: str, *, dtype: str = "float32", **options) -> Path:
        vocab = tiny_vocabs[tokenizer_kind(variant)] / "tokenizer.model"
        options = {"n_layers": 1, "vocab": TINY_SPM_VOCAB, "tokenizer_model": vocab, **options}
        key = (variant, dtype, json.dumps(options, sort_keys=True, default=str))
        if key not in cache:
            out = tmp_path_factory.mktemp("hf") / variant
            cache[key] = convert_meta_checkpoint(make_meta_checkpoint(variant, **options), out, dtype=dtype,
                                                 quiet=True)
        return cache[key]

    return convert


def copy_meta(src: Path, parent: Path) -> Path:
    dst = parent / src.name
    shutil.copytree(src, dst)
    return dst


def load_meta_shards(folder: Path) -> list[dict]:
    """The shards as Meta's own code would see them (weights_only, no mmap: independent of the converter)."""
    import torch

    return [torch.load(p, weights_only=True, map_location="cpu") for p in sorted(folder.glob("consolidated.*.pth"))]


def concat_meta_shards(shards: list[dict]) -> dict:
    """Undo the model-parallel split: the full Meta state dict."""
    import torch

    full = {}
    for name in shards[0]:
        if name == "rope.freqs":
            continue
        d = split_dim(name)
        full[name] = shards[0][name] if d is None else torch.cat([s[name] for s in shards], dim=d)
    return full
