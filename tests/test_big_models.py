"""All 12 variant structures, converted from synthetic Meta checkpoints, loaded the five ways people run big models.

Each checkpoint keeps its variant's real head and kv-head counts, Meta's shard count, the real vocab and rope theta,
with width (head_dim 8) and depth (2 layers) shrunk. bitsandbytes 0.50 quantizes on CPU, so CI loads 8-bit and 4-bit
for real; the same loads on a CUDA device are marked `gpu`.
"""

from __future__ import annotations

import pytest

from codellama_hf.variants import VARIANTS

PROMPT = [1, 306, 4, 87, 2012, 29871, 500, 31000]  # ids across the vocab, control range excluded
NEW_TOKENS = 6

try:
    import torch

    HAS_CUDA = torch.cuda.is_available()
except ImportError:  # pragma: no cover
    HAS_CUDA = False
gpu = [pytest.mark.gpu, pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA device; CI has none")]
DEVICES = ["cpu", pytest.param("cuda", marks=gpu)]


@pytest.fixture(scope="module")
def checkpoint(converted_checkpoint):
    """checkpoint(variant) -> a converted bf16 folder with the variant's real vocab."""
    return lambda variant: converted_checkpoint(variant, dtype="bfloat16", n_layers=2, vocab=None)


@pytest.fixture(scope="module")
def reference():
    """reference(variant, folder) -> (greedy tokens, prompt logits) of the plain bf16 load, computed once."""
    cache = {}

    def get(variant, folder):
        if variant not in cache:
            cache[variant] = run(load(folder))
        return cache[variant]

    return get


def load(folder, **kwargs):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(folder, dtype=torch.bfloat16, **kwargs).eval()


def run(model):
    """Greedy tokens and the prompt's last-position logits, on the model's first device."""
    device = "cuda:0" if any(p.device.type == "cuda" for p in model.parameters()) else "cpu"
    ids = torch.tensor([PROMPT], device=device)
    with torch.no_grad():
        logits = model(ids).logits[0, -1].float().cpu()
        tokens = model.generate(ids, max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS, do_sample=False)
    assert tokens.shape == (1, len(PROMPT) + NEW_TOKENS) and torch.isfinite(logits).all()
    return tokens[0, len(PROMPT):].cpu().tolist(), logits


def bnb(bits: int, **extra):
    from transformers import BitsAndBytesConfig

    if bits == 8:
        return BitsAndBytesConfig(load_in_8bit=True, **extra)
    return BitsAndBytesConfig(**{"load_in_4bit": True, "bnb_4bit_quant_type": "nf4", "bnb_4bit_use_double_quant": True,
                                 "bnb_4bit_compute_dtype": torch.bfloat16, **extra})


def cosine(a, b) -> float:
    return torch.nn.functional.cosine_similarity(a, b, dim=0).item()


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("variant", VARIANTS)
def test_a_bf16(checkpoint, reference, variant, device):
    folder = checkpoint(variant)
    model = load(folder, device_map={"": 0 if device == "cuda" else "cpu"})
    assert model.config.variant == variant and model.dtype == torch.bfloat16
    assert model.model.embed_tokens.weight.shape[0] == model.config.vocab_size  # the real 32000/32016 rows
    tokens, _ = run(model)
    if device == "cpu":
        assert tokens == reference(variant, folder)[0]  # loading twice gives the same model


@pytest.mark.parametrize("variant", VARIANTS)
def test_b_auto_device_map_with_part_on_disk_gives_the_same_tokens(checkpoint, reference, variant, tmp_path):
    from transformers import AutoConfig

    from codellama_hf.memory import module_bytes

    folder = checkpoint(variant)
    sizes = module_bytes(AutoConfig.from_pretrained(folder))
    # accelerate keeps room on cpu for the largest module, the embedding at this width (see test_memory.py):
    # room for it, the embedding itself and one and a half layers keeps layer 0 on cpu and sends layer 1 to disk.
    budget = 2 * sizes["model.embed_tokens"] + 3 * sizes["model.layers.0"] // 2
    model = load(folder, device_map="auto", max_memory={"cpu": budget}, offload_folder=tmp_path)
    assert {"cpu", "disk"} <= set(model.hf_device_map.values())
    assert run(model)[0] == reference(variant, folder)[0]


@pytest.mark.parametrize("variant", VARIANTS)
def test_c_explicit_cpu_disk_map_gives_the_same_tokens(checkpoint, reference, variant, tmp_path):
    from transformers import AutoConfig

    from codellama_hf.device_maps import cpu_disk_device_map
    from codellama_hf.memory import module_bytes

    folder = checkpoint(variant)
    config = AutoConfig.from_pretrained(folder)
    sizes = module_bytes(config)
    budget = sizes["model.embed_tokens"] + sizes["model.layers.0"] + sizes["model.norm"]  # layer 1 must go to disk
    device_map = cpu_disk_device_map(config, cpu_memory=budget)
    assert device_map["model.layers.0"] == "cpu" and device_map["model.layers.1"] == "disk"  # really mixed
    model = load(folder, device_map=device_map, offload_folder=tmp_path)
    assert model.hf_device_map == device_map
    assert run(model)[0] == reference(variant, folder)[0]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("variant", VARIANTS)
def test_d_8bit(checkpoint, reference, variant, device):
    pytest.importorskip("bitsandbytes")
    folder = checkpoint(variant)
    model = load(folder, quantization_config=bnb(8), device_map={"": 0 if device == "cuda" else "cpu"})
    assert type(model.model.layers[1].self_attn.k_proj).__name__ == "Linear8bitLt"
    assert model.model.layers[1].self_attn.k_proj.weight.dtype == torch.int8
    _, logits = run(model)
    assert cosine(logits, reference(variant, folder)[1]) > 0.99  # close to bf16: the int8 weights are the model's


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("variant", VARIANTS)
def test_e_4bit_nf4_double_quant_bf16_compute(checkpoint, reference, variant, device):
    pytest.importorskip("bitsandbytes")
    folder = checkpoint(variant)
    model = load(folder, quantization_config=bnb(4), device_map={"": 0 if device == "cuda" else "cpu"})
    proj = model.model.layers[1].mlp.down_proj
    assert type(proj).__name__ == "Linear4bit" and proj.compute_dtype == torch.bfloat16
    assert proj.weight.quant_state.quant_type == "nf4" and proj.weight.quant_state.nested  # double quantization
    _, logits = run(model)
    assert cosine(logits, reference(variant, folder)[1]) > 0.9  # 4 bits per weight: close, not equal


@pytest.mark.parametrize("bits", [8, 4, "4-not-nested"])
def test_quantized_model_saves_and_reloads_without_quantizing_again(checkpoint, tmp_path, bits):
    pytest.importorskip("bitsandbytes")
    from transformers import AutoModelForCausalLM

    folder = checkpoint("CodeLlama-13b-Instruct")  # 2 shards in Meta's download
    config = bnb(8) if bits == 8 else bnb(4, bnb_4bit_use_double_quant=bits == 4)
    model = load(folder, quantization_config=config)
    loaded = {k: v.clone() for k, v in model.state_dict().items()}
    tokens, logits = run(model)  # on an AVX512-BF16 CPU, bitsandbytes repacks the 4-bit weights here, in place
    model.save_pretrained(tmp_path)
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path).eval()  # no quantization_config: it is in config.json
    assert reloaded.is_quantized and reloaded.hf_quantizer.pre_quantized
    kind = "Linear8bitLt" if bits == 8 else "Linear4bit"
    assert type(reloaded.model.layers[0].self_attn.q_proj).__name__ == kind
    # What save and reload must keep: the loaded bits (weights, scales, every quant-state field) and compute dtype.
    # A reload that re-quantized, or changed a dtype or a field, fails here; so does a save that changed the model.
    for state in (reloaded.state_dict(), model.state_dict()):
        assert state.keys() == loaded.keys()
        for name, tensor in loaded.items():
            assert tensor.dtype == state[name].dtype and torch.equal(tensor, state[name]), name
    assert [getattr(m, "compute_dtype", None) for m in model.modules()] == [
        getattr(m, "compute_dtype", None) for m in reloaded.modules()]
    again, again_logits = run(reloaded)
    assert again == tokens
    # The same bits on the same kernels; still compared with a tolerance, as nothing promises bitwise-equal logits
    # across loads (a fresh dequantized buffer per matmul). A changed model moves them far more: the state check
    # above is the exact one.
    torch.testing.assert_close(again_logits, logits, rtol=0.03, atol=0.03)


