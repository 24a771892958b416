"""The real Llama 2 / Code Llama vocabularies in ../shared/tokenizers (skipped with a reason when absent)."""

from __future__ import annotations

import json
import random
import shutil
import subprocess
import sys
import textwrap

import pytest

pytestmark = pytest.mark.real_vocab

EXPECTED_CONTROLS = {  # /work/shared/tokenizers/README.md
    "llama2": dict.fromkeys(["prefix_token_id", "suffix_token_id", "middle_token_id", "eot_token_id",
                             "step_token_id"]),
    "codellama": {"prefix_token_id": 32007, "suffix_token_id": 32008, "middle_token_id": 32009,
                  "eot_token_id": 32010, "step_token_id": None},
    "codellama-70b-instruct": {"prefix_token_id": 32007, "suffix_token_id": 32008, "middle_token_id": 32009,
                               "eot_token_id": 32010, "step_token_id": 32015},
}


@pytest.mark.parametrize("name", list(EXPECTED_CONTROLS))
def test_real_code_matches_sentencepiece(real_vocabs, load_tokenizer, snippets, name):
    tok, ref = load_tokenizer(real_vocabs[name])
    ids = tok(snippets, add_special_tokens=False)["input_ids"]
    assert ids == [ref.encode(s) for s in snippets]
    assert tok.batch_decode(ids) == [ref.decode(i) for i in ids] == snippets
    assert tok.control_token_ids == EXPECTED_CONTROLS[name]
    assert len(tok) == ref.sp.get_piece_size() == (32000 if name == "llama2" else 32016)


def test_llama2_vocab_refuses_infilling(real_vocabs, load_tokenizer):
    tok, _ = load_tokenizer(real_vocabs["llama2"])
    with pytest.raises(ValueError, match="32000 pieces.*CodeLlama-7b, CodeLlama-7b-Instruct"):
        tok("def f(<FILL_ME>):")


@pytest.mark.parametrize("suffix_first", [False, True])
def test_real_infilling_matches_meta(real_vocabs, load_tokenizer, snippets, suffix_first):
    tok, ref = load_tokenizer(real_vocabs["codellama"])
    rng = random.Random(1)
    splits = [(s[:c], s[c:]) for s in snippets[:150] for c in [rng.randrange(len(s) + 1)]]
    got = tok([p for p, _ in splits], suffix=[s for _, s in splits], suffix_first=suffix_first)["input_ids"]
    assert got == [ref.infilling_prompt(p, s, suffix_first=suffix_first) for p, s in splits]
    assert tok.encode_infilling("x")[0] != 29871  # no stray "▁" after <SUF>


def test_real_chats_match_meta(real_vocabs, load_tokenizer, snippets):
    inst, inst_ref = load_tokenizer(real_vocabs["codellama"], variant="CodeLlama-7b-Instruct")
    step, step_ref = load_tokenizer(real_vocabs["codellama-70b-instruct"], variant="CodeLlama-70b-Instruct")
    for i in range(0, 40, 4):
        dialog = [{"role": "system", "content": snippets[i][:200]}, {"role": "user", "content": snippets[i + 1]},
                  {"role": "assistant", "content": snippets[i + 2], "destination": "user"},
                  {"role": "user", "content": snippets[i + 3]}]
        assert inst.apply_chat_template(dialog, add_generation_prompt=True, return_dict=False,
                                        allow_special_tags=True) == inst_ref.chat_inst(dialog)
        assert step.apply_chat_template(dialog, add_generation_prompt=True, return_dict=False,
                                        allow_special_tags=True) == step_ref.chat_step(dialog)



