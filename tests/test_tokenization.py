"""CodeLlamaTokenizer on plain text: SentencePiece parity, decoding, loading/saving, no hidden state."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from concurrent.futures import ThreadPoolExecutor

import pytest

from tests.fixtures_tokenizer import CONTROL_STRINGS, EDGE_CASES, copy_vocab

VOCABS = ["fim", "step", "plain", "phrases"]


@pytest.mark.parametrize("vocab", VOCABS)
def test_plain_text_matches_sentencepiece_on_real_code(tiny_vocabs, load_tokenizer, snippets, vocab):
    tok, ref = load_tokenizer(tiny_vocabs[vocab])
    batch = tok(snippets, add_special_tokens=False)["input_ids"]
    assert batch == [ref.encode(s) for s in snippets]
    assert tok(snippets[0])["input_ids"] == ref.encode(snippets[0], bos=True)


@pytest.mark.parametrize("vocab", VOCABS)
def test_edge_cases_match_sentencepiece(tiny_vocabs, load_tokenizer, vocab):
    tok, ref = load_tokenizer(tiny_vocabs[vocab])
    for text in EDGE_CASES:
        ids = tok.encode(text, add_special_tokens=False)
        assert ids == ref.encode(text), text
        assert tok.decode(ids) == ref.decode(ids), text


@pytest.mark.parametrize("vocab", VOCABS)
def test_decode_roundtrips_and_matches_sentencepiece(tiny_vocabs, load_tokenizer, snippets, vocab):
    tok, ref = load_tokenizer(tiny_vocabs[vocab])
    ids = [ref.encode(s) for s in snippets]
    assert tok.batch_decode(ids) == snippets  # no leading space lost
    assert [tok.decode(i) for i in ids] == [ref.decode(i) for i in ids]
    with_bos = tok(snippets[:20])["input_ids"]
    assert tok.batch_decode(with_bos, skip_special_tokens=True) == snippets[:20]


def test_decode_of_arbitrary_ids_matches_sentencepiece(tiny_vocabs, load_tokenizer):
    # Invalid UTF-8 byte runs and a leading <0x20> byte: ids SentencePiece never encodes to, but a model may emit.
    import random

    tok, ref = load_tokenizer(tiny_vocabs["fim"])
    rng = random.Random(0)
    special = {0, 1, 2} | set(tok.control_token_ids.values())
    byte_ids = [ref.sp.piece_to_id(f"<0x{b:02X}>") for b in range(256)]
    for _ in range(2000):
        ids = [rng.choice(byte_ids) if rng.random() < 0.6 else rng.randrange(3, len(tok)) for _ in range(8)]
        ids = [i for i in ids if i not in special]
        assert tok.decode(ids) == ref.decode(ids), ids


@pytest.mark.parametrize("vocab", ["fim", "step"])
def test_control_strings_in_text_stay_text(tiny_vocabs, load_tokenizer, vocab):
    """The one deliberate difference from SentencePiece: it turns these strings into control ids, we never do."""
    tok, ref = load_tokenizer(tiny_vocabs[vocab])
    controls = {i for i in tok.control_token_ids.values() if i is not None} | {tok.bos_token_id, tok.eos_token_id}
    for text in [f"x = '{c}'" for c in CONTROL_STRINGS] + [" <PRE> a <SUF> b <MID>", "<step>", "</s><s>",
                                                           "".join(CONTROL_STRINGS), "<EOT>"]:
        ids = tok.encode(text, add_special_tokens=False)
        assert not controls & set(ids), text
        assert tok.decode(ids) == text
    assert controls & set(ref.encode(" <PRE> <step>"))  # SentencePiece itself does produce them


def test_control_token_ids_are_found_by_piece_name(tiny_vocabs, load_tokenizer):
    ids = {name: load_tokenizer(tiny_vocabs[name])[0].control_token_ids for name in ("fim", "step", "plain")}
    ref = load_tokenizer(tiny_vocabs["step"])[1]
    assert ids["step"] == {"prefix_token_id": ref.prefix_id, "suffix_token_id": ref.suffix_id,
                           "middle_token_id": ref.middle_id, "eot_token_id": ref.eot_id, "step_token_id": ref.step_id}
    assert None not in ids["step"].values()
    assert ids["fim"]["step_token_id"] is None and ids["fim"]["prefix_token_id"] == ref.prefix_id
    assert set(ids["plain"].values()) == {None}


@pytest.mark.parametrize("vocab", VOCABS)
def test_no_new_ids(tiny_vocabs, load_tokenizer, vocab):
    tok, ref = load_tokenizer(tiny_vocabs[vocab])
    assert len(tok) == tok.vocab_size == ref.sp.get_piece_size()
    assert max(tok.get_vocab().values()) == ref.sp.get_piece_size() - 1
    text_only, _ = load_tokenizer(tiny_vocabs[vocab], fill_marker=None)  # `<FILL_ME>` is a marker, not a token
    assert text_only.encode("<FILL_ME>", add_special_tokens=False) == ref.encode("<FILL_ME>")


def test_batch_left_pads_with_unk_and_masks(tiny_vocabs, load_tokenizer):
    tok, ref = load_tokenizer(tiny_vocabs["fim"])
    texts = ["a", "def f(x):\n    return x"]
    out = tok(texts, padding=True, return_tensors="pt")
    longest = len(ref.encode(texts[1], bos=True))
    assert out["input_ids"].shape == (2, longest)
    short = ref.encode(texts[0], bos=True)
    assert out["input_ids"][0].tolist() == [tok.pad_token_id] * (longest - len(short)) + short
    assert out["attention_mask"][0].tolist() == [0] * (longest - len(short)) + [1] * len(short)
    assert tok.pad_token == "<unk>" and tok.padding_side == "left"


def test_calls_never_change_each_other(tiny_vocabs, load_tokenizer, snippets):
    """Padding/truncation of one call must not leak into the next, in one thread or many."""
    tok, ref = load_tokenizer(tiny_vocabs["fim"])
    texts = snippets[:8]
    plain = [ref.encode(t, bos=True) for t in texts]
    variants = [dict(), dict(padding=True), dict(padding="max_length", max_length=40, truncation=True),
                dict(truncation=True, max_length=5), dict(padding=True, pad_to_multiple_of=64)]

    def run(kwargs):
        return tok(texts, **kwargs)["input_ids"]

    expected = [run(kw) for kw in variants]
    assert expected[0] == plain and tok.backend_tokenizer.padding is None and tok.backend_tokenizer.truncation is None
    assert all(len(row) == 40 for row in expected[2]) and all(len(row) == 5 for row in expected[3])
    jobs = variants * 40
    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(run, jobs))
    assert results == expected * 40
    assert tok(texts)["input_ids"] == plain


def test_reads_tokenizer_model_without_sentencepiece_parser(tiny_vocabs):
    """Our protobuf reader agrees with SentencePiece's own on every piece and flag."""
    from sentencepiece import sentencepiece_model_pb2

    from codellama_hf.tokenization.spm_model import read_spm_model

    path = tiny_vocabs["step"] / "tokenizer.model"
    proto = sentencepiece_model_pb2.ModelProto.FromString(path.read_bytes())
    ours = read_spm_model(path)
    assert ours.pieces == [(p.piece, pytest.approx(p.score), p.type) for p in proto.pieces]
    assert (ours.model_type, ours.byte_fallback, ours.add_dummy_prefix, ours.remove_extra_whitespaces) == (
        proto.trainer_spec.model_type, proto.trainer_spec.byte_fallback, proto.normalizer_spec.add_dummy_prefix,
        proto.normalizer_spec.remove_extra_whitespaces)


