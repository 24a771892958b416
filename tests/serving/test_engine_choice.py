"""Which engine `--engine auto` picks, and the refusals of `--engine vllm` where vLLM cannot run (no vLLM needed)."""

from __future__ import annotations

import logging

import pytest

from codellama_hf.errors import UserInputError
from codellama_hf.serving import loading
from codellama_hf.serving.engines import vllm as vllm_engine


@pytest.mark.parametrize("why", [None, "vLLM is not installed"])
def test_auto_picks_vllm_only_where_it_runs_and_says_so(monkeypatch, caplog, why):
    monkeypatch.setattr(vllm_engine, "vllm_usable", lambda: why)
    with caplog.at_level(logging.WARNING, logger=loading.__name__):
        chosen = loading.resolve_engine("auto")
    assert chosen == ("vllm" if why is None else "continuous")
    lines = [r.getMessage() for r in caplog.records if r.name == loading.__name__]
    assert len(lines) == 1 and lines[0].startswith(f"engine: {chosen}") and (why is None or why in lines[0])


def test_auto_keeps_transformers_when_a_transformers_option_is_given(monkeypatch):
    monkeypatch.setattr(vllm_engine, "vllm_usable", lambda: None)
    assert loading.resolve_engine("auto", quantization="4bit") == "continuous"
    assert loading.resolve_engine("auto", device_map="cuda:1") == "continuous"
    assert loading.resolve_engine("eager") == "eager"


def test_vllm_where_it_cannot_run_is_refused_with_the_fix(monkeypatch):
    monkeypatch.setattr(vllm_engine, "vllm_usable", lambda: "vLLM is not installed")
    with pytest.raises(UserInputError, match="--engine continuous"):
        loading.resolve_engine("vllm")
    monkeypatch.setattr(vllm_engine, "vllm_usable", lambda: None)
    with pytest.raises(UserInputError, match="--quantization '8bit'"):
        loading.resolve_engine("vllm", quantization="8bit")
    with pytest.raises(UserInputError, match="'fast'"):
        loading.resolve_engine("fast")


def test_vllm_options_need_the_vllm_engine(instruct_folder):
    with pytest.raises(UserInputError, match="tensor_parallel_size"):
        loading.load_service(instruct_folder, engine="continuous", vllm_options={"tensor_parallel_size": 2})


def test_without_vllm_it_is_not_usable_here():
    import importlib.util

    if importlib.util.find_spec("vllm") is not None:
        pytest.skip("vLLM is installed here (the vLLM lane)")
    assert vllm_engine.vllm_usable() == "vLLM is not installed"
