import copy
import json
import os
import re

import pytest
import torch
from transformers import AutoModel, AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

from codellama_hf import CodeLlamaConfig, CodeLlamaForCausalLM, CodeLlamaModel
from tests.conftest import TINY

IDS = torch.tensor([[1, 5, 17, 300, 42, 7, 99, 3]])


def logits(model, ids=IDS, **kw):
    with torch.no_grad():
        return model(ids, **kw).logits


def test_save_load_round_trip_through_auto_and_direct_classes(tiny_model, tmp_path):
    tiny_model.save_pretrained(tmp_path)
    assert json.loads((tmp_path / "config.json").read_text())["model_type"] == "codellama_hf"
    assert (tmp_path / "model.safetensors").is_file()
    for cls in (CodeLlamaForCausalLM, AutoModelForCausalLM):
        again = cls.from_pretrained(tmp_path)
        assert type(again) is CodeLlamaForCausalLM and type(again.config) is CodeLlamaConfig
        assert again.config.variant == "CodeLlama-7b" and again.config.fim_token_ids["eot_token_id"] == 32010
        assert_same_weights(again, tiny_model)
        torch.testing.assert_close(logits(again), logits(tiny_model))
    base = AutoModel.from_pretrained(tmp_path)
    assert type(base) is CodeLlamaModel
    assert_same_weights(base, tiny_model.model)
    torch.testing.assert_close(base(IDS).last_hidden_state, tiny_model.model(IDS).last_hidden_state)


def assert_same_weights(model, reference):
    """A save and load keeps every bit of the weights (safetensors promises it); outputs computed from another
    allocation on another load path are only compared to fp32 tolerance, as no kernel promises more."""
    got, want = model.state_dict(), reference.state_dict()
    assert got.keys() == want.keys() and all(torch.equal(got[k], want[k]) for k in want)


def with_attention(cls, config, impl: str, state_dict):
    config = copy.deepcopy(config)  # the fixture's config is shared with tiny_model, which must stay on sdpa
    config._attn_implementation = impl
    model = cls(config).eval()
    model.load_state_dict(state_dict)
    assert model.config._attn_implementation == impl
    return model


def upstream_defect(impl: str, stock_logits: torch.Tensor | Exception, sdpa_logits: torch.Tensor) -> str | None:
    """Why stock Llama itself cannot be the reference for `impl` on this CPU, or None when it can."""
    where = (f"on this CPU (torch {torch.__version__}, CPU capability {torch.backends.cpu.get_cpu_capability()}; "
             f"ATEN_CPU_CAPABILITY={os.environ.get('ATEN_CPU_CAPABILITY', 'unset')})")
    if isinstance(stock_logits, Exception):
        return f"upstream defect: stock LlamaForCausalLM with {impl} raises {where}: {str(stock_logits)[:200]}"
    if not torch.isfinite(stock_logits).all():
        return f"upstream defect: stock LlamaForCausalLM with {impl} gives non-finite logits {where}; use sdpa"
    diff = (stock_logits - sdpa_logits).abs().max().item()
    if diff > 1e-4:
        return (f"upstream defect: stock LlamaForCausalLM with {impl} differs from its sdpa logits by {diff:.3g} "
                f"{where}; use sdpa")
    return None


@pytest.mark.parametrize("impl", ["eager", "flex_attention"])
def test_attention_implementations_agree_with_stock_llama_and_sdpa(tiny_config, tiny_model, impl):
    # Our classes add nothing to Llama's attention: the truth is stock Llama with the same implementation.
    weights = tiny_model.state_dict()
    sdpa = logits(tiny_model)
    stock_config = LlamaConfig(**{k: v for k, v in tiny_config.to_dict().items() if k in LlamaConfig().to_dict()})
    try:
        stock = logits(with_attention(LlamaForCausalLM, stock_config, impl, weights))
    except Exception as e:  # noqa: BLE001 - e.g. inductor failing to compile flex attention for this CPU
        stock = e
    if reason := upstream_defect(impl, stock, sdpa):
        pytest.skip(reason)
    ours = logits(with_attention(CodeLlamaForCausalLM, tiny_config, impl, weights))
    assert torch.isfinite(ours).all()
    assert torch.allclose(ours, stock, atol=1e-5)
    assert torch.allclose(ours, sdpa, atol=1e-4)


def test_kv_cache_gives_the_same_logits_as_a_full_forward(tiny_model):
    with torch.no_grad():
        past = tiny_model(IDS[:, :5], use_cache=True).past_key_values
        step = tiny_model(IDS[:, 5:], past_key_values=past).logits
    assert torch.allclose(step, logits(tiny_model)[:, 5:], atol=1e-5)


def test_greedy_generate_with_and_without_cache(tiny_model):
    kw = dict(max_new_tokens=6, do_sample=False, pad_token_id=2)
    with_cache = tiny_model.generate(IDS, use_cache=True, **kw)
    without = tiny_model.generate(IDS, use_cache=False, **kw)
    assert with_cache.shape == (1, IDS.shape[1] + 6)
    assert torch.equal(with_cache, without)


