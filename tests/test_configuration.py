import json
import math

import pytest
import torch
from huggingface_hub.errors import StrictDataclassClassValidationError

from codellama_hf import VARIANTS, CodeLlamaConfig, CodeLlamaForCausalLM
from codellama_hf.configuration import MODEL_TYPE

# The published table: hidden, layers, heads, kv heads, intermediate, vocab, rope theta, max positions
TABLE = {
    "7b": (4096, 32, 32, 32, 11008, 32016, 1e6, 16384),
    "7b-Python": (4096, 32, 32, 32, 11008, 32000, 1e6, 16384),
    "13b": (5120, 40, 40, 40, 13824, 32016, 1e6, 16384),
    "13b-Python": (5120, 40, 40, 40, 13824, 32000, 1e6, 16384),
    "34b": (8192, 48, 64, 8, 22016, 32000, 1e6, 16384),
    "70b": (8192, 80, 64, 8, 28672, 32016, 1e6, 16384),
    "70b-Python": (8192, 80, 64, 8, 28672, 32016, 1e4, 4096),
}
TABLE |= {"7b-Instruct": TABLE["7b"], "13b-Instruct": TABLE["13b"], "34b-Python": TABLE["34b"],
          "34b-Instruct": TABLE["34b"], "70b-Instruct": TABLE["70b-Python"]}


def expected_params(hidden, layers, heads, kv, inter, vocab):
    """Parameter count these shapes imply: embeddings + untied head + final norm + layers."""
    hd = hidden // heads
    attn = hidden * heads * hd + 2 * hidden * kv * hd + heads * hd * hidden
    per_layer = attn + 3 * hidden * inter + 2 * hidden
    return 2 * vocab * hidden + hidden + layers * per_layer


@pytest.mark.parametrize("name", VARIANTS)
def test_preset_matches_published_table(name):
    c = CodeLlamaConfig.from_variant(name)
    hidden, layers, heads, kv, inter, vocab, theta, max_pos = TABLE[name.removeprefix("CodeLlama-")]
    got = (c.hidden_size, c.num_hidden_layers, c.num_attention_heads, c.num_key_value_heads, c.intermediate_size,
           c.vocab_size, c.rope_parameters["rope_theta"], c.max_position_embeddings)
    assert got == (hidden, layers, heads, kv, inter, vocab, theta, max_pos)
    assert (c.bos_token_id, c.eos_token_id, c.rms_norm_eps, c.tie_word_embeddings) == (1, 2, 1e-5, False)
    assert c.dtype == torch.bfloat16 and c.model_type == MODEL_TYPE and c.variant == name


@pytest.mark.parametrize("name", VARIANTS)
def test_full_size_preset_on_meta_device_has_exact_parameter_count(name):
    c = CodeLlamaConfig.from_variant(name)
    with torch.device("meta"):
        model = CodeLlamaForCausalLM(c)
    n = sum(p.numel() for p in model.parameters())
    assert n == expected_params(*TABLE[name.removeprefix("CodeLlama-")][:6])
    assert all(p.device.type == "meta" for p in model.parameters())
    if name == "CodeLlama-7b":
        assert n == 6_738_546_688


@pytest.mark.parametrize("name", VARIANTS)
def test_infilling_ids_exist_only_in_the_32016_vocab(name):
    c = CodeLlamaConfig.from_variant(name)
    if c.vocab_size == 32016:
        assert c.fim_token_ids == {"prefix_token_id": 32007, "suffix_token_id": 32008, "middle_token_id": 32009,
                                   "eot_token_id": 32010}
    else:
        assert c.fim_token_ids is None and c.prefix_token_id is None and c.eot_token_id is None
    assert (c.step_token_id is not None) == (c.chat_format == "step")


def test_stop_ids_add_eot_for_infilling_and_step_for_70b_instruct():
    assert CodeLlamaConfig.from_variant("CodeLlama-7b").stop_token_ids == [2, 32010]
    assert CodeLlamaConfig.from_variant("CodeLlama-34b").stop_token_ids == [2]
    assert CodeLlamaConfig.from_variant("CodeLlama-70b-Python").stop_token_ids == [2]
    assert CodeLlamaConfig.from_variant("CodeLlama-70b-Instruct").stop_token_ids == [2, 32015]


