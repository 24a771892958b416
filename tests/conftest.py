"""Shared fixtures: tiny configs and checkpoints (random weights, real structure)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

pytest_plugins = ["tests.fixtures_tokenizer", "tests.fixtures_convert", "tests.fixtures_vllm"]

SHARED_TOKENIZERS = Path(os.environ.get("CODELLAMA_HF_SHARED_TOKENIZERS",
                                        Path(__file__).resolve().parents[2] / "shared" / "tokenizers"))

# hidden 64, 2 layers: the real structure at a size CI runs in milliseconds
TINY = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, intermediate_size=128)


@pytest.fixture(scope="session")
def shared_tokenizers() -> Path:
    """The real Llama-2 / Code Llama vocabularies, when the machine has them."""
    if not (SHARED_TOKENIZERS / "codellama" / "tokenizer.model").is_file():
        pytest.skip(f"real vocabularies not found at {SHARED_TOKENIZERS} (set CODELLAMA_HF_SHARED_TOKENIZERS)")
    return SHARED_TOKENIZERS


@pytest.fixture
def tiny_config():
    from codellama_hf import CodeLlamaConfig

    return CodeLlamaConfig.from_variant("CodeLlama-7b", **TINY, dtype="float32")  # the real 32016 vocab


@pytest.fixture
def tiny_model(tiny_config):
    import torch

    from codellama_hf import CodeLlamaForCausalLM

    torch.manual_seed(0)
    return CodeLlamaForCausalLM(tiny_config).eval()