def test_gradient_checkpointing_gives_the_same_gradients(tiny_config, tiny_model):
    def grads(model):
        model.train()
        model.zero_grad()
        model(IDS, labels=IDS).loss.backward()
        return {n: p.grad.clone() for n, p in model.named_parameters()}

    plain = grads(tiny_model)
    ckpt = CodeLlamaForCausalLM(tiny_config)
    ckpt.load_state_dict(tiny_model.state_dict())
    if hasattr(ckpt, "activation_checkpointing_enable"):  # Transformers 5.2x's name
        ckpt.activation_checkpointing_enable()
        assert ckpt.is_activation_checkpointing
    else:  # Transformers 5.19's
        ckpt.gradient_checkpointing_enable()
        assert ckpt.is_gradient_checkpointing
    got = grads(ckpt)
    assert all(torch.allclose(got[n], plain[n], atol=1e-6) for n in plain)


def test_device_map_and_tensor_parallel_plans_are_llamas(tiny_model):
    assert set(tiny_model._no_split_modules) == set(LlamaForCausalLM._no_split_modules) == {"LlamaDecoderLayer"}
    assert CodeLlamaConfig.base_model_tp_plan == LlamaConfig.base_model_tp_plan
    assert tiny_model.tp_plan == LlamaForCausalLM(LlamaConfig(**TINY, vocab_size=512)).tp_plan
    assert tiny_model.tp_plan["lm_head"] == "colwise_gather_output"


def test_device_map_offload_splits_between_decoder_layers_never_inside(tmp_path):
    model = CodeLlamaForCausalLM(CodeLlamaConfig(**(TINY | dict(num_hidden_layers=6)), vocab_size=256)).eval()
    model.save_pretrained(tmp_path)
    # Too little RAM for the model: accelerate keeps some layers in RAM and offloads the rest to disk.
    sharded = CodeLlamaForCausalLM.from_pretrained(tmp_path, device_map="auto", max_memory={"cpu": "500KB"},
                                                   offload_folder=tmp_path / "offload")
    placed = sharded.hf_device_map
    assert placed["model.layers.0"] == "cpu" and placed["model.layers.5"] == "disk"
    assert not any(re.search(r"layers\.\d+\.", name) for name in placed)
    torch.testing.assert_close(logits(sharded, IDS % 256), logits(model, IDS % 256))  # offloaded: other buffers


def test_stock_llama_folder_loads_through_the_package(tmp_path):
    torch.manual_seed(0)
    # A stock Llama checkpoint shaped like CodeLlama-70b-Python apart from width and depth
    stock_cfg = LlamaConfig(**TINY, vocab_size=32016, rope_parameters={"rope_theta": 1e4, "rope_type": "default"},
                            max_position_embeddings=4096, rms_norm_eps=1e-5)
    stock = LlamaForCausalLM(stock_cfg).eval()
    stock.save_pretrained(tmp_path)
    assert json.loads((tmp_path / "config.json").read_text())["model_type"] == "llama"
    ours = CodeLlamaForCausalLM.from_pretrained(tmp_path)
    assert type(ours.config) is CodeLlamaConfig and ours.config.variant is None  # width and depth fit no preset
    assert_same_weights(ours, stock)
    torch.testing.assert_close(logits(ours), logits(stock))


def test_stock_llama_folder_with_real_shapes_identifies_the_variant(tmp_path):
    cfg = CodeLlamaConfig.from_variant("CodeLlama-70b-Instruct")
    stock = LlamaConfig(**{k: getattr(cfg, k) for k in ("hidden_size", "num_hidden_layers", "num_attention_heads",
                                                         "num_key_value_heads", "intermediate_size", "vocab_size",
                                                         "max_position_embeddings", "rope_parameters")})
    stock.save_pretrained(tmp_path)
    with torch.device("meta"):
        model = CodeLlamaForCausalLM(CodeLlamaConfig.from_pretrained(tmp_path))
    assert model.config.variant is None  # 70b-Python and 70b-Instruct share every shape
    assert (model.config.infilling, model.config.eot_token_id) == (False, 32010)


TP_WORKER = """
import sys, torch, torch.distributed as dist
import codellama_hf
from transformers import AutoModelForCausalLM
ids = torch.tensor([[1, 5, 17, 300, 42, 7]])
tp = AutoModelForCausalLM.from_pretrained(sys.argv[1], tp_plan="auto")
with torch.no_grad():
    out = tp(ids).logits
sharded = type(tp.model.layers[0].self_attn.q_proj.weight).__name__
if dist.get_rank() == 0:
    torch.save({"logits": out, "weight_type": sharded, "world": dist.get_world_size()}, sys.argv[2])
"""


def test_tensor_parallel_over_two_processes_matches_one(tiny_model, tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    tiny_model.save_pretrained(tmp_path / "m")
    (tmp_path / "worker.py").write_text(TP_WORKER)
    torchrun = Path(sys.executable).with_name("torchrun")
    done = subprocess.run([str(torchrun), "--nproc_per_node", "2", str(tmp_path / "worker.py"), str(tmp_path / "m"),
                           str(tmp_path / "out.pt")], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    got = torch.load(tmp_path / "out.pt", weights_only=True)
    assert got["world"] == 2 and got["weight_type"] == "DTensor"
    assert torch.allclose(got["logits"], logits(tiny_model, IDS[:, :6]), atol=1e-5)
