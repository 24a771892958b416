"""`codellama_hf._compat`: each private name of Transformers, torch and bitsandbytes removed in turn (monkeypatch),
and the fallback checked: the feature switches off with one log line and the public path gives the same result."""

from __future__ import annotations

import logging
import types

import pytest
import torch
from transformers import GenerationConfig, GenerationMixin, PretrainedConfig

from codellama_hf import _compat
from codellama_hf.fast_path import fast_sample, model_cannot_compile, with_fast_path
from codellama_hf.fast_path.loop import DecodePlan

LOGGER = _compat.__name__


@pytest.fixture(autouse=True)
def fresh_log(monkeypatch):
    monkeypatch.setattr(_compat, "_switched_off", set())  # each test sees its own first (and only) log line


def off_lines(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == LOGGER]


def greedy(model, generate_kwargs):
    with torch.no_grad():
        return model.generate(**generate_kwargs)


def prompt():
    return dict(input_ids=torch.tensor([[1, 400, 500, 600]]), attention_mask=torch.ones(1, 4, dtype=torch.long),
                max_new_tokens=6, do_sample=False, pad_token_id=0)


# ----- Transformers: the fast path -----------------------------------------------------------------------------------

def test_the_fast_path_runs_here(tiny_model):
    if (missing := _compat.fast_path_missing(tiny_model)) is not None:
        pytest.skip(f"this Transformers lacks what the fast path needs: {missing}")
    routed = with_fast_path(tiny_model, prompt(), fast=True)
    assert routed.get("custom_generate") is fast_sample  # so the removals below take away a path that was taken
    assert torch.equal(greedy(tiny_model, routed), greedy(tiny_model, prompt()))


@pytest.mark.parametrize("name", _compat.FAST_PATH_NAMES)
def test_without_a_generation_private_the_fast_path_is_off_and_the_call_stock(name, tiny_model, monkeypatch, caplog):
    monkeypatch.delattr(GenerationMixin, name, raising=False)
    why = model_cannot_compile(tiny_model)
    assert why is not None and name in why
    kwargs = prompt()
    with caplog.at_level(logging.WARNING):
        routed = with_fast_path(tiny_model, kwargs, fast=True)
        with_fast_path(tiny_model, prompt(), fast=True)
    assert routed is kwargs  # stock generate gets the call untouched: its tokens, whatever they are
    assert [m for m in (r.getMessage() for r in caplog.records) if name in m] == [
        f"fast path off for this model, decoding eagerly: {why}"]  # one line, naming what and why


def test_without_attn_implementation_the_fast_path_is_off(tiny_model, monkeypatch):
    monkeypatch.delattr(PretrainedConfig, "_attn_implementation", raising=False)
    monkeypatch.delattr(type(tiny_model.config), "_attn_implementation", raising=False)
    assert _compat.attn_implementation(tiny_model.config) is None
    assert "attention implementation None" in model_cannot_compile(tiny_model)


def test_without_the_prepared_pad_id_the_loop_hands_the_call_to_the_stock_loop(tiny_model, monkeypatch, caplog):
    calls = []
    monkeypatch.setattr(_compat, "stock_sample", lambda model, *args, **kwargs: calls.append(args) or "stock")
    config = GenerationConfig(max_length=12, do_sample=False)
    assert not hasattr(config, "_pad_token_tensor")  # as if generate no longer prepared it
    ids = torch.tensor([[1, 2, 3]])
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        out = fast_sample(tiny_model, ids, lambda i, s: s, lambda i, s: torch.zeros(1, dtype=torch.bool), config,
                          codellama_plan=DecodePlan(forward=None, lag=0), position_ids=torch.arange(3)[None],
                          attention_mask=torch.ones_like(ids))
    assert out == "stock" and len(calls) == 1
    assert len(off_lines(caplog)) == 1 and "_pad_token_tensor" in off_lines(caplog)[0]


