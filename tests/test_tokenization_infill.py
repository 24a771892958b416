"""Infilling: PSM and SPM prompts, `<FILL_ME>`, Meta-style infill decoding, and vocabularies without the pieces."""

from __future__ import annotations

import random

import pytest


def _splits(snippets, count=150, seed=0):
    rng = random.Random(seed)
    out = []
    for text in snippets[:count]:
        cut = rng.randrange(len(text) + 1)
        out.append((text[:cut], text[cut:]))
    return out


@pytest.mark.parametrize("vocab", ["fim", "step"])
@pytest.mark.parametrize("suffix_first", [False, True])
def test_infilling_prompts_match_meta(tiny_vocabs, load_tokenizer, snippets, vocab, suffix_first):
    tok, ref = load_tokenizer(tiny_vocabs[vocab])
    splits = _splits(snippets) + [("", ""), ("def f(", ""), ("", ")\n"), (" ", " "), ("\n", "\n  x"), ("a", "☺b")]
    prefixes, suffixes = [p for p, _ in splits], [s for _, s in splits]
    expected = [ref.infilling_prompt(p, s, suffix_first=suffix_first) for p, s in splits]
    assert tok(prefixes, suffix=suffixes, suffix_first=suffix_first)["input_ids"] == expected
    assert [tok.infilling_prompt_ids(p, s, suffix_first=suffix_first) for p, s in splits] == expected
    marked = [p + "<FILL_ME>" + s for p, s in splits]
    assert tok(marked, suffix_first=suffix_first)["input_ids"] == expected


def test_encode_infilling_is_metas(tiny_vocabs, load_tokenizer, snippets):
    tok, ref = load_tokenizer(tiny_vocabs["fim"])
    for text in snippets[:100] + [" leading", "\n", "", "☺"]:
        assert tok.encode_infilling(text) == ref.encode_infilling(text)


def test_tokenize_keeps_the_infilling_pieces(tiny_vocabs, load_tokenizer):
    tok, ref = load_tokenizer(tiny_vocabs["fim"])
    pieces = tok.tokenize("def f(<FILL_ME>):\n    pass")
    assert pieces == [ref.sp.id_to_piece(i) for i in ref.infilling_prompt("def f(", "):\n    pass")[1:]]
    assert pieces[0] == "▁<PRE>" and "▁<SUF>" in pieces and pieces[-1] == "▁<MID>"


def test_decode_infilling_is_metas_and_stops_at_eot(tiny_vocabs, load_tokenizer, snippets):
    tok, ref = load_tokenizer(tiny_vocabs["fim"])
    for text in snippets[:100] + [" two spaces", "  x", "\n"]:
        ids = ref.encode_infilling(text)
        assert tok.decode_infilling(ids) == ref.decode_infilling(ids) == text
        assert tok.decode_infilling(ids + [ref.eot_id] + ref.encode(" junk")) == text
        assert tok.decode_infilling(ids + [ref.eos_id]) == text


def test_batched_infilling_left_pads(tiny_vocabs, load_tokenizer):
    tok, ref = load_tokenizer(tiny_vocabs["fim"])
    out = tok(["def f(<FILL_ME>)", "x = 1\n<FILL_ME>\nprint(x)"], padding=True, return_tensors="pt")
    rows = [ref.infilling_prompt("def f(", ")"), ref.infilling_prompt("x = 1\n", "\nprint(x)")]
    width = max(map(len, rows))
    assert out["input_ids"].tolist() == [[tok.pad_token_id] * (width - len(r)) + r for r in rows]
    assert out["attention_mask"].tolist() == [[0] * (width - len(r)) + [1] * len(r) for r in rows]


def test_mixed_batch_keeps_plain_rows_plain(tiny_vocabs, load_tokenizer):
    tok, ref = load_tokenizer(tiny_vocabs["fim"])
    ids = tok(["plain text", "a<FILL_ME>b"])["input_ids"]
    assert ids == [ref.encode("plain text", bos=True), ref.infilling_prompt("a", "b")]


def test_infilling_without_pieces_names_the_variants(tiny_vocabs, load_tokenizer):
    tok, _ = load_tokenizer(tiny_vocabs["plain"])
    for call in (lambda: tok("def f(<FILL_ME>)"), lambda: tok("def f(", suffix=")"),
                 lambda: tok.infilling_prompt_ids("a", "b")):
        with pytest.raises(ValueError, match="CodeLlama-7b, CodeLlama-7b-Instruct, CodeLlama-13b"):
            call()


def test_marker_and_suffix_together_or_twice_is_refused(tiny_vocabs, load_tokenizer):
    from codellama_hf.errors import UserInputError

    tok, _ = load_tokenizer(tiny_vocabs["fim"])
    with pytest.raises(UserInputError, match="suffix= is given too"):
        tok("a<FILL_ME>b", suffix="c")
    with pytest.raises(UserInputError, match="holds 2 fill markers"):
        tok("a<FILL_ME>b<FILL_ME>c")
