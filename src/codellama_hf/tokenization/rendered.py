"""Rendered chats that tokenize back to Meta's ids: the string `apply_chat_template(tokenize=False)` returns.

Why: lm-eval, vLLM and many scripts render a chat to a string, then encode it with `add_special_tokens=False`. Our
tokenizer never turns `<s>`, `</s>` or `<step>` typed in text into control ids (so a message cannot forge a turn),
which would make that string encode to text ids, silently far from Meta's.

Design: the renderer returns a `RenderedChat`, a `str` whose text is exactly what the Jinja template renders
(`<s>[INST] ... [/INST]`, so `startswith(bos_token)` checks and logs read as usual) and which also carries the plan
it was rendered from: each stretch of the string is one of Meta's SentencePiece calls or one control id. The
encoder builds the ids from that plan. Message text sits inside calls, so `<s>` in a message stays text. Only this
module makes plans, so a plain `str` (typed, read from a file, or decoded) never becomes control ids.

The plan survives `+` and slicing, which is what lm-eval does to a context (it moves trailing spaces into the
continuation, and encodes context + continuation): text appended to a call continues that call, as Meta encodes an
answer in the same call as its `[/INST]`. Every other str operation (`strip`, f-strings, `str()`, a round trip
through a datasets/Arrow table or JSON) returns a plain `str`. For those, `looks_rendered` lets the encoder refuse a
string that starts like a rendered chat, with the fix, instead of encoding it as text in silence.
"""

from __future__ import annotations

import re

from .chat_formats import Control, Unit

# How a rendered chat starts: BOS and the first turn, or that turn alone where a tool stripped the BOS. Anchored at
# the start, so code that quotes a prompt format (f"<s>[INST] {q} [/INST]") is not taken for a rendered chat.
_OPENINGS = ("<s>[INST]", "<s> Source: ")
_OPENINGS_WITHOUT_BOS = ("[INST]", " Source: ")
_PIECES = ("<s>", "</s>", "<step>")

_TEXT, _SPACED = "text", "spaced"  # a call on the stretch as written / on the stretch less its first character


class RenderedChat(str):
    """A rendered chat: its text, plus the calls (start, end, kind) that tile it. kind is a Control name, "text"
    (encode the stretch), or "spaced" (its first character is the space standing for a call's dummy prefix)."""

    def __new__(cls, text: str, calls: tuple[tuple[int, int, str], ...]):
        obj = super().__new__(cls, text)
        obj.calls = calls
        return obj

    def __reduce__(self):  # pickling (multiprocessing, vLLM's engine process) keeps the plan
        return RenderedChat, (str(self), self.calls)

    def units(self) -> list[Unit]:
        """The plan: str (one SentencePiece call) or Control, in order."""
        text = str(self)
        out: list[Unit] = []
        for start, end, kind in self.calls:
            if kind == _TEXT:
                out.append(text[start:end])
            elif kind == _SPACED:
                out.append(text[start + 1:end])
            else:
                out.append(Control(kind))
        return out

    def __add__(self, other):
        if not isinstance(other, str):
            return NotImplemented
        return _join(self, _as_rendered(other))

    def __radd__(self, other):
        if not isinstance(other, str):
            return NotImplemented
        return _join(_as_rendered(other), self)

    def __getitem__(self, key):
        if not isinstance(key, slice) or key.step not in (None, 1):
            return str.__getitem__(self, key)  # a plain str: one character, or a strided slice
        start, stop, _ = key.indices(len(self))
        stop = max(start, stop)
        calls = []
        for a, b, kind in self.calls:
            lo, hi = max(a, start), min(b, stop)
            if lo >= hi:
                continue
            if kind not in (_TEXT, _SPACED) and (lo, hi) != (a, b):
                kind = _TEXT  # part of a control piece's text is text
            elif kind == _SPACED and lo > a:
                kind = _TEXT  # the stand-in space is gone; SentencePiece adds the dummy prefix anyway
            calls.append((lo - start, hi - start, kind))
        return RenderedChat(str.__getitem__(self, slice(start, stop)), tuple(calls))


def _as_rendered(text: str) -> RenderedChat:
    return text if isinstance(text, RenderedChat) else RenderedChat(text, ((0, len(text), _TEXT),) if text else ())


def _join(left: RenderedChat, right: RenderedChat) -> RenderedChat:
    shift = len(left)
    calls = list(left.calls)
    rest = [(a + shift, b + shift, kind) for a, b, kind in right.calls]
    # Plain text written straight after a call continues it (a slice rejoined, or an answer after [/INST]).
    if calls and rest and calls[-1][2] in (_TEXT, _SPACED) and rest[0][2] == _TEXT:
        calls[-1] = (calls[-1][0], rest[0][1], calls[-1][2])
        rest = rest[1:]
    return RenderedChat(str(left) + str(right), tuple(calls + rest))


def render(units: list[Unit], pieces: dict[str, str]) -> RenderedChat:
    """The string the Jinja template renders for `units`, carrying them. pieces: control name -> its text."""
    text, calls = [], []
    at, previous = 0, None
    for unit in units:
        if isinstance(unit, Control):
            part, kind = pieces[unit.name], unit.name
        elif isinstance(previous, str):
            # Two calls in a row: the second's dummy prefix is written as a space, as the templates do.
            part, kind = " " + unit, _SPACED
        else:
            part, kind = unit, _TEXT  # after a control piece, the tokenizer adds the dummy prefix itself
        text.append(part)
        calls.append((at, at + len(part), kind))
        at, previous = at + len(part), unit
    return RenderedChat("".join(text), tuple(calls))


def trusted_units(text: str, pieces: dict[str, str]) -> list[Unit]:
    """A string taken as rendered (`split_special_tokens=False`): control pieces' text becomes control ids and each
    stretch between them one call, as stock Transformers encodes a rendered template."""
    names = {piece: name for name, piece in pieces.items() if piece}
    if not names:
        return [text]
    pattern = "(" + "|".join(re.escape(p) for p in sorted(names, key=len, reverse=True)) + ")"
    units: list[Unit] = []
    for i, part in enumerate(re.split(pattern, text)):
        if i % 2:
            units.append(Control(names[part]))
        elif part:
            units.append(part)
    return units


def looks_rendered(text: str) -> bool:
    """Whether a plain str starts as a rendered chat does and holds a control piece's text: a rendered chat that
    lost its plan (its `<s>`, `</s>` or `<step>` would be encoded as text)."""
    return text.startswith(_OPENINGS) or (text.startswith(_OPENINGS_WITHOUT_BOS) and any(p in text for p in _PIECES))