def test_real_rendered_chats_encode_back_to_metas_ids(real_vocabs, load_tokenizer, snippets):
    """Render-then-tokenize (lm-eval, vLLM) on the real vocabularies: the issue's own example, and few-shot turns."""
    inst, inst_ref = load_tokenizer(real_vocabs["codellama"], variant="CodeLlama-7b-Instruct")
    step, step_ref = load_tokenizer(real_vocabs["codellama-70b-instruct"], variant="CodeLlama-70b-Instruct")
    question = [{"role": "user", "content": "Question: 2 ** 3?\nAnswer:"}]
    rendered = inst.apply_chat_template(question, tokenize=False, add_generation_prompt=True)
    assert rendered == "<s>[INST] Question: 2 ** 3?\nAnswer: [/INST]"
    assert inst(rendered, add_special_tokens=False)["input_ids"][:4] == [1, 518, 25580, 29962]
    for i in range(0, 30, 5):
        dialog = [{"role": "system", "content": snippets[i][:200]}, {"role": "user", "content": snippets[i + 1]},
                  {"role": "assistant", "content": snippets[i + 2] + " </s><s>", "destination": "user"},
                  {"role": "user", "content": snippets[i + 3]}]
        answer = {"role": "assistant", "content": snippets[i + 4].strip(), "destination": "user"}
        for tok, meta, gap in ((inst, inst_ref.chat_inst, " "), (step, step_ref.chat_step, "")):
            text = tok.apply_chat_template(dialog, tokenize=False, add_generation_prompt=True)
            assert tok.encode(text, add_special_tokens=False) == meta(dialog)
            assert tok(text + gap + answer["content"], add_special_tokens=False)["input_ids"] == (
                tok.apply_chat_template(dialog + [answer], continue_final_message=True, return_dict=False))

def test_sentencepiece_makes_control_ids_from_text_and_we_do_not(real_vocabs, load_tokenizer):
    """The documented exception, on the real vocabularies."""
    tok, ref = load_tokenizer(real_vocabs["codellama-70b-instruct"])
    text = "s = ' <PRE> <SUF> <MID> <EOT> <step>'"
    assert {32007, 32008, 32009, 32010, 32015} <= set(ref.encode(text))
    ids = tok.encode(text, add_special_tokens=False)
    assert not set(tok.control_token_ids.values()) & set(ids) and tok.decode(ids) == text


def test_llama_format_loads_in_stock_transformers(real_vocabs, load_tokenizer, snippets, tmp_path):
    """save_llama_format_tokenizer: a process that never imports codellama_hf gets the same ids."""
    from codellama_hf import CodeLlamaConfig
    from codellama_hf.tokenization import save_llama_format_tokenizer

    tok, _ = load_tokenizer(real_vocabs["codellama-70b-instruct"], variant="CodeLlama-70b-Instruct")
    out = tmp_path / "stock"
    save_llama_format_tokenizer(tok, out)
    shutil.copy(real_vocabs["codellama-70b-instruct"] / "tokenizer.model", out)  # the converter ships it too
    config = CodeLlamaConfig.from_variant("CodeLlama-70b-Instruct").to_dict()
    (out / "config.json").write_text(json.dumps({**config, "model_type": "llama"}))
    dialog = [{"role": "user", "content": snippets[0]}]
    case = {"texts": snippets[:50], "ids": tok(snippets[:50])["input_ids"], "dialog": dialog,
            "chat": tok.apply_chat_template(dialog, add_generation_prompt=True, return_dict=False)}
    (tmp_path / "case.json").write_text(json.dumps(case))
    script = textwrap.dedent(f"""
        import json, sys
        from transformers import AutoTokenizer
        case = json.load(open({str(tmp_path / "case.json")!r}))
        tok = AutoTokenizer.from_pretrained({str(out)!r})
        assert "codellama_hf" not in sys.modules
        assert tok(case["texts"])["input_ids"] == case["ids"], "plain"
        assert tok.batch_decode(case["ids"], skip_special_tokens=True) == case["texts"], "decode"
        assert tok.apply_chat_template(case["dialog"], add_generation_prompt=True, return_dict=False) == case["chat"]
        assert len(tok) == 32016 and tok.padding_side == "left"
        print("ok")
    """)
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert run.stdout.strip() == "ok", run.stderr[-2000:]
