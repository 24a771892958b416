"""One bitsandbytes recipe: the server, the demo and estimate_memory's planner load 4-bit the same way, with the
double quantization whose bytes codellama_hf_core/memory.py counts."""

from __future__ import annotations

import importlib.util

import pytest
import torch
import transformers

from codellama_hf.errors import UserInputError
from codellama_hf.quantization import bitsandbytes_config

FOUR_BIT = {"load_in_4bit": True, "bnb_4bit_quant_type": "nf4", "bnb_4bit_use_double_quant": True}


def _fields(config) -> dict:
    return {k: getattr(config, k) for k in FOUR_BIT}


class Loaded(Exception):
    """Raised by the fake from_pretrained once it has seen the quantization config."""


@pytest.fixture
def seen(monkeypatch):
    """Every quantization_config passed to AutoModelForCausalLM.from_pretrained; the load itself raises."""
    configs = []

    def fake_model(folder, **kwargs):
        configs.append(kwargs.get("quantization_config"))
        raise Loaded

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", fake_model)
    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", lambda folder, **kwargs: object())
    return configs


def test_the_recipe():
    assert _fields(bitsandbytes_config("4bit", compute_dtype="bfloat16")) == FOUR_BIT
    assert bitsandbytes_config("4bit", compute_dtype=torch.float16).bnb_4bit_compute_dtype == torch.float16
    assert bitsandbytes_config("8bit", compute_dtype="bfloat16").load_in_8bit
    assert bitsandbytes_config("8bit", compute_dtype="bfloat16", cpu_offload=True).llm_int8_enable_fp32_cpu_offload
    with pytest.raises(UserInputError, match="'3bit'"):
        bitsandbytes_config("3bit", compute_dtype="bfloat16")


def test_the_server_loads_4bit_with_the_recipe(seen, tmp_path):
    from codellama_hf.serving.loading import load_model

    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(Loaded):
        load_model(tmp_path, quantization="4bit", dtype="bfloat16")
    assert _fields(seen[0]) == FOUR_BIT and seen[0].bnb_4bit_compute_dtype == torch.bfloat16


def test_the_demo_loads_4bit_with_the_recipe(seen, monkeypatch, tmp_path):
    from codellama_hf.demo import runner

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",  # as if bitsandbytes were installed, whether or not it is
                        lambda name, *args: object() if name == "bitsandbytes" else real(name, *args))
    with pytest.raises(Loaded):  # the 4-bit load fails (the fake), then the bf16 fallback too
        runner._load(tmp_path)
    assert _fields(seen[0]) == FOUR_BIT and seen[1] is None


def test_estimate_memory_plans_with_the_recipe():
    from codellama_hf.device_maps import _quantization_config

    config = _quantization_config("4bit", "bfloat16")
    assert _fields(config) == FOUR_BIT and config.llm_int8_enable_fp32_cpu_offload
