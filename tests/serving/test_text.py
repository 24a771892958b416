"""Stop strings and incremental decoding (text.py), and the text-level prompt helpers (prompts.py)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from codellama_hf.serving.prompts import SNIPPET_SEPARATOR, extra_context, split_literal_template
from codellama_hf.serving.protocol import ServingError
from codellama_hf.serving.detokenize import StopTail, TextAssembler, partial_stop_length

PIECES = {1: "def", 2: " f", 3: "(x", 4: "):", 5: "\n", 6: "    return", 7: " x", 8: "\n\n", 9: "class"}


def decode(ids):
    return "".join(PIECES[i] for i in ids)


def feed_all(assembler, ids):
    out = [assembler.feed(ids[:n]) for n in range(1, len(ids) + 1)]
    return out, assembler.finish(ids)


def test_without_stops_text_comes_out_as_it_is_decoded():
    assembler = TextAssembler(decode)
    parts, tail = feed_all(assembler, [1, 2, 3, 4])
    assert parts == ["def", " f", "(x", "):"] and tail == "" and assembler.emitted == "def f(x):"


def test_a_stop_string_spanning_pieces_cuts_the_text_before_it():
    assembler = TextAssembler(decode, stop=["\n\nclass"])
    parts, tail = feed_all(assembler, [1, 5, 6, 8, 9, 2])
    assert "".join(parts) + tail == "def\n    return"
    assert assembler.stopped_by == "\n\nclass"
    assert parts[3] == ""  # "\n\n" could start the stop string: held back, never sent, then dropped


def test_a_held_back_tail_that_does_not_become_a_stop_is_released():
    assembler = TextAssembler(decode, stop=["\n\nclass"])
    parts, tail = feed_all(assembler, [1, 8, 7])
    assert parts == ["def", "", "\n\n x"] and tail == "" and assembler.stopped_by is None
    assembler = TextAssembler(decode, stop=["\n\nclass"])
    parts, tail = feed_all(assembler, [1, 8])
    assert parts == ["def", ""] and tail == "\n\n"  # at the end nothing can follow: the tail is final


def test_the_earliest_of_several_stops_wins():
    assembler = TextAssembler(decode, stop=["return", "\n"])
    assert assembler.feed([1, 5, 6]) == "def" and assembler.stopped_by == "\n"


def test_an_unfinished_utf8_sequence_is_held_back():
    pieces = {1: "a", 2: "\ufffd", 3: "é"}  # 2 alone is half a character; 2+3 decode together as "é"

    def utf8(ids):
        text = "".join(pieces[i] for i in ids)
        return text.replace("\ufffdé", "é")

    assembler = TextAssembler(utf8)
    assert [assembler.feed([1]), assembler.feed([1, 2]), assembler.feed([1, 2, 3])] == ["a", "", "é"]


@pytest.mark.parametrize("text, stops, n", [("abc", ["cde"], 1), ("abcd", ["cde"], 2), ("abc", ["xyz"], 0),
                                            ("a\n", ["\n\n", "\nx"], 1), ("", ["a"], 0)])
def test_partial_stop_length(text, stops, n):
    assert partial_stop_length(text, stops) == n


# ----- the literal template of /completion ----------------------------------------------------------------------

@pytest.mark.parametrize("prompt, parts", [
    ("<PRE> def f(x): <SUF>\n    return y <MID>", ("def f(x):", "\n    return y", False)),  # Continue, Tabby, llm-ls
    ("<PRE>  <SUF> <MID>", ("", "", False)),
    ("<PRE>def f(x):<SUF>y<MID>", ("def f(x):", "y", False)),  # no spaces: nothing to drop
    ("<PRE> <SUF>\n    return y <MID> def f(x):", ("def f(x):", "\n    return y", True)),  # suffix first (SPM)
    ("<PRE>/* ctx */ \ndef f(x): <SUF> y <MID>", ("/* ctx */ \ndef f(x):", " y", False)),  # Twinny's spacing
])
def test_the_template_splits_as_metas_ids_decode(prompt, parts):
    assert split_literal_template(prompt) == parts


def test_text_without_markers_is_not_a_template():
    assert split_literal_template("def f(x):\n    return <FILL_ME>") is None


@pytest.mark.parametrize("prompt, words", [("<PRE> a <SUF> b <MID> <MID>", "<MID> x2"), ("<PRE> a <MID>", "<SUF> x0"),
                                           ("<SUF> a <PRE> b <MID>", "out of place"),
                                           ("x <PRE> a <SUF> b <MID>", "out of place"),
                                           ("<PRE> a <SUF> b <MID> c", "text after <MID>")])
def test_a_broken_template_is_refused_naming_the_fix(prompt, words):
    with pytest.raises(ServingError, match=words) as err:
        split_literal_template(prompt)
    assert err.value.param == "prompt" and "<PRE> {prefix} <SUF>{suffix} <MID>" in err.value.message


def test_extra_chunks_come_before_the_prefix_with_llamacpps_separator():
    assert SNIPPET_SEPARATOR == "\n\n--- snippet ---\n\n"
    chunks = [{"filename": "a.py", "text": "x = 1\n", "time": [1, 2]}, {"text": "y = 2\n"}]
    assert extra_context(chunks) == SNIPPET_SEPARATOR + "x = 1\n" + SNIPPET_SEPARATOR + "y = 2\n"
    assert extra_context(None) == extra_context([]) == ""


@pytest.mark.parametrize("extra, words", [({"text": "x"}, "must be an array"), ("x", "must be an array"),
                                          ([{"filename": "a"}], r"input_extra\[0\] needs a string \"text\""),
                                          ([{"text": 3}], "needs a string"), (["x"], "needs a string"),
                                          ([{"text": "", "filename": 7}], r"input_extra\[0\].filename must be a string")])
def test_bad_extra_context_is_refused(extra, words):
    with pytest.raises(ServingError, match=words) as err:
        extra_context(extra)
    assert err.value.param == "input_extra" and err.value.kind == "invalid"


def test_settling_keeps_each_decode_short_and_the_text_the_same():
    calls = []

    def counted(ids):
        calls.append(len(ids))
        return decode(ids)

    ids = [1, 2, 3, 4, 5, 6, 7, 5] * 40
    assembler = TextAssembler(counted, decode_more=counted)
    parts, tail = feed_all(assembler, ids)
    assert "".join(parts) + tail == decode(ids)
    assert max(calls[-20:]) <= 2 * TextAssembler.SETTLE  # not the whole answer each time


# ----- the stop check's cost (issue 22, row 5) --------------------------------------------------------------------

def _border(text: str, stop: str) -> int:
    return max((n for n in range(min(len(stop) - 1, len(text)) + 1) if text.endswith(stop[:n])), default=0)


@given(st.text("ab\n", max_size=12), st.lists(st.text("ab\n", max_size=6), min_size=1, max_size=8))
def test_the_incremental_stop_tail_is_the_longest_border(stop, pieces):
    tail, text = StopTail(stop), ""
    for piece in pieces:
        text += piece
        assert tail.feed(text) == _border(text, stop)


def test_the_stop_check_reads_only_the_new_text():
    """Each feed walks the new characters only: the automaton's table grows no further than the match."""
    stop = "b" * 100_000
    tail, text = StopTail(stop), ""
    for _ in range(2000):
        text += "a" * 50
        assert tail.feed(text) == 0
    assert len(tail._fail) == 1  # nothing of the 100k-character stop was ever needed
    assert tail.feed(text + "bbb") == 3 and len(tail._fail) <= 4
