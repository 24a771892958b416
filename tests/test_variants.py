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
