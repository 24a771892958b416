"""Hypothesis properties on arbitrary unicode (bounded example counts keep the suite fast)."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from codellama_hf.tokenization.rendered import looks_rendered
from codellama_hf.errors import UserInputError
from tests.fixtures_tokenizer import has_control_string

# Arbitrary unicode, plus text dense in whitespace, markers and pieces that sit near control strings.
TRICKY = list(" \t\n\r<>/[]PRESUFMIDOTstep☺é你🎉\u00a0\u200d") + ["<PRE>", "<SUF>", "<MID>", "<EOT>", "<step>", "</s>"]
text = st.one_of(st.text(max_size=80), st.lists(st.sampled_from(TRICKY), max_size=30).map("".join))
SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                         HealthCheck.too_slow])


@pytest.fixture(scope="module")
def step_vocab(tiny_vocabs, load_tokenizer):
    return load_tokenizer(tiny_vocabs["step"])


def as_text(tok, x: str) -> dict:
    """encode() keywords that take `x` as text. A plain str that starts like a rendered chat (`<s>[INST]`) is refused
    by default, as a rendered chat that lost its token plan; split_special_tokens=True says it is text."""
    if not looks_rendered(x):
        return {}
    with pytest.raises(UserInputError, match="starts like a rendered chat"):
        tok.encode(x)
    return {"split_special_tokens": True}


@SETTINGS
@given(x=text)
def test_decode_of_encode_is_identity(step_vocab, x):
    tok, _ = step_vocab
    if "▁" in x:  # U+2581 is SentencePiece's escaped space: it decodes to " " there too
        x = x.replace("▁", "_")
    kw = as_text(tok, x)
    assert tok.decode(tok.encode(x, **kw), skip_special_tokens=True) == x
    assert tok.decode(tok.encode(x, add_special_tokens=False, **kw)) == x


@pytest.mark.parametrize("x", ["<s> Source: ", "<s>[INST] hi [/INST]", "[INST] a </s>"])
def test_text_that_starts_like_a_rendered_chat_round_trips_as_text_when_said_so(step_vocab, x):
    tok, _ = step_vocab
    kw = as_text(tok, x)
    assert kw and tok.decode(tok.encode(x, add_special_tokens=False, **kw)) == x


@SETTINGS
@given(x=text)
def test_encode_equals_sentencepiece_unless_text_holds_a_control_string(step_vocab, x):
    tok, ref = step_vocab
    ids = tok.encode(x, add_special_tokens=False, **as_text(tok, x))
    controls = set(tok.control_token_ids.values())
    assert not controls & set(ids)  # never a control id from text
    if not has_control_string(x):
        assert ids == ref.encode(x)


@SETTINGS
@given(prefix=text, suffix=text, suffix_first=st.booleans())
def test_infilling_prompts_equal_metas(step_vocab, prefix, suffix, suffix_first):
    tok, ref = step_vocab
    if has_control_string(prefix + suffix) or "<FILL_ME>" in prefix + suffix:
        prefix, suffix = prefix.replace("<", "("), suffix.replace("<", "(")
    got = tok(prefix, suffix=suffix, suffix_first=suffix_first)["input_ids"]
    assert got == ref.infilling_prompt(prefix, suffix, suffix_first=suffix_first)
    middle = tok.encode_infilling(suffix)
    assert tok.decode_infilling(middle) == ref.decode_infilling(middle)
