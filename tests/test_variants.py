import pytest

import codellama_hf
from codellama_hf.variants import PRESETS, VARIANTS, get_variant

INFILLING = {"CodeLlama-7b", "CodeLlama-13b", "CodeLlama-7b-Instruct", "CodeLlama-13b-Instruct", "CodeLlama-70b"}


def test_twelve_variants_exported_in_order():
    assert codellama_hf.VARIANTS == VARIANTS
    assert len(VARIANTS) == len(set(VARIANTS)) == 12
    assert {v.split("-", 2)[1] for v in VARIANTS} == {"7b", "13b", "34b", "70b"}


@pytest.mark.parametrize("name", VARIANTS)
def test_meta_folder_name_and_hub_id_find_the_same_row(name):
    assert get_variant(name) is get_variant(f"codellama/{name}-hf")
    assert get_variant(name).name == name


@pytest.mark.parametrize("bad", ["CodeLlama-7B", "codellama-7b", "CodeLlama-7b-hf", "7b", "", "CodeLlama-7b ", None])
def test_unknown_names_are_rejected_with_the_valid_list(bad):
    with pytest.raises(ValueError) as e:
        get_variant(bad)
    assert repr(bad) in str(e.value)
    assert all(v in str(e.value) for v in VARIANTS)


def test_infilling_and_vocab_follow_the_paper():
    assert {v.name for v in PRESETS if v.infilling} == INFILLING
    for v in PRESETS:
        size = v.name.split("-")[1]
        python_or_34b = (size in ("7b", "13b") and v.flavor == "python") or size == "34b"
        assert v.vocab_size == (32000 if python_or_34b else 32016), v.name
        assert v.chat_format == {"instruct": "step" if size == "70b" else "inst"}.get(v.flavor, "none"), v.name


def test_the_one_resolver_takes_the_option_else_the_folder_name(tmp_path):
    from codellama_hf.errors import UserInputError
    from codellama_hf.variants import resolve_variant

    assert resolve_variant(tmp_path / "CodeLlama-13b-Python").name == "CodeLlama-13b-Python"
    assert resolve_variant(tmp_path / "my-model", variant="codellama/CodeLlama-7b-hf").name == "CodeLlama-7b"
    with pytest.raises(UserInputError, match=r"folder name 'my-model' is not a variant name.*--variant NAME"):
        resolve_variant(tmp_path / "my-model")
    with pytest.raises(UserInputError, match=r"unknown Code Llama variant 'CodeLlama-7B'.*; fix --variant"):
        resolve_variant(tmp_path / "CodeLlama-7b", variant="CodeLlama-7B")
    with pytest.raises(UserInputError, match="'7b'"):  # get_variant's own error is the one type, unwrapped
        get_variant("7b")