def test_8bit_with_cpu_and_disk_offload_needs_the_fp32_flag_and_then_works(checkpoint, reference, tmp_path):
    pytest.importorskip("bitsandbytes")
    from transformers import AutoConfig

    from codellama_hf.device_maps import cpu_disk_device_map
    from codellama_hf.memory import module_bytes

    folder = checkpoint("CodeLlama-34b")
    config = AutoConfig.from_pretrained(folder)
    sizes = module_bytes(config)
    device_map = cpu_disk_device_map(config, cpu_memory=sizes["model.embed_tokens"] + sizes["model.layers.0"])
    with pytest.raises(ValueError, match="llm_int8_enable_fp32_cpu_offload=True"):
        load(folder, quantization_config=bnb(8), device_map=device_map, offload_folder=tmp_path)
    model = load(folder, quantization_config=bnb(8, llm_int8_enable_fp32_cpu_offload=True), device_map=device_map,
                 offload_folder=tmp_path)
    # Offloaded modules stay unquantized, in the loading dtype: on a CPU-only machine that is all of them.
    assert type(model.model.layers[1].mlp.up_proj).__name__ == "Linear"
    assert run(model)[0] == reference("CodeLlama-34b", folder)[0]


@pytest.mark.parametrize("key", ["load_in_8bit", "load_in_4bit"])
def test_transformers_4_quantization_keywords_point_to_bitsandbytes_config(checkpoint, key):
    from codellama_hf.errors import UserInputError

    with pytest.raises(UserInputError, match=rf"{key}=True was removed in Transformers 5; pass "
                                             rf"quantization_config=BitsAndBytesConfig\({key}=True"):
        load(checkpoint("CodeLlama-7b"), **{key: True})


@pytest.mark.parametrize("variant", ["CodeLlama-34b", "CodeLlama-70b-Instruct"])
@pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA device; CI has none")
@pytest.mark.gpu
def test_8bit_on_gpu_with_cpu_overflow_quantizes_what_is_on_the_gpu(checkpoint, variant, tmp_path):
    folder = checkpoint(variant)
    device_map = {"model.embed_tokens": 0, "model.layers.0": 0, "model.layers.1": "cpu", "model.norm": "cpu",
                  "model.rotary_emb": "cpu", "lm_head": "cpu"}
    model = load(folder, quantization_config=bnb(8, llm_int8_enable_fp32_cpu_offload=True), device_map=device_map)
    assert type(model.model.layers[0].mlp.up_proj).__name__ == "Linear8bitLt"
    assert type(model.model.layers[1].mlp.up_proj).__name__ == "Linear"
    run(model)