def test_refuses_a_file_that_is_not_a_llama_spm_model(tmp_path):
    from codellama_hf import CodeLlamaTokenizer
    from codellama_hf.errors import UserInputError

    (tmp_path / "tokenizer.model").write_bytes(b"\x0a\x05hello" * 3)
    with pytest.raises(UserInputError, match="tokenizer.model"):
        CodeLlamaTokenizer.from_pretrained(tmp_path)


def test_save_pretrained_reloads_identically(tiny_vocabs, load_tokenizer, snippets, tmp_path):
    from codellama_hf import CodeLlamaTokenizer

    tok, _ = load_tokenizer(tiny_vocabs["step"], chat_format="step", add_eos_token=True)
    tok.save_pretrained(tmp_path)
    assert {"codellama_tokenizer.json", "tokenizer.json", "tokenizer_config.json", "chat_template.jinja"} <= {
        p.name for p in tmp_path.iterdir()}
    again = CodeLlamaTokenizer.from_pretrained(tmp_path)
    assert (again.chat_format, again.add_eos_token, again.control_token_ids) == ("step", True, tok.control_token_ids)
    assert again(snippets[:20])["input_ids"] == tok(snippets[:20])["input_ids"]
    assert again.decode(tok.encode(snippets[0])) == tok.decode(tok.encode(snippets[0]))


