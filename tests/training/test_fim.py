"""Meta's FIM training transformation: train equals inference, the paper's rates, labels, padding and errors."""

from __future__ import annotations

import random

import pytest

from tests.fixtures_tokenizer import stdlib_snippets

EDGES = [("", "", ""), ("def f(", "", "):\n"), ("", "x", ""), (" ", " ", " "), ("\n", "  y", "\n"), ("a", "☺", "b"),
         ("ret", "urn x", "\n"), ("  ", "héllo", " 你好"), ("x = 1", "\n", "")]


def _splits(count: int, seed: int) -> list[tuple[str, str, str]]:
    from codellama_hf.training import split_document

    rng = random.Random(seed)
    return EDGES + [split_document(text, rng) for text in stdlib_snippets(count, seed=seed, max_chars=400)]


def _check_train_equals_inference(tok, ref, splits):
    """Both formats, for every split; returns how many SPM splits had encode(prefix + middle) part from
    encode(prefix) before the prefix ended (a token spanning the split, or merges that differ before it)."""
    from codellama_hf.training import fim_sequence

    eot, mid = tok.control_token_ids["eot_token_id"], tok.control_token_ids["middle_token_id"]
    straddled = 0
    for prefix, middle, suffix in splits:
        ids, n = fim_sequence(tok, prefix, middle, suffix, spm=False)
        assert ids[:n] == tok.infilling_prompt_ids(prefix, suffix)
        assert n == len(tok.infilling_prompt_ids(prefix, suffix)) and ids[-1] == eot
        assert tok.decode_infilling(ids[n:]) == middle
        assert ids == ref.infilling_prompt(prefix, suffix) + ref.encode_infilling(middle) + [ref.eot_id]

        ids, n = fim_sequence(tok, prefix, middle, suffix, spm=True)
        prompt = tok.infilling_prompt_ids(prefix, suffix, suffix_first=True)
        at_mid = prompt.index(mid) + 1
        assert ids[:at_mid] == prompt[:at_mid] and at_mid <= n <= len(prompt) and ids[:n] == prompt[:n]
        assert ids == (ref.infilling_prompt("", suffix, suffix_first=True) + ref.encode(prefix + middle)
                       + [ref.eot_id])  # the paper: prefix and middle encoded together
        assert tok.decode(ids[at_mid:-1]) == prefix + middle and prefix.startswith(tok.decode(ids[at_mid:n]))
        if n == len(prompt) and prefix:
            assert tok.decode_infilling(ids[n:]) == middle
        elif n == len(prompt):  # no prefix: the middle's ids carry the dummy prefix of encode(prefix + middle)
            assert tok.decode(ids[n:-1]) == middle
        else:
            straddled += 1  # the encodings part before the split's end: training has the rest of prefix + middle
    return straddled


@pytest.mark.parametrize("vocab", ["fim", "phrases"])
def test_train_equals_inference_on_trained_vocabularies(tiny_vocabs, load_tokenizer, vocab):
    tok, ref = load_tokenizer(tiny_vocabs[vocab])
    splits = _splits(250, seed=1)
    straddled = _check_train_equals_inference(tok, ref, splits)
    assert 0 < straddled < len(splits)  # both SPM cases are exercised


@pytest.mark.real_vocab
def test_train_equals_inference_on_the_real_vocabulary(shared_tokenizers, load_tokenizer):
    tok, ref = load_tokenizer(shared_tokenizers / "codellama")
    splits = _splits(250, seed=2)
    assert 0 < _check_train_equals_inference(tok, ref, splits) < len(splits)


def test_split_points_are_uniform_and_independent():
    from codellama_hf.training import split_document

    rng, text = random.Random(0), "x" * 1000
    cuts = [split_document(text, rng) for _ in range(4000)]
    assert all("".join(c) == text for c in cuts)
    first = sum(len(p) for p, _, _ in cuts) / len(cuts) / len(text)  # min of two uniforms: mean 1/3
    middle = sum(len(m) for _, m, _ in cuts) / len(cuts) / len(text)  # |U1 - U2|: mean 1/3
    assert abs(first - 1 / 3) < 0.02 and abs(middle - 1 / 3) < 0.02


