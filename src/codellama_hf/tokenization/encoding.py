"""Plain text as SentencePiece encodes and decodes it, and the Transformers encode/pad/offsets machinery on top.

Every path pads and truncates its own ids or encodings, never the shared backend (see set_truncation_and_padding).
"""

from __future__ import annotations

from transformers.tokenization_utils_base import BatchEncoding, TruncationStrategy
from transformers.utils import PaddingStrategy

from ..errors import UserInputError
from .spm_model import decode_pieces, escape
from .constants import SMILEY


class EncodingMixin:
    """`encode_text` (plain text, public), `_sp_encode` (Meta's `encode`), `_decode`, and Transformers'
    `__call__`/`tokenize` paths.

    Uses the backends and ids CodeLlamaTokenizer.__init__ sets (`_tokenizer`, `_fast`, `_dummy_prefix`,
    `_space_byte_id`, `_smiley_ids`), InfillingMixin's `_split_infilling`/`_prompt_ids`, since any call may carry
    an infilling prompt, and ChatMixin's `_chat_plans`/`_plan_ids`, since any call may carry a rendered chat.
    """

    # ----- Meta's primitives ------------------------------------------------------------------------------------
    def _sp_encode(self, texts: list[str]) -> list[list[int]]:
        """One SentencePiece `encode` per text (dummy prefix each, no BOS/EOS), batched on all cores."""
        if self._fast is None:
            return [e.ids for e in self._tokenizer.encode_batch_fast(texts, add_special_tokens=False)]
        escaped = [escape(t, dummy_prefix=self._dummy_prefix) for t in texts]
        return [e.ids for e in self._fast.encode_batch_fast(escaped, add_special_tokens=False)]

    def encode_text(self, text: str, *, add_special_tokens: bool = True) -> list[int]:
        """`text` as text: SentencePiece's ids for it, with BOS (and EOS where `add_eos_token`) unless
        `add_special_tokens=False`.

        Unlike `encode`/`__call__`, nothing in the string is read as an instruction: a fill marker (`<FILL_ME>`)
        stays text instead of making an infilling prompt, and a string that looks like a rendered chat is encoded as
        text instead of refused. `<PRE>`, `<EOT>`, `<step>`, `<s>` and `</s>` written in it stay text too, as
        everywhere in this tokenizer. Use it for text from users and documents (servers, training data).
        """
        if not isinstance(text, str):
            raise UserInputError(f"encode_text takes a string, got {type(text).__name__} {text!r:.40}; pass the text")
        return self._with_bos_eos(self._sp_encode([text])[0], add_special_tokens)

    def _with_bos_eos(self, ids: list[int], add_special_tokens: bool, *, once: bool = False) -> list[int]:
        """once: a rendered chat carries its own BOS; a second one would not be Meta's prompt."""
        if add_special_tokens and self.add_bos_token and not (once and ids[:1] == [self.bos_token_id]):
            ids.insert(0, self.bos_token_id)  # in place: batches of long texts are millions of ids
        if add_special_tokens and self.add_eos_token and not (once and ids[-1:] == [self.eos_token_id]):
            ids.append(self.eos_token_id)
        return ids

    def _decode(self, token_ids, skip_special_tokens: bool = False, clean_up_tokenization_spaces=None,
                infilling: bool = False, **kwargs) -> str:
        """`infilling=True` decodes a middle as Meta's decode_infilling does, keeping its leading space (what a
        TextStreamer needs, as it calls `decode(ids, **decode_kwargs)`)."""
        ids = [token_ids] if isinstance(token_ids, int) else [int(i) for i in token_ids]
        if infilling:
            return self._decode(self._smiley_ids + ids, skip_special_tokens=skip_special_tokens)[len(SMILEY):]
        text = self._tokenizer.decode(ids, skip_special_tokens=skip_special_tokens)
        # The backend differs from SentencePiece in two corners, both on ids SentencePiece never encodes to: its
        # ByteFallback turns a whole byte run holding an invalid byte into U+FFFDs (SentencePiece keeps the valid
        # bytes), and it strips a leading space that came from a <0x20> byte. Redo those decodes piece by piece.
        if "\ufffd" in text or (ids and ids[0] == self._space_byte_id):
            skip = {i for i, t in self.added_tokens_decoder.items() if t.special} if skip_special_tokens else ()
            pieces = [self._tokenizer.id_to_token(i) or "" for i in ids if i not in skip]
            return decode_pieces(pieces, dummy_prefix=self._dummy_prefix)
        return text

    # ----- the Transformers API ---------------------------------------------------------------------------------
    def _encode_plus(self, text, text_pair=None, add_special_tokens: bool = True,
                     padding_strategy=PaddingStrategy.DO_NOT_PAD,
                     truncation_strategy=TruncationStrategy.DO_NOT_TRUNCATE, max_length=None, stride: int = 0,
                     is_split_into_words: bool = False, pad_to_multiple_of=None, padding_side=None,
                     return_tensors=None, return_token_type_ids=None, return_attention_mask=None,
                     return_overflowing_tokens: bool = False, return_special_tokens_mask: bool = False,
                     return_offsets_mapping: bool = False, return_length: bool = False, verbose: bool = True,
                     split_special_tokens=None, suffix=None, suffix_first: bool = False, **kwargs) -> BatchEncoding:
        if is_split_into_words:
            raise UserInputError("is_split_into_words=True is not supported: SentencePiece encodes whole strings")
        batched = isinstance(text, (list, tuple))
        texts = list(text) if batched else [text]
        if not all(isinstance(t, str) for t in texts):
            raise UserInputError(f"text must be a string or a list of strings, got {type(texts[0]).__name__}")
        chats = self._chat_plans(texts, split_special_tokens=split_special_tokens)
        if chats and (return_offsets_mapping or return_overflowing_tokens or text_pair is not None
                      or suffix is not None):
            raise UserInputError("rendered chats support neither text_pair, suffix=, return_offsets_mapping nor "
                                 "return_overflowing_tokens")
        prefixes, suffixes = self._split_infilling([t if i not in chats else "" for i, t in enumerate(texts)],
                                                   suffix, batched=batched)
        layout = dict(batched=batched, return_tensors=return_tensors, return_attention_mask=return_attention_mask,
                      padding_strategy=padding_strategy, max_length=max_length,
                      pad_to_multiple_of=pad_to_multiple_of, padding_side=padding_side or self.padding_side)
        if return_offsets_mapping or return_overflowing_tokens or text_pair is not None:
            if any(s is not None for s in suffixes):
                raise UserInputError("infilling prompts support neither text_pair, return_offsets_mapping nor "
                                     "return_overflowing_tokens")
            return self._encode_with_offsets(
                texts, text_pair if batched or text_pair is None else [text_pair],
                add_special_tokens=add_special_tokens,
                truncation=truncation_strategy != TruncationStrategy.DO_NOT_TRUNCATE, stride=stride,
                flags=dict(return_token_type_ids=return_token_type_ids, return_attention_mask=return_attention_mask,
                           return_overflowing_tokens=return_overflowing_tokens,
                           return_special_tokens_mask=return_special_tokens_mask,
                           return_offsets_mapping=return_offsets_mapping, return_length=return_length,
                           verbose=verbose), **layout)
        ids = self._prompt_ids(prefixes, suffixes, suffix_first=suffix_first, add_special_tokens=add_special_tokens)
        for i, row in zip(chats, self._plan_ids(list(chats.values()))):
            ids[i] = self._with_bos_eos(row, add_special_tokens, once=True)
        if truncation_strategy != TruncationStrategy.DO_NOT_TRUNCATE and max_length is not None:
            ids = [i[:max_length] if self.truncation_side == "right" else i[-max_length:] for i in ids]
        extra = {}
        if return_special_tokens_mask:
            special = set(self.all_special_ids)
            extra["special_tokens_mask"] = [[int(i in special) for i in row] for row in ids]
        if return_token_type_ids:
            extra["token_type_ids"] = [[0] * len(row) for row in ids]
        if return_length:
            extra["length"] = [len(row) for row in ids]
        return self._batch(ids, extra=extra, **layout)

    def _encode_with_offsets(self, texts, pairs, *, add_special_tokens, truncation, stride, flags, batched,
                             return_tensors, return_attention_mask, padding_strategy, max_length, pad_to_multiple_of,
                             padding_side) -> BatchEncoding:
        """The backend's full pipeline (offsets, overflow, pairs), padded and truncated on this call's encodings."""
        inputs = texts if pairs is None else list(zip(texts, pairs))
        encodings = self._tokenizer.encode_batch(inputs, add_special_tokens=add_special_tokens)
        if truncation and max_length is not None:
            for e in encodings:
                e.truncate(max_length, stride=stride, direction=self.truncation_side)
        if padding_strategy != PaddingStrategy.DO_NOT_PAD:
            every = [x for e in encodings for x in (e, *e.overflowing)]
            length = max_length if padding_strategy == PaddingStrategy.MAX_LENGTH and max_length else max(
                len(e.ids) for e in every)
            if pad_to_multiple_of:
                length = -(-length // pad_to_multiple_of) * pad_to_multiple_of
            for e in every:
                e.pad(length, direction=padding_side, pad_id=self.pad_token_id, pad_type_id=self.pad_token_type_id,
                      pad_token=self.pad_token)
        converted = [self._convert_encoding(e, **flags) for e in encodings]
        data = {key: [row for item, _ in converted for row in item[key]] for key in converted[0][0]}
        if flags["return_overflowing_tokens"]:
            data["overflow_to_sample_mapping"] = [i for i, (item, _) in enumerate(converted)
                                                  for _ in item["input_ids"]]
        output = BatchEncoding(data, [e for _, es in converted for e in es], tensor_type=return_tensors)
        if not batched and return_tensors is None and not flags["return_overflowing_tokens"]:
            output = BatchEncoding({k: v[0] for k, v in output.items()}, output.encodings)
        return output

    def set_truncation_and_padding(self, *args, **kwargs):
        # Differs: stock stores padding/truncation on the shared backend, where one call (or thread) changes the
        # next. Every path here pads and truncates its own ids or encodings instead.
        raise NotImplementedError(f"{type(self).__name__} never stores padding or truncation in its backend")

    def _batch(self, ids: list[list[int]], *, extra: dict, batched: bool, return_tensors, return_attention_mask,
               padding_strategy, max_length, pad_to_multiple_of, padding_side) -> BatchEncoding:
        data = {"input_ids": ids, **extra}
        if padding_strategy == PaddingStrategy.DO_NOT_PAD:
            if return_attention_mask is not False and "attention_mask" in self.model_input_names:
                data["attention_mask"] = [[1] * len(row) for row in ids]
            if not batched:
                data = {k: v[0] for k, v in data.items()}
            return BatchEncoding(data, tensor_type=return_tensors, prepend_batch_axis=not batched and bool(
                return_tensors))
        if not batched:
            data = {k: v[0] for k, v in data.items()}
        return self.pad(data, padding=padding_strategy, max_length=max_length, pad_to_multiple_of=pad_to_multiple_of,
                        padding_side=padding_side, return_attention_mask=return_attention_mask,
                        return_tensors=return_tensors)

    def tokenize(self, text: str, pair: str | None = None, add_special_tokens: bool = False, **kwargs) -> list[str]:
        ids = self._encode_plus(text, text_pair=pair, add_special_tokens=add_special_tokens, **kwargs)["input_ids"]
        return self.convert_ids_to_tokens(ids)