def test_overrides_replace_preset_fields_and_keep_the_facts():
    c = CodeLlamaConfig.from_variant("CodeLlama-13b-Instruct", num_hidden_layers=2, max_position_embeddings=128)
    assert (c.num_hidden_layers, c.max_position_embeddings, c.hidden_size) == (2, 128, 5120)
    assert (c.flavor, c.chat_format, c.infilling) == ("instruct", "inst", True)


@pytest.mark.parametrize("field,value", [("flavor", "chat"), ("chat_format", "chatml"), ("variant", "Llama-2-7b")])
def test_invalid_facts_are_rejected(field, value):
    with pytest.raises(StrictDataclassClassValidationError, match=repr(value)):
        CodeLlamaConfig(**{field: value})


def test_save_and_reload_keeps_every_fact(tmp_path):
    c = CodeLlamaConfig.from_variant("CodeLlama-70b-Instruct", num_hidden_layers=1)
    c.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["model_type"] == MODEL_TYPE and saved["chat_format"] == "step"
    again = CodeLlamaConfig.from_pretrained(tmp_path)
    assert again.to_dict() == c.to_dict()


def _stock_llama_config(tmp_path, **fields):
    """A config.json as the hub publishes codellama/*-hf: model_type llama, rope_theta at top level."""
    base = dict(model_type="llama", architectures=["LlamaForCausalLM"], bos_token_id=1, eos_token_id=2,
                hidden_act="silu", rms_norm_eps=1e-5, torch_dtype="bfloat16", tie_word_embeddings=False)
    (tmp_path / "config.json").write_text(json.dumps(base | fields))
    return tmp_path


def _hub_fields(name):
    hidden, layers, heads, kv, inter, vocab, theta, max_pos = TABLE[name.removeprefix("CodeLlama-")]
    return dict(hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=kv,
                intermediate_size=inter, vocab_size=vocab, rope_theta=theta, max_position_embeddings=max_pos)


@pytest.mark.parametrize("name", ["CodeLlama-7b-Python", "CodeLlama-13b-Python", "CodeLlama-70b"])
def test_stock_config_identifies_the_variant_its_shapes_decide(tmp_path, name):
    c = CodeLlamaConfig.from_pretrained(_stock_llama_config(tmp_path, **_hub_fields(name)))
    ref = CodeLlamaConfig.from_variant(name)
    assert c.variant == name
    for k in ("flavor", "infilling", "chat_format", "prefix_token_id", "eot_token_id", "step_token_id",
              "max_position_embeddings"):
        assert getattr(c, k) == getattr(ref, k), k
    assert c.rope_parameters["rope_theta"] == ref.rope_parameters["rope_theta"]


@pytest.mark.parametrize("name,known", [
    ("CodeLlama-7b", {"infilling": True, "prefix_token_id": 32007}),  # base or Instruct: both infill
    ("CodeLlama-34b", {"infilling": False, "prefix_token_id": None}),  # the three 34b share every shape
    ("CodeLlama-70b-Python", {"infilling": False, "prefix_token_id": 32007}),  # Python or Instruct
])
def test_stock_config_shared_by_several_variants_says_unknown(tmp_path, name, known):
    c = CodeLlamaConfig.from_pretrained(_stock_llama_config(tmp_path, **_hub_fields(name)))
    assert (c.variant, c.flavor, c.chat_format) == (None, None, None)
    assert {k: getattr(c, k) for k in known} == known


def test_stock_config_of_a_non_code_llama_model_loads_with_facts_unknown(tmp_path):
    fields = _hub_fields("CodeLlama-7b-Python") | {"rope_theta": 10000.0, "max_position_embeddings": 4096}  # Llama 2
    c = CodeLlamaConfig.from_pretrained(_stock_llama_config(tmp_path, **fields))
    assert (c.variant, c.infilling, c.prefix_token_id) == (None, None, None)
    assert c.hidden_size == 4096 and math.isclose(c.rope_parameters["rope_theta"], 1e4)


# ----- capabilities(): the one place for what a model can do ------------------------------------------------------

README_CHAT = {"none": "—", "inst": "`[INST]`", "step": "`Source:`/`<step>`"}


def _readme_variant_rows() -> dict[str, list[str]]:
    from pathlib import Path

    text = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
    rows = [line.strip("|").split("|") for line in text.splitlines() if line.startswith("| CodeLlama-")]
    return {cells[0].strip(): [c.strip() for c in cells[1:]] for cells in rows}


