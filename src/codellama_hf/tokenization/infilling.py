"""Meta's infilling prompts (PSM and SPM) and the decoding of a generated middle, on the tokenizer."""

from __future__ import annotations

import logging
from collections.abc import Sequence

from ..configuration import capabilities
from ..errors import UserInputError
from .constants import SMILEY

logger = logging.getLogger(__name__)


class InfillingMixin:
    """`encode_infilling`, `infilling_prompt_ids`, `decode_infilling`, and the prefix/suffix split behind `suffix=`
    and the fill marker.

    Uses the ids CodeLlamaTokenizer.__init__ finds (`_control_ids`, `_smiley_prefix_len`) and EncodingMixin's
    `_sp_encode`, `_with_bos_eos` and `_decode`.
    """

    def encode_infilling(self, text: str) -> list[int]:
        """Meta's `encode_infilling`: `text` without the implicit leading space (`encode("☺" + text)[2:]`)."""
        return self._sp_encode([SMILEY + text])[0][self._smiley_prefix_len:]

    def infilling_prompt_ids(self, prefix: str, suffix: str, *, suffix_first: bool = False,
                             add_special_tokens: bool = True, max_length: int | None = None) -> list[int]:
        """Meta's `infilling_prompt_tokens`: PSM `<PRE> pre <SUF>suf <MID>`, or SPM `<PRE> <SUF>suf <MID> pre`.

        max_length: at most this many ids; a longer prompt loses the start of its prefix and the end of its
        suffix, keeping the code nearest the gap (as llama.cpp's server does): the suffix keeps at least a quarter
        of the room, more when the prefix needs less.
        """
        return self._prompt_ids([prefix], [suffix], suffix_first=suffix_first, add_special_tokens=add_special_tokens,
                                max_length=max_length)[0]

    def _prompt_ids(self, prefixes: list[str], suffixes: list[str | None], *, suffix_first: bool,
                    add_special_tokens: bool, max_length: int | None = None) -> list[list[int]]:
        """Plain encodes where the suffix is None, else Meta's infilling prompt; one batched backend call."""
        infill = [i for i, s in enumerate(suffixes) if s is not None]
        if infill:
            pre, suf, mid = self._require_infilling()
        encoded = self._sp_encode(prefixes + [SMILEY + suffixes[i] for i in infill])
        suffix_ids = {i: ids[self._smiley_prefix_len:] for i, ids in zip(infill, encoded[len(prefixes):])}
        bos = [self.bos_token_id] if add_special_tokens and self.add_bos_token else []
        prompts = []
        for i, ids in enumerate(encoded[:len(prefixes)]):
            if i not in suffix_ids:
                prompts.append(self._with_bos_eos(ids, add_special_tokens))
                continue
            after = suffix_ids[i]
            if max_length is not None:
                ids, after = trim_around_gap(ids, after, room=max_length - len(bos) - 3)
            if suffix_first:
                prompts.append(bos + [pre, suf] + after + [mid] + ids)
            else:
                prompts.append(bos + [pre] + ids + [suf] + after + [mid])
        return prompts

    def _require_infilling(self) -> tuple[int, int, int]:
        caps = capabilities(None, self)  # the tokenizer alone: its pieces decide
        if caps.fim_token_ids is None:
            raise UserInputError(caps.infilling_refusal)
        return tuple(caps.fim_token_ids[k] for k in ("prefix_token_id", "suffix_token_id", "middle_token_id"))

    def decode_infilling(self, token_ids: Sequence[int], *, stop_at_eot: bool = True) -> str:
        """Meta's `decode_infilling`: the generated middle, cut at EOT/EOS, with no space lost or added at its start."""
        ids = [int(i) for i in token_ids]
        if stop_at_eot:
            stops = {self._control_ids["eot_token_id"], self.eos_token_id} - {None}
            ids = next((ids[:k] for k, i in enumerate(ids) if i in stops), ids)
        return self._decode(ids, infilling=True)

    def _split_infilling(self, texts: list[str], suffix, *, batched: bool):
        """Per text: (prefix, suffix or None), from `suffix=` or from the fill marker in the text."""
        suffixes = list(suffix) if batched and isinstance(suffix, (list, tuple)) else [suffix] * len(texts)
        if len(suffixes) != len(texts):
            raise UserInputError(f"got {len(texts)} texts but {len(suffixes)} suffixes; pass one suffix per text")
        prefixes = []
        for i, (t, s) in enumerate(zip(texts, suffixes)):
            if s is not None and self.fill_marker and self.fill_marker in t:
                raise UserInputError(f"text {i} holds {self.fill_marker!r} and suffix= is given too; use one of them")
            if s is None:
                t, s = split_at_marker(t, marker=self.fill_marker, where=f"text {i}")
            prefixes.append(t)
            suffixes[i] = s
        return prefixes, suffixes


def split_at_marker(text: str, *, marker: str | None, where: str = "the code") -> tuple[str, str | None]:
    """The one fill-marker parser: (prefix, suffix) of a text with one `marker`, (text, None) of one without.
    `where` names the text in the error that more than one marker raises."""
    count = text.count(marker) if marker else 0
    if count > 1:
        raise UserInputError(f"{where} holds {count} fill markers {marker!r}; put exactly one where the middle goes "
                             f"(infilling fills one gap)")
    if count == 0:
        return text, None
    prefix, suffix = text.split(marker)
    return prefix, suffix


def trim_around_gap(before: list[int], after: list[int], *, room: int) -> tuple[list[int], list[int]]:
    """Keep at most `room` ids of code nearest the gap: the end of `before` and the start of `after`, which keeps at
    least a quarter of the room (as llama.cpp's server splits it), more when `before` needs less."""
    if room < 1:
        raise UserInputError(f"the prompt limit leaves room for {room} ids of code beside the infilling control "
                             f"ids; pass a larger limit")
    if len(before) + len(after) <= room:
        return before, after
    keep_after = min(len(after), max(room // 4, room - len(before)))
    keep_before = room - keep_after
    logger.warning("the infilling prompt is %d ids over the limit: dropped %d ids from the start of the prefix and "
                   "%d from the end of the suffix", len(before) + len(after) - room, len(before) - keep_before,
                   len(after) - keep_after)
    return before[len(before) - keep_before:], after[:keep_after]
