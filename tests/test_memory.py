"""memory.py and device_maps.py against independent truths: the meta device at full size, real loads at small size."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from codellama_hf.variants import VARIANTS

QUANTIZED = {  # name -> (BitsAndBytesConfig kwargs, memory.py kwargs)
    "8bit": (dict(load_in_8bit=True), dict(quantization="8bit")),
    "4bit-nf4-double": (dict(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True),
                        dict(quantization="4bit", double_quant=True)),
    "4bit-fp4": (dict(load_in_4bit=True), dict(quantization="4bit", double_quant=False)),
}


def meta_model(variant: str, dtype: str = "bfloat16"):
    import torch

    from codellama_hf import CodeLlamaConfig, CodeLlamaForCausalLM

    with torch.device("meta"):
        return CodeLlamaForCausalLM(CodeLlamaConfig.from_variant(variant)).to(getattr(torch, dtype))


@pytest.mark.parametrize("dtype", ["bfloat16", "float16", "float32"])
@pytest.mark.parametrize("variant", VARIANTS)
def test_weight_bytes_per_module_equal_the_full_size_model_on_meta(variant, dtype):
    from codellama_hf import CodeLlamaConfig
    from codellama_hf.memory import module_bytes, weights_bytes

    model = meta_model(variant, dtype)
    truth = {}
    for name, p in model.named_parameters():
        module = ".".join(name.split(".")[:3]) if name.startswith("model.layers.") else name.rsplit(".", 1)[0]
        truth[module] = truth.get(module, 0) + p.numel() * p.element_size()
    sizes = module_bytes(CodeLlamaConfig.from_variant(variant), dtype=dtype)
    assert {m: n for m, n in sizes.items() if n} == truth
    assert weights_bytes(CodeLlamaConfig.from_variant(variant), dtype=dtype) == sum(truth.values())


def bnb_held_bytes(model) -> int:
    """Every tensor the loaded model holds for its weights: parameters plus bitsandbytes' quantization state."""
    import torch

    held = {}

    def add(t):
        if isinstance(t, torch.Tensor):  # keyed by storage: a tensor shared between modules counts once
            held[(t.data_ptr(), t.numel(), t.dtype)] = t.numel() * t.element_size()

    for p in model.parameters():
        add(p)
    for module in model.modules():
        weight = getattr(module, "weight", None)
        add(getattr(weight, "SCB", None))
        qs = getattr(weight, "quant_state", None)
        if qs is not None:
            for t in (qs.absmax, qs.code, qs.offset, qs.state2 and qs.state2.absmax, qs.state2 and qs.state2.code):
                add(t)
    return sum(held.values())


@pytest.mark.parametrize("kind", list(QUANTIZED))
def test_quantized_bytes_equal_what_bitsandbytes_allocates(converted_checkpoint, kind):
    pytest.importorskip("bitsandbytes")
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, BitsAndBytesConfig

    from codellama_hf.memory import module_bytes, weights_bytes

    folder = converted_checkpoint("CodeLlama-34b", dtype="bfloat16", n_layers=2, head_dim=16)
    bnb, ours = QUANTIZED[kind]
    quantization_config = BitsAndBytesConfig(**bnb, bnb_4bit_compute_dtype=torch.bfloat16)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.bfloat16, quantization_config=quantization_config)
    assert type(model.model.layers[0].mlp.up_proj).__name__ == ("Linear8bitLt" if "8bit" in kind else "Linear4bit")
    config = AutoConfig.from_pretrained(folder)
    assert weights_bytes(config, **ours) == bnb_held_bytes(model)
    # get_memory_footprint counts parameters only: bitsandbytes' scales and absmax are attributes beside them
    assert sum(module_bytes(config, state=False, **ours).values()) == model.get_memory_footprint(return_buffers=False)


def test_kv_cache_bytes_equal_a_real_cache(tiny_model, tiny_config):
    import torch

    from codellama_hf.memory import kv_cache_bytes

    batch, context = 3, 17
    with torch.no_grad():
        cache = tiny_model(torch.randint(3, 400, (batch, context)), use_cache=True).past_key_values
    held = sum(t.numel() * t.element_size() for layer in cache.layers for t in (layer.keys, layer.values))
    assert kv_cache_bytes(tiny_config, context=context, batch=batch, dtype="float32") == held


def test_estimate_memory_adds_up_and_fits_by_the_stated_headroom():
    from codellama_hf.memory import estimate_memory
    from codellama_hf_core.memory import GPUS_GIB, HEADROOM

    e = estimate_memory("CodeLlama-34b", quantization="4bit", context=4096, batch=2)
    assert e.total_bytes == e.weights_bytes + e.kv_cache_bytes
    assert e.kv_cache_bytes == 2 * 48 * 2 * 4096 * 8 * 128 * 2  # k+v, layers, batch, context, kv heads, head dim, bf16
    for gib in GPUS_GIB:
        assert e.fits[f"{gib}GB GPU"] == (e.total_bytes <= (1 - HEADROOM) * gib * 2**30)
    bf16 = estimate_memory("CodeLlama-34b", context=4096, batch=2)
    assert bf16.weights_bytes > 3.5 * e.weights_bytes  # 4-bit keeps embeddings and lm_head in bf16
    assert estimate_memory("CodeLlama-70b-Python").context == 4096  # the variant's own context by default


