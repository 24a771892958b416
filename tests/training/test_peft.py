"""PEFT on CodeLlamaForCausalLM with no target_modules: Llama's defaults, training, reloading, merging, QLoRA."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest

torch = pytest.importorskip("torch")
peft = pytest.importorskip("peft")

HAS_CUDA = torch.cuda.is_available()
gpu = [pytest.mark.gpu, pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA device; CI has none")]

# Every PEFT table keyed by model type must give our model type Llama's entry; checked in fresh interpreters, in
# both import orders, and with a find_spec probe (Transformers' is_peft_available) before the import.
PROBE = textwrap.dedent("""
    import importlib.util, json, sys
    order = sys.argv[1]
    if order == "peft-first":
        import peft
    else:
        sys.modules["peft"] = None  # as if peft were not installed: importing codellama_hf must not need it
    import codellama_hf
    before = "peft" in sys.modules and sys.modules["peft"] is not None
    if order != "peft-first":
        del sys.modules["peft"]
        assert importlib.util.find_spec("peft") is not None
    import peft
    from peft.tuners.adaption_prompt.config import TRANSFORMERS_MODEL_CONFIG
    from peft.utils import constants
    tables = {n: t for n, t in vars(constants).items() if n.startswith("TRANSFORMERS_MODELS_TO_")
              and isinstance(t, dict) and "llama" in t}
    tables["adaption_prompt"] = TRANSFORMERS_MODEL_CONFIG
    print(json.dumps({"peft_imported_by_codellama_hf": before and order != "peft-first",
                      "tables": len(tables), "ours_equal_llama": [n for n, t in tables.items()
                                                                  if t.get("codellama_hf") == t["llama"]]}))
""")


@pytest.mark.parametrize("order", ["codellama-first", "peft-first"])
def test_every_peft_table_gets_llamas_entry_in_either_import_order(order):
    done = subprocess.run([sys.executable, "-c", PROBE, order], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert out["peft_imported_by_codellama_hf"] is False
    assert out["tables"] > 20 and len(out["ours_equal_llama"]) == out["tables"]


def test_the_peft_tables_we_patch_still_have_the_shape_we_copy_into(tiny_config):
    """peft_defaults.py copies Llama's row of each model-type table; this fails first when PEFT moves or reshapes
    them (or Llama's rows name modules our model lacks), so that the patch is revisited, not silently wrong."""
    from peft.tuners.adaption_prompt import config as adaption_prompt
    from peft.utils import constants

    from codellama_hf import CodeLlamaForCausalLM
    from codellama_hf.training.peft_defaults import register_peft_defaults

    done = register_peft_defaults()
    assert "TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING" in done
    assert "adaption_prompt.TRANSFORMERS_MODEL_CONFIG" in done
    names = {n.rsplit(".", 1)[-1] for n, _ in CodeLlamaForCausalLM(tiny_config).named_modules()}
    for name in done:
        table = (adaption_prompt.TRANSFORMERS_MODEL_CONFIG if name.startswith("adaption_prompt.")
                 else getattr(constants, name))
        assert isinstance(table, dict) and table["codellama_hf"] == table["llama"], name
        row = table["llama"]
        modules = [row.target_modules] if name.startswith("adaption_prompt.") else row
        assert isinstance(modules, list) and set(modules) <= names, (name, modules)


def _batch(vocab: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, vocab, (4, 24), generator=g)
    return {"input_ids": ids, "labels": ids.clone()}


@pytest.fixture
def tiny_base(tiny_config, tmp_path):
    """A tiny CodeLlamaForCausalLM saved as a folder (its path is what adapters record)."""
    from codellama_hf import CodeLlamaForCausalLM

    torch.manual_seed(0)
    CodeLlamaForCausalLM(tiny_config).save_pretrained(tmp_path / "base")
    return tmp_path / "base"


def _load(folder, **kwargs):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(folder, **kwargs)


def test_lora_without_target_modules_trains_and_reloads(tiny_base, tmp_path):
    from peft import AutoPeftModelForCausalLM, LoraConfig, PeftModel, get_peft_model

    model = get_peft_model(_load(tiny_base), LoraConfig(task_type="CAUSAL_LM", r=4))
    assert sorted(model.peft_config["default"].target_modules) == ["q_proj", "v_proj"]  # Llama's default
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n for n in trainable)
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    batch = _batch(model.config.vocab_size)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    losses = []
    for step in range(8):
        loss = model(**batch).loss
        loss.backward()
        grads = {n: p.grad.abs().sum().item() for n, p in model.named_parameters() if p.requires_grad}
        lora_b = [g for n, g in grads.items() if "lora_B" in n]
        assert all(g > 0 for g in lora_b) and (step == 0 or all(g > 0 for g in grads.values()))
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    assert losses[-1] < losses[0] - 0.05
    assert all(torch.equal(p, frozen[n]) for n, p in model.named_parameters() if n in frozen)

    model.eval()
    with torch.no_grad():
        logits = model(input_ids=batch["input_ids"]).logits
    model.save_pretrained(tmp_path / "adapter")
    reloaded = PeftModel.from_pretrained(_load(tiny_base), tmp_path / "adapter").eval()
    auto = AutoPeftModelForCausalLM.from_pretrained(tmp_path / "adapter").eval()  # base from the adapter's record
    with torch.no_grad():
        assert torch.equal(reloaded(input_ids=batch["input_ids"]).logits, logits)
        assert torch.equal(auto(input_ids=batch["input_ids"]).logits, logits)
        assert not torch.allclose(_load(tiny_base)(input_ids=batch["input_ids"]).logits, logits, atol=1e-3)


