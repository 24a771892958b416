"""`import codellama_hf` registers the model type; checked in fresh interpreters so nothing leaks in."""

import json
import subprocess
import sys

import pytest

PROBE = """
import json, transformers
from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, CONFIG_MAPPING
out = {"known_before": "codellama_hf" in CONFIG_MAPPING}
import codellama_hf
cfg = AutoConfig.for_model("codellama_hf", num_hidden_layers=1, hidden_size=64, num_attention_heads=4,
                           intermediate_size=128, vocab_size=32016)
out.update(
    config=type(cfg).__name__,
    model=type(AutoModel.from_config(cfg)).__name__,
    causal_lm=type(AutoModelForCausalLM.from_config(cfg)).__name__,
    llama_config=CONFIG_MAPPING["llama"].__module__,
    llama_causal_lm=type(AutoModelForCausalLM.from_config(transformers.LlamaConfig(num_hidden_layers=1,
        hidden_size=64, num_attention_heads=4, intermediate_size=128))).__name__,
    variants=list(codellama_hf.VARIANTS),
)
print(json.dumps(out))
"""


@pytest.fixture(scope="module")
def probe():
    done = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_model_type_is_unknown_to_transformers_before_import(probe):
    assert probe["known_before"] is False


def test_auto_factories_route_to_the_package_classes(probe):
    assert (probe["config"], probe["model"], probe["causal_lm"]) == (
        "CodeLlamaConfig", "CodeLlamaModel", "CodeLlamaForCausalLM")


def test_builtin_llama_is_not_overridden(probe):
    assert probe["llama_config"].startswith("transformers.models.llama")
    assert probe["llama_causal_lm"] == "LlamaForCausalLM"


def test_import_lists_the_twelve_variants(probe):
    assert len(probe["variants"]) == 12 and probe["variants"][0] == "CodeLlama-7b"


def test_model_type_collides_with_no_transformers_name():
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING_NAMES
    from transformers.models.auto.tokenization_auto import TOKENIZER_MAPPING_NAMES

    from codellama_hf import MODEL_TYPE

    assert MODEL_TYPE not in CONFIG_MAPPING_NAMES and MODEL_TYPE not in TOKENIZER_MAPPING_NAMES