def test_save_pretrained_reloads_in_a_fresh_process(tiny_vocabs, load_tokenizer, snippets, tmp_path):
    tok, _ = load_tokenizer(tiny_vocabs["step"], chat_format="step")
    tok.save_pretrained(tmp_path / "tok")
    messages = [{"role": "user", "content": snippets[1]}]
    case = {"texts": snippets[:20], "ids": tok(snippets[:20])["input_ids"],
            "infill": tok(snippets[2], suffix=snippets[3])["input_ids"],
            "chat": tok.apply_chat_template(messages, add_generation_prompt=True, return_dict=False),
            "messages": messages, "prefix": snippets[2], "suffix": snippets[3]}
    (tmp_path / "case.json").write_text(json.dumps(case))
    script = textwrap.dedent(f"""
        import json, codellama_hf
        from transformers import AutoTokenizer
        case = json.load(open({str(tmp_path / "case.json")!r}))
        tok = AutoTokenizer.from_pretrained({str(tmp_path / "tok")!r})
        assert type(tok) is codellama_hf.CodeLlamaTokenizer, type(tok)
        assert tok(case["texts"])["input_ids"] == case["ids"]
        assert tok(case["prefix"], suffix=case["suffix"])["input_ids"] == case["infill"]
        assert tok.apply_chat_template(case["messages"], add_generation_prompt=True, return_dict=False) == case["chat"]
        print("ok")
    """)
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert run.stdout.strip() == "ok", run.stderr[-2000:]


def test_chat_format_comes_from_config_or_variant(tiny_vocabs, tmp_path):
    from codellama_hf import CodeLlamaConfig, CodeLlamaTokenizer
    from codellama_hf.errors import UserInputError

    folder = copy_vocab(tiny_vocabs["fim"], tmp_path / "instruct")
    CodeLlamaConfig.from_variant("CodeLlama-13b-Instruct").save_pretrained(folder)
    assert CodeLlamaTokenizer.from_pretrained(folder).chat_format == "inst"
    assert CodeLlamaTokenizer.from_pretrained(folder, chat_format="none").chat_format == "none"
    bare = tiny_vocabs["fim"]
    assert CodeLlamaTokenizer.from_pretrained(bare).chat_format == "none"
    assert CodeLlamaTokenizer.from_pretrained(bare, variant="CodeLlama-70b-Instruct").chat_format == "step"
    with pytest.raises(UserInputError, match="'chatml'"):
        CodeLlamaTokenizer.from_pretrained(bare, chat_format="chatml")


def test_autotokenizer_picks_codellama_tokenizer_for_codellama_config(tiny_vocabs, tmp_path):
    from transformers import AutoTokenizer

    from codellama_hf import CodeLlamaConfig, CodeLlamaTokenizer

    folder = copy_vocab(tiny_vocabs["fim"], tmp_path / "m")
    CodeLlamaConfig.from_variant("CodeLlama-7b").save_pretrained(folder)
    assert type(AutoTokenizer.from_pretrained(folder)) is CodeLlamaTokenizer


def test_split_special_tokens_false_takes_bos_eos_text_as_control_ids_only_when_asked(tiny_vocabs, load_tokenizer):
    from codellama_hf.errors import UserInputError

    tok, ref = load_tokenizer(tiny_vocabs["fim"])
    assert tok("a</s>", add_special_tokens=False, split_special_tokens=False)["input_ids"] == ref.encode("a") + [2]
    assert tok("a</s>", add_special_tokens=False)["input_ids"] == ref.encode("a</s>")  # by default, text
    with pytest.raises(UserInputError, match="rendered chats support neither"):
        tok("</s>", split_special_tokens=False, return_offsets_mapping=True)


def test_offsets_path_gives_the_same_ids_and_true_offsets(tiny_vocabs, load_tokenizer, snippets):
    tok, ref = load_tokenizer(tiny_vocabs["fim"])
    texts = snippets[:6]
    out = tok(texts, return_offsets_mapping=True, padding=True, truncation=True, max_length=64)
    fast = tok(texts, padding=True, truncation=True, max_length=64)
    assert out["input_ids"] == fast["input_ids"] and out["attention_mask"] == fast["attention_mask"]
    for text in texts:
        one = tok(text, return_offsets_mapping=True)
        assert one["input_ids"] == ref.encode(text, bos=True)
        spans = one["offset_mapping"][1:]  # after BOS; a lone dummy-prefix piece shares the first character's span
        ends = [0] + [b for _, b in spans]
        assert all(a in (prev_end, 0) for (a, _), prev_end in zip(spans, ends))
        assert "".join(text[max(a, prev_end):b] for (a, b), prev_end in zip(spans, ends)) == text
    assert tok.backend_tokenizer.padding is None and tok.backend_tokenizer.truncation is None


