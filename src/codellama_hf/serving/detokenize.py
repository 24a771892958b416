"""Generated ids to streamed text: incremental decoding and stop strings, which the engines cannot do.

Each step decodes the ids since the last settled point (a multi-byte character can span several byte-fallback
ids, and the first piece decodes differently from the others) and releases only text that cannot change any more:
a trailing U+FFFD (an unfinished UTF-8 sequence) and any tail that could still grow into a stop string are held
back, as llama.cpp's server holds back a partial stop word. Settling keeps each step's decode short, so a
16k-token answer costs no more per token than a short one.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

REPLACEMENT = "\ufffd"


MAX_STOPS = 4  # stop strings per request, as OpenAI and TGI allow; every API shape checks it


def partial_stop_length(text: str, stops: Sequence[str]) -> int:
    """Length of the longest tail of `text` that is the start of some stop string (a stop that may still come)."""
    best = 0
    for stop in stops:
        tail = StopTail(stop)
        best = max(best, tail.feed(text))
    return best


class StopTail:
    """How much of a growing text's end could still become `stop`: Knuth-Morris-Pratt's automaton, fed only the
    text appended since the last call, its failure table built only as far as a match has reached. So each token
    costs O(its new text), whatever the stop's and the answer's length (a quadratic check per token froze the
    server for 25 s with long stops)."""

    def __init__(self, stop: str):
        self.stop, self._fail, self._k, self._text = stop, [0], 0, ""

    def _extend(self, n: int) -> None:
        stop, fail = self.stop, self._fail
        k = fail[-1]
        for i in range(len(fail), min(n, len(stop))):
            while k and stop[i] != stop[k]:
                k = fail[k - 1]
            if stop[i] == stop[k]:
                k += 1
            fail.append(k)

    def feed(self, text: str) -> int:
        """The longest tail of `text` (which usually extends the last one) that is a proper start of the stop."""
        if not text.startswith(self._text):  # rewritten (not seen with SentencePiece): start over
            self._k, self._text = 0, ""
        stop, fail, k, m = self.stop, self._fail, self._k, len(self.stop)
        if m == 0:
            return 0
        for ch in text[len(self._text):]:
            if k == m:
                k = fail[k - 1]
            while k and ch != stop[k]:
                k = fail[k - 1]
            if ch == stop[k]:
                k += 1
                if k > len(fail):
                    self._extend(k)
        self._k, self._text = k, text
        return fail[m - 1] if k == m else k  # a whole stop at the end: the longest proper start within it


class TextAssembler:
    """Feed it the generated ids (all of them, each time); it returns the text that is now final.

    decode: ids from the start -> text. decode_more: ids that continue earlier ones -> their text (for
    SentencePiece, Meta's decode_infilling, which keeps the space a leading `▁` stands for); without it every step
    decodes everything.
    """

    SETTLE = 32  # ids kept unsettled behind the newest one

    def __init__(self, decode: Callable[[list[int]], str], stop: Sequence[str] = (),
                 decode_more: Callable[[list[int]], str] | None = None):
        self._decode_first, self._decode_more = decode, decode_more
        self._stops = [s for s in stop if s]
        self._tails = [StopTail(s) for s in self._stops]
        self._settled_ids, self._settled_text = 0, ""
        self.emitted = ""  # text already released
        self.stopped_by: str | None = None  # the stop string that ended the text, once found

    def _decode(self, ids: list[int]) -> str:
        n = self._settled_ids
        if self._decode_more is not None and len(ids) - n >= 2 * self.SETTLE:
            # settle ids[n:k] when they end on a whole character: what follows decodes on its own from there
            k = len(ids) - self.SETTLE
            part = (self._decode_more if n else self._decode_first)(ids[n:k])
            if not part.endswith(REPLACEMENT):
                self._settled_ids, self._settled_text, n = k, self._settled_text + part, k
        if n == 0:
            return self._decode_first(ids)
        return self._settled_text + self._decode_more(ids[n:])

    def feed(self, ids: list[int]) -> str:
        """New final text for `ids`; after a stop string is found, the text up to it and nothing more."""
        if self.stopped_by is not None:
            return ""
        full = self._decode(ids)
        start = len(self.emitted)
        hits = [(full.find(s, start), s) for s in self._stops]
        hits = [(at, s) for at, s in hits if at >= 0]
        if hits:
            at, self.stopped_by = min(hits)
            return self._release(full[:at])
        stable = full.rstrip(REPLACEMENT)
        held = max((t.feed(stable) for t in self._tails), default=0)
        return self._release(stable[:len(stable) - held])

    def finish(self, ids: list[int]) -> str:
        """The rest of the text at the end of generation (held-back tails are final now)."""
        if self.stopped_by is not None:
            return ""
        tail = self.feed(ids)
        if self.stopped_by is not None:
            return tail
        return tail + self._release(self._decode(ids))

    def _release(self, text: str) -> str:
        # Text is only ever appended: a decode that rewrote released text (it does not happen with SentencePiece
        # pieces, whose decodes concatenate once no byte sequence is open) keeps what was sent.
        if len(text) <= len(self.emitted):
            return ""
        new = text[len(self.emitted):]
        self.emitted = text
        return new