def test_without_the_pipeline_hook_our_pipelines_merge_their_defaults_as_it_does(caplog):
    model = types.SimpleNamespace(generation_config=GenerationConfig(temperature=0.2))
    pipe = types.SimpleNamespace(model=model, _default_generation_config=GenerationConfig(
        max_new_tokens=128, temperature=0.7))
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        kwargs = _compat.pipeline_generate_kwargs(pipe, object(), {"do_sample": True}, eos_token_id=[2])
        _compat.pipeline_generate_kwargs(pipe, object(), {"generation_config": model.generation_config})
    # the call's do_sample wins; the model's temperature stays the model's; the pipeline fills max_new_tokens
    assert kwargs == {"do_sample": True, "max_new_tokens": 128, "eos_token_id": [2]}
    assert len(off_lines(caplog)) == 1 and "_prepare_generate_kwargs" in off_lines(caplog)[0]


def test_with_the_pipeline_hook_it_is_the_hook(caplog):
    class Base:
        def _prepare_generate_kwargs(self, generate_kwargs, **overrides):
            return {"from": "hook", **generate_kwargs, **overrides}

    assert _compat.pipeline_generate_kwargs(None, Base(), {"a": 1}, b=2) == {"from": "hook", "a": 1, "b": 2}
    assert off_lines(caplog) == []


# ----- torch ---------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("where, name", [("torch._dynamo.exc", "BackendCompilerFailed"),
                                         ("torch._dynamo.exc", "TorchRuntimeError"),
                                         ("torch._dynamo.exc", "Unsupported"),
                                         ("torch._inductor.exc", "InductorError")])
def test_without_a_compile_error_class_the_others_still_fall_back(where, name, monkeypatch, caplog):
    import importlib

    module = importlib.import_module(where)
    gone = getattr(module, name)
    monkeypatch.delattr(module, name)
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        found = _compat.compile_errors()
    assert gone not in found and len(found) == 3
    assert len(off_lines(caplog)) == 1


def test_with_no_compile_error_class_a_failed_compile_propagates(tiny_model, monkeypatch):
    from codellama_hf.fast_path import loop

    for where, name in (("torch._dynamo.exc", "BackendCompilerFailed"), ("torch._dynamo.exc", "TorchRuntimeError"),
                        ("torch._dynamo.exc", "Unsupported"), ("torch._inductor.exc", "InductorError")):
        monkeypatch.delattr(__import__(where, fromlist=[name]), name)
    monkeypatch.setattr(loop, "COMPILE_ERRORS", _compat.compile_errors())
    assert loop.COMPILE_ERRORS == ()

    def broken(**inputs):
        raise RuntimeError("not a compile error")

    with pytest.raises(RuntimeError, match="not a compile error"):
        loop.decode_step(tiny_model, broken, {})


# ----- Transformers: device maps -------------------------------------------------------------------------------------

def test_without_get_device_map_the_public_planner_plans_the_same_bf16_map(monkeypatch, caplog):
    import transformers.integrations.accelerate as hf_accelerate

    from codellama_hf.device_maps import auto_device_map
    from codellama_hf.variants import get_variant

    budget = {0: "8GiB", "cpu": "64GiB"}
    preset = get_variant("CodeLlama-7b")
    own = auto_device_map(preset, max_memory=budget)
    monkeypatch.delattr(hf_accelerate, "_get_device_map")
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        public = auto_device_map(preset, max_memory=budget)
        auto_device_map(preset, max_memory=budget)
    assert public == own and set(own.values()) == {0, "cpu"}  # the budget splits it, so the plan is not trivial
    assert len(off_lines(caplog)) == 1 and "_get_device_map" in off_lines(caplog)[0]


def test_without_no_split_modules_the_fallback_planner_says_so(tiny_model, monkeypatch, caplog):
    assert _compat.no_split_modules(tiny_model) == ["LlamaDecoderLayer"]
    monkeypatch.setattr(tiny_model, "_no_split_modules", None)
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        assert _compat.no_split_modules(tiny_model) == []
    assert len(off_lines(caplog)) == 1


# ----- Transformers: continuous batching (serving) -------------------------------------------------------------------

class Router:
    def __init__(self):
        self._lock, self.result_handlers = __import__("threading").Lock(), {"r1": "handler", "r2": "handler"}