def test_merge_and_unload_on_a_bf16_base_saves_and_reloads_as_codellama(tiny_base, tmp_path):
    """bf16 tolerance: merging rounds W + s·BA to bf16 once per weight (relative error up to 2**-9), where the
    PEFT model adds the fp32 adapter's output to the bf16 layer's output, and the logits come out in bf16 (steps of
    2**-7 relative): the two agree to a few bf16 steps of the largest logit, while the adapter moves them by more
    than ten times that."""
    from peft import LoraConfig, get_peft_model

    from codellama_hf import CodeLlamaForCausalLM

    base = _load(tiny_base, dtype=torch.bfloat16)
    model = get_peft_model(base, LoraConfig(task_type="CAUSAL_LM", r=8, lora_alpha=16)).eval()
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:  # a trained adapter's B is no longer zero
                p.copy_(torch.randn(p.shape, generator=g) * 0.05)
    ids = _batch(model.config.vocab_size)["input_ids"]
    with torch.no_grad():
        peft_logits = model(input_ids=ids).logits.float()
        base_logits = _load(tiny_base, dtype=torch.bfloat16)(input_ids=ids).logits.float()
    merged = model.merge_and_unload()
    merged.save_pretrained(tmp_path / "merged")
    reloaded = _load(tmp_path / "merged").eval()
    assert type(reloaded) is CodeLlamaForCausalLM and reloaded.dtype == torch.bfloat16
    assert json.loads((tmp_path / "merged" / "config.json").read_text())["model_type"] == "codellama_hf"
    with torch.no_grad():
        merged_logits = merged(input_ids=ids).logits.float()
        reloaded_logits = reloaded(input_ids=ids).logits.float()
    assert torch.equal(reloaded_logits, merged_logits)  # saving and loading is exact
    tolerance = 4 * torch.finfo(torch.bfloat16).eps * peft_logits.abs().max().item()  # 4 bf16 steps at the top
    assert (merged_logits - peft_logits).abs().max().item() < tolerance
    assert (base_logits - peft_logits).abs().max().item() > 10 * tolerance  # the adapter mattered


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=gpu)])
def test_qlora_trains_with_trainer_on_fim_data(converted_checkpoint, device, tmp_path):
    """The QLoRA recipe of docs/fine-tuning.md: nf4 base, prepare_model_for_kbit_training, default LoRA, Trainer."""
    from datasets import Dataset
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training
    from transformers import AutoTokenizer, BitsAndBytesConfig, Trainer, TrainingArguments

    from codellama_hf.training import FIMTransform, fim_data_collator
    from tests.fixtures_tokenizer import stdlib_snippets

    folder = converted_checkpoint("CodeLlama-7b", n_layers=2)
    tok = AutoTokenizer.from_pretrained(folder)
    quantization = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                                      bnb_4bit_compute_dtype=torch.bfloat16, bnb_4bit_use_double_quant=True)
    model = _load(folder, quantization_config=quantization, device_map={"": device})
    assert model.is_loaded_in_4bit
    model = prepare_model_for_kbit_training(model, gradient_checkpointing_kwargs={"use_reentrant": False})
    model = get_peft_model(model, LoraConfig(task_type="CAUSAL_LM", r=8, lora_alpha=16))
    docs = Dataset.from_dict({"text": stdlib_snippets(8, seed=11, max_chars=200)})
    train = docs.map(FIMTransform(tok, max_length=128), batched=True, with_indices=True, remove_columns=["text"])
    args = TrainingArguments(output_dir=str(tmp_path / "out"), max_steps=20, per_device_train_batch_size=8,
                             learning_rate=2e-2, logging_steps=5, save_strategy="no", report_to=[],
                             use_cpu=device == "cpu", dataloader_pin_memory=False, disable_tqdm=True)
    trainer = Trainer(model=model, args=args, train_dataset=train, data_collator=fim_data_collator(tok))
    trainer.train()
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    assert len(losses) == 4 and losses[-1] < 0.7 * losses[0], losses