def test_readme_variant_table_says_what_capabilities_says():
    from codellama_hf.configuration import capabilities

    rows = _readme_variant_rows()
    assert list(rows) == list(VARIANTS)
    for name, (infilling, chat, context, *_) in rows.items():
        caps = capabilities(CodeLlamaConfig.from_variant(name))
        assert (infilling, chat, context) == (caps.infilling, README_CHAT[caps.chat_format], f"{caps.context:,}"), name


@pytest.mark.parametrize("name, infilling, stops", [
    ("CodeLlama-7b", "trained", (2, 32010)), ("CodeLlama-7b-Python", "no", (2,)),
    ("CodeLlama-34b-Instruct", "no", (2,)), ("CodeLlama-70b-Python", "tokens only", (2, 32010)),
    ("CodeLlama-70b-Instruct", "tokens only", (2, 32010, 32015))])
def test_capabilities_of_each_kind_with_its_tokenizer(tiny_vocabs, load_tokenizer, name, infilling, stops):
    """The tiny vocabularies keep the real ids' order but not their values, so the model's ids come from them."""
    from codellama_hf.configuration import capabilities

    kind = "step" if name.endswith("70b-Instruct") else "fim" if CodeLlamaConfig.from_variant(name).prefix_token_id \
        else "plain"
    tok, _ = load_tokenizer(tiny_vocabs[kind])
    ids = {k: v for k, v in tok.control_token_ids.items() if v is not None}
    config = CodeLlamaConfig.from_variant(name, vocab_size=tok.vocab_size, **ids)
    caps = capabilities(config, tok)
    assert caps.infilling == infilling and caps.variant == name
    real = {2: 2, 32010: ids.get("eot_token_id"), 32015: ids.get("step_token_id")}
    assert caps.stop_token_ids == tuple(real[i] for i in stops)
    assert (caps.fim_token_ids is None) == (infilling == "no")
    assert caps.chat_format == config.chat_format and caps.context == config.max_position_embeddings


def test_a_config_that_fits_no_variant_lets_the_tokenizers_pieces_decide(tmp_path, tiny_vocabs, load_tokenizer):
    from codellama_hf.configuration import capabilities

    fields = _hub_fields("CodeLlama-7b-Python") | {"rope_theta": 10000.0, "max_position_embeddings": 4096}
    config = CodeLlamaConfig.from_pretrained(_stock_llama_config(tmp_path, **fields))
    fim, _ = load_tokenizer(tiny_vocabs["fim"])
    plain, _ = load_tokenizer(tiny_vocabs["plain"])
    assert capabilities(config, fim).infilling == "trained"
    assert capabilities(config, fim).fim_token_ids == {k: fim.control_token_ids[k] for k in
                                                      ("prefix_token_id", "suffix_token_id", "middle_token_id",
                                                       "eot_token_id")}
    assert capabilities(config, plain).infilling == "no"
    assert capabilities(None, fim).infilling == "trained" and capabilities(None, plain).fim_token_ids is None


def test_a_tokenizer_whose_infilling_ids_are_not_the_models_means_no(tiny_vocabs, load_tokenizer):
    from codellama_hf.configuration import capabilities

    tok, _ = load_tokenizer(tiny_vocabs["fim"])
    caps = capabilities(CodeLlamaConfig.from_variant("CodeLlama-7b"), tok)  # the model's ids are 32007..., not tiny
    assert caps.infilling == "no" and not caps.tokenizer_fits and "load the tokenizer from the model's folder" in \
        caps.infilling_refusal


def test_a_stock_llama_config_object_is_identified(tmp_path):
    from transformers import LlamaConfig

    from codellama_hf.configuration import capabilities

    stock = LlamaConfig.from_pretrained(_stock_llama_config(tmp_path, **_hub_fields("CodeLlama-7b-Python")))
    caps = capabilities(stock)
    assert (caps.variant, caps.infilling, caps.context) == ("CodeLlama-7b-Python", "no", 16384)


def test_bad_user_input_is_one_error_type_in_every_layer():
    from codellama_hf.errors import UserInputError
    from codellama_hf.tokenization import resolve_chat_format
    from codellama_hf.variants import get_variant

    with pytest.raises(UserInputError, match="'Llama-2-7b'"):
        get_variant("Llama-2-7b")
    with pytest.raises(UserInputError, match="'chatml'"):
        resolve_chat_format("chatml", variant=None, folder=None)
    with pytest.raises(StrictDataclassClassValidationError) as err:  # huggingface_hub wraps what the check raises
        CodeLlamaConfig(chat_format="chatml")
    assert isinstance(err.value.__cause__, UserInputError)