@pytest.mark.parametrize("quantization", ["none", "4bit"])
def test_auto_device_map_is_what_from_pretrained_makes(converted_checkpoint, tmp_path, quantization):
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from codellama_hf.device_maps import _quantization_config, auto_device_map
    from codellama_hf.memory import weights_bytes

    if quantization != "none":
        pytest.importorskip("bitsandbytes")
    folder = converted_checkpoint("CodeLlama-13b", dtype="bfloat16", n_layers=4, head_dim=16)
    config = AutoConfig.from_pretrained(folder)
    budget = {"cpu": int(0.8 * weights_bytes(config, quantization=quantization))}
    planned = auto_device_map(config, max_memory=budget, quantization=quantization)
    kwargs = {} if quantization == "none" else {"quantization_config": _quantization_config(quantization, "bfloat16")}
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.bfloat16, device_map="auto", max_memory=budget,
                                                 offload_folder=tmp_path, **kwargs)
    assert {"cpu", "disk"} <= set(planned.values())  # a real split, not the trivial all-cpu map
    assert model.hf_device_map == planned


@pytest.mark.parametrize("variant", VARIANTS)
def test_cpu_disk_map_at_half_the_bytes_leaves_at_most_one_decoder_layer_unused(variant):
    from codellama_hf import CodeLlamaConfig
    from codellama_hf.device_maps import cpu_disk_device_map
    from codellama_hf.memory import module_bytes

    config = CodeLlamaConfig.from_variant(variant)
    sizes = module_bytes(config)
    budget = sum(sizes.values()) // 2
    plan = cpu_disk_device_map(config, cpu_memory=budget)
    assert plan.keys() == sizes.keys()
    kept = sum(sizes[m] for m, d in plan.items() if d == "cpu")
    assert kept <= budget
    assert budget - kept < sizes["model.layers.0"]  # at most one decoder layer of the budget unused
    assert plan["model.layers.0"] == "cpu" and plan[f"model.layers.{config.num_hidden_layers - 1}"] == "disk"


def test_cpu_disk_map_keeps_layers_in_ram_where_accelerates_planner_keeps_none(converted_checkpoint):
    # The measurement: a narrow 34b-shaped checkpoint, half its bytes allowed, the embedding the largest module.
    from transformers import AutoConfig

    from codellama_hf.device_maps import auto_device_map, cpu_disk_device_map
    from codellama_hf.memory import module_bytes

    config = AutoConfig.from_pretrained(converted_checkpoint("CodeLlama-34b", dtype="bfloat16", n_layers=4,
                                                             vocab=None))
    sizes = module_bytes(config)
    budget = sum(sizes.values()) // 2
    plans = {"stock": auto_device_map(config, max_memory={"cpu": budget}),
             "ours": cpu_disk_device_map(config, cpu_memory=budget)}
    on_cpu = {name: [m for m, d in plan.items() if d == "cpu" and sizes.get(m)] for name, plan in plans.items()}
    assert not any(m.startswith("model.layers.") for m in on_cpu["stock"])
    assert on_cpu["ours"] == ["model.embed_tokens", "model.layers.0", "model.layers.1"]
    assert budget - sum(sizes[m] for m in on_cpu["ours"]) < sizes["model.layers.0"]


def test_cpu_disk_map_with_room_for_everything_keeps_everything_in_ram():
    from codellama_hf.device_maps import cpu_disk_device_map

    assert set(cpu_disk_device_map("CodeLlama-7b", cpu_memory="13GiB").values()) == {"cpu"}
    assert set(cpu_disk_device_map("CodeLlama-7b", cpu_memory="100MB").values()) == {"cpu", "disk"}  # rotary only


@pytest.mark.parametrize("spec, message", [
    ("gpu=3GB", "unknown device 'gpu'"), ("0=lots", "cannot read the size 'lots'"), ("", "names no device")])
def test_max_memory_errors_name_the_value(spec, message):
    from codellama_hf.device_maps import parse_max_memory
    from codellama_hf.errors import UserInputError

    with pytest.raises(UserInputError, match=message):
        parse_max_memory(spec)


def test_parse_max_memory_reads_the_cli_spec():
    from codellama_hf.device_maps import parse_max_memory

    assert parse_max_memory("0=24GiB, 1=500MB,cpu=64GiB") == {0: 24 * 2**30, 1: 500 * 10**6, "cpu": 64 * 2**30}


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "codellama_hf_cli", *args], capture_output=True, text=True)


def test_estimate_memory_cli_json_plans_70b_on_two_40gb_gpus():
    from codellama_hf import CodeLlamaConfig
    from codellama_hf.memory import kv_cache_bytes, weights_bytes

    r = run_cli("estimate-memory", "CodeLlama-70b", "--quantization", "8bit", "--context", "4096", "--batch", "2",
                "--max-memory", "0=40GiB,1=40GiB,cpu=64GiB", "--json")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    config = CodeLlamaConfig.from_variant("CodeLlama-70b")
    assert out["weights_bytes"] == weights_bytes(config, quantization="8bit")
    assert out["kv_cache_bytes"] == kv_cache_bytes(config, context=4096, batch=2)
    assert out["total_bytes"] == out["weights_bytes"] + out["kv_cache_bytes"]
    assert set(out["device_map"].values()) == {0, 1}  # 8-bit 70B fits two 40 GB GPUs, nothing offloaded
    assert sum(out["device_bytes"].values()) == out["weights_bytes"]


def test_estimate_memory_cli_errors_are_one_line():
    for args, message in ((["CodeLlama-13x"], "unknown Code Llama variant 'CodeLlama-13x'"),
                          (["CodeLlama-7b", "--context", "0"], "context 0"),
                          (["CodeLlama-7b", "--max-memory", "gpu=3GB"], "unknown device 'gpu'")):
        r = run_cli("estimate-memory", *args)
        assert r.returncode == 2 and r.stdout == ""
        assert r.stderr.count("\n") == 1 and message in r.stderr, r.stderr