@pytest.fixture(scope="module")
def fim_tok(tiny_vocabs, load_tokenizer):
    return load_tokenizer(tiny_vocabs["fim"])[0]


def _formats(tok, rows) -> list[str]:
    pre, suf = tok.control_token_ids["prefix_token_id"], tok.control_token_ids["suffix_token_id"]
    return ["plain" if ids[1] != pre else "spm" if ids[2] == suf else "psm" for ids, _ in rows]


def test_rates_follow_the_paper_and_the_seed_decides_everything(fim_tok):
    from codellama_hf.training import FIMTransform

    docs = stdlib_snippets(600, seed=3, max_chars=600)
    docs = [d for d in docs if len(d) > 50]
    transform = FIMTransform(fim_tok)
    rows = [row for i, d in enumerate(docs) for row in transform.rows(d, key=i)]
    formats = _formats(fim_tok, rows)
    fim = [f for f in formats if f != "plain"]
    assert abs(len(fim) / len(formats) - 0.9) < 0.05 and abs(fim.count("spm") / len(fim) - 0.5) < 0.08
    batch = transform({"text": docs[:40]}, list(range(40)))
    assert batch == FIMTransform(fim_tok)({"text": docs[:40]}, list(range(40)))  # same seed, same rows
    assert batch["input_ids"] == [ids for ids, _ in rows[:40]]
    assert batch != FIMTransform(fim_tok, seed=1)({"text": docs[:40]}, list(range(40)))
    assert set(_formats(fim_tok, FIMTransform(fim_tok, fim_rate=0).rows(docs[0]))) == {"plain"}
    assert {f for d in docs[:30] for f in _formats(fim_tok, FIMTransform(fim_tok, fim_rate=1, spm_rate=0).rows(d))
            } == {"psm"}
    assert {f for d in docs[:30] for f in _formats(fim_tok, FIMTransform(fim_tok, fim_rate=1, spm_rate=1).rows(d))
            } == {"spm"}


def test_documents_cut_across_contexts_stay_plain(fim_tok):
    from codellama_hf.training import FIMTransform

    long_doc, short_doc = "def f(x):\n    return x\n" * 40, "def g():\n    pass\n"
    transform = FIMTransform(fim_tok, fim_rate=1, max_length=64)
    rows = transform.rows(long_doc)
    plain = [fim_tok.bos_token_id] + fim_tok.encode(long_doc, add_special_tokens=False) + [fim_tok.eos_token_id]
    assert len(rows) > 1 and all(len(ids) <= 64 for ids, _ in rows)
    assert [i for ids, _ in rows for i in ids] == plain and set(_formats(fim_tok, rows)) == {"plain"}
    assert _formats(fim_tok, transform.rows(short_doc)) != ["plain"]
    out = transform({"text": [short_doc, long_doc]}, [0, 1])
    assert len(out["input_ids"]) == 1 + len(rows)  # batched map may return more rows than it got


def test_labels_cover_everything_or_only_what_inference_does_not_give(fim_tok):
    from codellama_hf.training import FIMTransform, fim_sequence, split_document

    doc = stdlib_snippets(1, seed=4, max_chars=300)[0]
    for spm_rate in (0, 1):
        (ids, labels), = FIMTransform(fim_tok, fim_rate=1, spm_rate=spm_rate).rows(doc, key=7)
        assert labels == ids
        (ids_m, labels_m), = FIMTransform(fim_tok, fim_rate=1, spm_rate=spm_rate, labels="middle").rows(doc, key=7)
        rng = random.Random("0:7")
        rng.random()
        prefix, middle, suffix = split_document(doc, rng)
        expected, n = fim_sequence(fim_tok, prefix, middle, suffix, spm=bool(spm_rate))
        assert ids_m == ids == expected
        assert labels_m == [-100] * n + ids[n:] and labels_m[-1] == fim_tok.control_token_ids["eot_token_id"]


