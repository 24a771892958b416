"""The small files of the HF folder: config.json, generation_config.json and the tokenizer files.

The config starts from the named preset (CodeLlamaConfig.from_variant: context length, flavor, infilling,
chat format); params.json and the weight shapes override its shapes, and the tokenizer's vocabulary
overrides its control ids, found by piece name. Every difference from the preset is said in a warning.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

from ..configuration import CodeLlamaConfig
from ..errors import UserInputError
from .layout import Dims

logger = logging.getLogger(__name__)

# Fields a stock `model_type: llama` config keeps; the Code Llama facts stay out of it.
LLAMA_FIELDS = ("hidden_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads", "intermediate_size",
                "vocab_size", "max_position_embeddings", "rope_parameters", "rms_norm_eps", "bos_token_id",
                "eos_token_id", "tie_word_embeddings", "dtype")


def checkpoint_fields(params: dict, dims: Dims, dtype: str) -> dict:
    """CodeLlamaConfig fields that params.json and the weights decide."""
    return dict(hidden_size=dims.dim, num_hidden_layers=dims.n_layers, num_attention_heads=dims.n_heads,
                num_key_value_heads=dims.n_kv_heads, intermediate_size=dims.ffn_dim, vocab_size=dims.vocab,
                rms_norm_eps=float(params["norm_eps"]),
                rope_parameters={"rope_theta": float(params["rope_theta"]), "rope_type": "default"},
                dtype=dtype)


def tokenizer_fields(tok, vocab_rows: int) -> dict:
    """Control, BOS and EOS ids as the tokenizer's own vocabulary has them (by piece name, not position)."""
    n = len(tok)
    if n > vocab_rows:
        raise UserInputError(f"tokenizer.model has {n} pieces but the embedding only {vocab_rows} rows: "
                             f"tokenizer.model belongs to another model; copy the one from this download")
    ids = dict(tok.control_token_ids)  # keyed by CodeLlamaConfig's field names
    for name in ("bos_token_id", "eos_token_id"):
        if getattr(tok, name, None) is not None:
            ids[name] = getattr(tok, name)
    return ids


def build_config(variant: str, params: dict, dims: Dims, dtype: str, tok_ids: dict) -> CodeLlamaConfig:
    preset = CodeLlamaConfig.from_variant(variant)
    fields = {**checkpoint_fields(params, dims, dtype), **tok_ids}
    differs = [f"{k} {_fmt(getattr(preset, k))} -> {_fmt(v)}" for k, v in fields.items()
               if k != "dtype" and _fmt(getattr(preset, k)) != _fmt(v)]
    if differs:
        logger.warning("the checkpoint differs from the %s preset in %s; using the checkpoint's values "
                       "(pass --variant if the folder name is not the model's)", variant, ", ".join(differs))
    return CodeLlamaConfig.from_variant(variant, **fields, architectures=["CodeLlamaForCausalLM"])


def _fmt(v) -> str:
    if isinstance(v, dict):
        v = v.get("rope_theta", v)
    return f"{v:g}" if isinstance(v, float) else str(v)


def write_config(config: CodeLlamaConfig, out: Path, *, format: str) -> None:
    if format == "codellama":
        config.save_pretrained(out)
        return
    from transformers import LlamaConfig

    llama = LlamaConfig(**{k: getattr(config, k) for k in LLAMA_FIELDS}, architectures=["LlamaForCausalLM"])
    d = json.loads(llama.to_json_string())  # what save_pretrained writes: no generic PretrainedConfig noise
    # Keys that readers predating Transformers 5 look for: without rope_theta they would assume 10000,
    # Llama 2's, where Code Llama mostly uses 1e6; torch_dtype is dtype's old name.
    d.update(rope_theta=config.rope_parameters["rope_theta"], torch_dtype=d["dtype"])
    (out / "config.json").write_text(json.dumps(d, indent=2, sort_keys=True) + "\n")


def write_generation_config(config: CodeLlamaConfig, out: Path) -> None:
    from transformers import GenerationConfig

    stops = config.stop_token_ids
    GenerationConfig(bos_token_id=config.bos_token_id,
                     eos_token_id=stops if len(stops) > 1 else stops[0]).save_pretrained(out)


def load_tokenizer(meta_dir: Path, *, chat_format: str):
    from ..tokenization import CodeLlamaTokenizer

    try:
        return CodeLlamaTokenizer.from_pretrained(str(meta_dir), chat_format=chat_format)
    except UserInputError:
        raise
    except (ValueError, OSError, RuntimeError) as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:160]
        raise UserInputError(f"cannot read {meta_dir / 'tokenizer.model'} ({first}); re-download it") from None


def write_tokenizer(tok, meta_dir: Path, out: Path, *, format: str) -> None:
    if format == "codellama":
        tok.save_pretrained(str(out))
    else:
        from ..tokenization import save_llama_format_tokenizer

        save_llama_format_tokenizer(tok, out)
    shutil.copyfile(meta_dir / "tokenizer.model", out / "tokenizer.model")  # Meta's exact bytes, for other tools