def test_stock_tokenizer_json_is_refused_and_tokenizer_model_preferred(tiny_vocabs, load_tokenizer, snippets,
                                                                        tmp_path):
    """A hub-style folder (stock's Metaspace tokenizer.json next to tokenizer.model) is read from tokenizer.model."""
    from transformers import CodeLlamaTokenizer as StockCodeLlamaTokenizer

    from codellama_hf import CodeLlamaTokenizer
    from codellama_hf.errors import UserInputError

    _, ref = load_tokenizer(tiny_vocabs["fim"])
    folder = copy_vocab(tiny_vocabs["fim"], tmp_path / "hub")
    StockCodeLlamaTokenizer.from_pretrained(folder).save_pretrained(folder)
    assert CodeLlamaTokenizer.from_pretrained(folder)(snippets[:20])["input_ids"] == [
        ref.encode(s, bos=True) for s in snippets[:20]]
    (folder / "tokenizer.model").unlink()
    with pytest.raises(UserInputError, match="Metaspace"):
        CodeLlamaTokenizer.from_pretrained(folder)


def test_word_split_only_where_it_is_exact(tiny_vocabs, load_tokenizer):
    from codellama_hf.tokenization.spm_model import NORMAL, SpmModel, word_split_is_exact

    assert load_tokenizer(tiny_vocabs["fim"])[0].backend_tokenizer.pre_tokenizer is not None
    assert load_tokenizer(tiny_vocabs["phrases"])[0].backend_tokenizer.pre_tokenizer is None

    assert word_split_is_exact(SpmModel(pieces=[("▁▁", 0.0, NORMAL), ("▁ab", -1.0, NORMAL)]))
    assert not word_split_is_exact(SpmModel(pieces=[("a▁b", 0.0, NORMAL)]))


def test_bos_eos_choice_survives_a_folder_that_also_holds_tokenizer_model(tiny_vocabs, load_tokenizer, tmp_path):
    from codellama_hf import CodeLlamaTokenizer

    tok, ref = load_tokenizer(tiny_vocabs["fim"], add_eos_token=True)
    folder = copy_vocab(tiny_vocabs["fim"], tmp_path / "both")
    tok.save_pretrained(folder)
    again = CodeLlamaTokenizer.from_pretrained(folder)
    assert (again.add_bos_token, again.add_eos_token) == (True, True)
    assert again("x = 1")["input_ids"] == ref.encode("x = 1", bos=True, eos=True)


@pytest.mark.parametrize("vocab", ["fim", "step", "plain"])
def test_encode_text_is_sentencepieces_ids_for_the_text(tiny_vocabs, load_tokenizer, snippets, vocab):
    """encode_text reads nothing in the string: markers, control strings and rendered-chat openings stay text. The
    truth: SentencePiece with its user-defined pieces made control pieces (which it never matches in text)."""
    tok, ref = load_tokenizer(tiny_vocabs[vocab])
    marked = ["def f():\n    <FILL_ME>\n", "a <FILL_ME> b <FILL_ME>", "print('</s><s>')  # <EOT>",
              "<s>[INST] x [/INST]", " <PRE> a <SUF> b <MID> <step>"]
    for text in marked + EDGE_CASES + snippets[:50]:
        assert tok.encode_text(text) == ref.encode_text(text), text
        assert tok.encode_text(text, add_special_tokens=False) == ref.encode_text(text, bos=False), text
        assert tok.decode(tok.encode_text(text, add_special_tokens=False)) == text
    if vocab != "plain":  # encode reads the marker (an infilling prompt); encode_text does not
        assert tok.encode("def f():\n    <FILL_ME>\n") != tok.encode_text("def f():\n    <FILL_ME>\n")


def test_encode_text_refuses_what_is_not_text(tiny_vocabs, load_tokenizer):
    from codellama_hf.errors import UserInputError

    tok, _ = load_tokenizer(tiny_vocabs["fim"])
    with pytest.raises(UserInputError, match="takes a string, got list"):
        tok.encode_text(["a"])