def test_map_over_a_dataset_is_deterministic_whatever_the_batch_size(fim_tok):
    from datasets import Dataset

    from codellama_hf.training import FIMTransform

    docs = Dataset.from_dict({"text": stdlib_snippets(40, seed=5, max_chars=300), "path": ["p"] * 40})
    transform = FIMTransform(fim_tok, max_length=96, labels="middle")
    kwargs = dict(with_indices=True, remove_columns=docs.column_names, load_from_cache_file=False)
    a = docs.map(transform, batched=True, batch_size=7, **kwargs)
    b = docs.map(transform, batched=True, batch_size=40, **kwargs)
    assert a["input_ids"] == b["input_ids"] and a["labels"] == b["labels"] and a.column_names == ["input_ids",
                                                                                                  "labels"]
    short = docs.filter(lambda row: len(row["text"]) < 60)
    one = short.map(transform, with_indices=True, remove_columns=docs.column_names, load_from_cache_file=False)
    assert len(one) == len(short)


def test_padding_never_carries_loss(fim_tok):
    import torch

    from codellama_hf import CodeLlamaConfig, CodeLlamaForCausalLM
    from codellama_hf.training import FIMTransform, fim_data_collator
    from tests.conftest import TINY

    rows = FIMTransform(fim_tok, fim_rate=1, labels="middle")({"text": stdlib_snippets(4, seed=6, max_chars=200)},
                                                              [0, 1, 2, 3])
    features = [{"input_ids": i, "labels": label} for i, label in zip(rows["input_ids"], rows["labels"])]
    batch = fim_data_collator(fim_tok, pad_to_multiple_of=8)(features)
    assert batch["input_ids"].shape[1] % 8 == 0 and len({len(f["input_ids"]) for f in features}) > 1
    padded = batch["attention_mask"] == 0
    assert padded.any() and (batch["labels"][padded] == -100).all()
    assert (batch["input_ids"][padded] == fim_tok.pad_token_id).all()
    for row, f in zip(range(4), features):
        kept = batch["attention_mask"][row] == 1
        assert batch["labels"][row][kept].tolist() == f["labels"]
    torch.manual_seed(0)
    config = CodeLlamaConfig.from_variant("CodeLlama-7b", **TINY, **fim_tok.control_token_ids, vocab_size=len(fim_tok),
                                          dtype="float32")
    model = CodeLlamaForCausalLM(config).eval()
    with torch.no_grad():
        together = model(**batch).loss
        each = [(model(input_ids=torch.tensor([f["input_ids"]]), labels=torch.tensor([f["labels"]])).loss,
                 sum(label != -100 for label in f["labels"][1:])) for f in features]
    assert torch.allclose(together, sum(loss * n for loss, n in each) / sum(n for _, n in each), atol=1e-4)


def test_errors_name_the_value_and_the_fix(tiny_vocabs, load_tokenizer, fim_tok):
    from codellama_hf.errors import UserInputError
    from codellama_hf.training import FIMTransform, fim_sequence

    plain, _ = load_tokenizer(tiny_vocabs["plain"])
    with pytest.raises(UserInputError, match="no infilling pieces.*CodeLlama-7b.*fim_rate=0"):
        FIMTransform(plain)
    with pytest.raises(UserInputError, match="no infilling pieces"):
        fim_sequence(plain, "a", "b", "c", spm=False)
    assert FIMTransform(plain, fim_rate=0).rows("x = 1")[0][0][0] == plain.bos_token_id
    for bad, match in [(dict(fim_rate=1.5), "fim_rate=1.5"), (dict(spm_rate=-1), "spm_rate=-1"),
                       (dict(labels="prompt"), "labels='prompt'"), (dict(max_length=2), "max_length=2")]:
        with pytest.raises(UserInputError, match=match):
            FIMTransform(fim_tok, **bad)
    with pytest.raises(UserInputError, match="no column 'text'.*'code'.*text_column="):
        FIMTransform(fim_tok)({"code": ["x"]})
    with pytest.raises(UserInputError, match="batched=True"):
        FIMTransform(fim_tok, max_length=16)({"text": "x = 1\n" * 50}, 0)
    with pytest.raises(UserInputError, match="CodeLlamaTokenizer"):
        FIMTransform(object())