def test_a_cancelled_request_handler_is_forgotten_and_without_the_router_privates_left(caplog):
    manager = types.SimpleNamespace(output_router=Router())
    _compat.forget_result_handler(manager, "r1")
    assert manager.output_router.result_handlers == {"r2": "handler"}
    del manager.output_router._lock
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        _compat.forget_result_handler(manager, "r2")
        _compat.forget_result_handler(types.SimpleNamespace(), "r2")
    assert manager.output_router.result_handlers == {"r2": "handler"} and len(off_lines(caplog)) == 1


def test_without_the_thread_status_the_manager_health_is_is_running_alone(caplog):
    sick = types.SimpleNamespace(background_thread_status=types.SimpleNamespace(
        can_accept_new_requests=lambda: "stopping"))
    fine = types.SimpleNamespace(background_thread_status=types.SimpleNamespace(can_accept_new_requests=lambda: None))
    assert not _compat.manager_accepts_requests(sick) and _compat.manager_accepts_requests(fine)
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        assert _compat.manager_accepts_requests(types.SimpleNamespace())
    assert len(off_lines(caplog)) == 1


PRIVATE_READS = {"output_router", "result_handlers", "background_thread_status", "_get_device_map", "_prefill",
                 "_sample", "_prepare_generation_config", "_pad_token_tensor", "_attn_implementation", "_dynamo",
                 "_inductor", "support_avx512bf16_for_cpu", "gemm_4bit_forward_kernel", "_no_split_modules"}


def test_nothing_but_compat_reads_a_private_name():
    """In code (attributes, imports, getattr/hasattr strings), not in docstrings or comments."""
    import ast
    from pathlib import Path

    import codellama_hf

    root = Path(codellama_hf.__file__).parent
    found = []
    for path in sorted(root.rglob("*.py")):
        if path.name == "_compat.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.Attribute):
                names = [node.attr]
            elif isinstance(node, ast.ImportFrom):
                names = [a.name for a in node.names] + (node.module or "").split(".")
            elif isinstance(node, ast.Import):
                names = [part for a in node.names for part in a.name.split(".")]
            elif isinstance(node, ast.Constant) and isinstance(node.value, str):
                names = [node.value]
            found += [f"{path.relative_to(root)}: {n}" for n in names if n in PRIVATE_READS]
    assert found == []


# ----- bitsandbytes --------------------------------------------------------------------------------------------------

def test_without_the_repack_flag_loaded_4bit_scales_are_not_kept(caplog):
    from codellama_hf.modeling import keep_loaded_4bit_state_for_saving

    linear = torch.nn.Linear(2, 2)
    linear.weight.quant_state = types.SimpleNamespace(absmax=torch.ones(1))
    linear.support_avx512bf16_for_cpu = True
    keep_loaded_4bit_state_for_saving(linear)
    assert hasattr(linear, "_loaded_4bit_scales")  # with the flag: kept
    other = torch.nn.Linear(2, 2)
    other.weight.quant_state = types.SimpleNamespace(absmax=torch.ones(1))
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        keep_loaded_4bit_state_for_saving(other)
    assert not hasattr(other, "_loaded_4bit_scales") and len(off_lines(caplog)) == 1


def test_bitsandbytes_optional_kernel_state(monkeypatch, caplog):
    functional = pytest.importorskip("bitsandbytes.functional")
    from bitsandbytes.backends.cpu import ops

    monkeypatch.setattr(functional, "has_avx512bf16", lambda: False)
    assert _compat.bnb_optional_cpu_kernel() == "not tried"
    monkeypatch.setattr(functional, "has_avx512bf16", lambda: True)
    monkeypatch.setattr(ops, "gemm_4bit_forward_kernel", None, raising=False)
    assert _compat.bnb_optional_cpu_kernel() == "missing"
    monkeypatch.setattr(ops, "gemm_4bit_forward_kernel", object())
    assert _compat.bnb_optional_cpu_kernel() == "loaded"
    monkeypatch.delattr(ops, "gemm_4bit_forward_kernel")
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        assert _compat.bnb_optional_cpu_kernel() is None  # the demo then passes bitsandbytes' lines through
    assert len(off_lines(caplog)) == 1
