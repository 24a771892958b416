"""CodeLlamaTokenizer: Meta's Code Llama tokenization, token for token, on `tokenizers` (no SentencePiece at run time).

Differs from Transformers' CodeLlamaTokenizer:
- plain text is encoded exactly as SentencePiece encodes it (see spm_model.py), and decodes back losslessly;
- infilling prompts (PSM and SPM) and Instruct chat prompts are concatenations of separate encodes joined by
  control ids, as in Meta's `llama/generation.py`, instead of a post-processor that adds stray `▁` pieces;
- control ids are found by piece name and never invented (no new `<FILL_ME>` id, nothing appended to the
  32000-piece vocab);
- plain text never becomes a control id: `<PRE>`, `</s>` or `<step>` typed in code stays text. This is the one
  deliberate difference from SentencePiece, which turns the user-defined `<step>` (and, in the 32016-piece files,
  ` <PRE>` and friends) in text into control ids;
- no call changes the backend's state (padding and truncation act on each call's own ids), so one tokenizer is
  safe to share between threads.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence

from tokenizers import AddedToken
from transformers.tokenization_utils_base import BatchEncoding, TruncationStrategy
from transformers.tokenization_utils_tokenizers import TokenizersBackend
from transformers.utils import PaddingStrategy

from .chat import CHAT_BUILDERS, CHAT_TEMPLATES, check_messages
from .configuration import CodeLlamaConfig
from .errors import UserInputError
from .infilling import INFILLING_VARIANTS, in_text_generation_pipeline, trim_around_gap
from .spm_model import decode_pieces, escape, has_dummy_prefix, load_backend, twin
from .tokenizer_files import GUARD_FILE, OWN_FILE, is_guard, write_guard
from .variants import CHAT_FORMATS, PRESETS, variant_in_name

logger = logging.getLogger(__name__)

# CodeLlamaConfig field -> the piece Meta's tokenizer.py looks the id up by.
CONTROL_PIECES = {"prefix_token_id": "▁<PRE>", "suffix_token_id": "▁<SUF>", "middle_token_id": "▁<MID>",
                  "eot_token_id": "▁<EOT>", "step_token_id": "<step>"}
SMILEY = "☺"  # Meta's stand-in for "no dummy prefix here" in encode_infilling / decode_infilling
INSTRUCT_VARIANTS = tuple(v.name for v in PRESETS if v.chat_format != "none")


class CodeLlamaTokenizer(TokenizersBackend):
    """Code Llama's tokenizer with Meta's exact ids for text, infilling and Instruct chats.

    Args:
        vocab_file: Meta's SentencePiece `tokenizer.model` (read without sentencepiece). Preferred when present.
        tokenizer_file: a folder's `tokenizer.json`: this class's file before 0.2, or a hub folder's (refused unless
            it encodes as SentencePiece does). The guard this class writes there now is skipped.
        codellama_tokenizer_file: the `codellama_tokenizer.json` this class writes (tokenizer_files.py says why
            not `tokenizer.json`); preferred over `tokenizer_file`.
        chat_format: "none" | "inst" | "step"; None reads it from `variant`, else from the folder's config.json
            (a CodeLlamaConfig, or a stock Llama config whose shapes decide it), else "none".
        variant: a Code Llama variant name, used only to decide `chat_format` when that is None.
        fill_marker: text that splits a prompt into prefix and suffix for infilling (a marker, never a token).
    """

    vocab_files_names = {"vocab_file": "tokenizer.model", "tokenizer_file": GUARD_FILE,
                         "codellama_tokenizer_file": OWN_FILE}
    model_input_names = ["input_ids", "attention_mask"]
    padding_side = "left"  # generation pads on the left

    def __init__(self, vocab_file: str | None = None, tokenizer_file: str | None = None,
                 codellama_tokenizer_file: str | None = None, *,
                 chat_format: str | None = None, variant: str | None = None, fill_marker: str | None = "<FILL_ME>",
                 unk_token="<unk>", bos_token="<s>", eos_token="</s>", pad_token=None,
                 add_bos_token: bool | None = None, add_eos_token: bool | None = None, **kwargs):
        if codellama_tokenizer_file is not None or is_guard(tokenizer_file):
            tokenizer_file = codellama_tokenizer_file
        backend = load_backend(vocab_file=vocab_file, tokenizer_file=tokenizer_file,
                               unreachable=set(CONTROL_PIECES.values()))
        bos_from_file, eos_from_file = _bos_eos_of(backend)
        self._control_ids = {key: backend.token_to_id(piece) for key, piece in CONTROL_PIECES.items()}
        present = [CONTROL_PIECES[k] for k, i in self._control_ids.items() if i is not None]
        backend.add_special_tokens([AddedToken(p, special=True, normalized=False) for p in present])
        self._tokenizer = backend
        self._fast, self._dummy_prefix = twin(backend), has_dummy_prefix(backend)
        self.chat_format = resolve_chat_format(chat_format, variant=variant, folder=kwargs.get("name_or_path"))
        self.fill_marker = fill_marker
        extra = [t for t in kwargs.pop("extra_special_tokens", None) or [] if str(t) not in CONTROL_PIECES.values()]
        kwargs.pop("split_special_tokens", None)
        kwargs.pop("chat_template", None)  # derived from chat_format, the one source of truth
        super().__init__(
            unk_token=unk_token, bos_token=bos_token, eos_token=eos_token,
            pad_token=pad_token if pad_token is not None else unk_token,  # never produced by byte-fallback text
            add_bos_token=bos_from_file if add_bos_token is None else add_bos_token,
            add_eos_token=eos_from_file if add_eos_token is None else add_eos_token,
            extra_special_tokens=extra + present, split_special_tokens=True, chat_format=self.chat_format,
            fill_marker=fill_marker, chat_template=CHAT_TEMPLATES.get(self.chat_format), **kwargs)
        self._space_byte_id = backend.token_to_id("<0x20>")
        self._smiley_prefix_len = len(self._sp_encode([SMILEY])[0])  # Meta's vocab: 2 ("▁", "☺")
        smiley_id = backend.token_to_id(SMILEY)
        self._smiley_ids = [smiley_id] if smiley_id is not None else [
            backend.token_to_id(f"<0x{b:02X}>") for b in SMILEY.encode("utf-8")]

    @classmethod
    def convert_to_native_format(cls, trust_remote_code=False, **kwargs):
        return kwargs  # __init__ builds the backend itself, from tokenizer.model or tokenizer.json

    def _save_pretrained(self, save_directory, file_names, legacy_format=None, filename_prefix=None):
        prefix = f"{filename_prefix}-" if filename_prefix else ""
        own = os.path.join(str(save_directory), prefix + OWN_FILE)
        self.backend_tokenizer.save(own)
        guard = write_guard(save_directory) if not prefix else None
        return tuple(file_names) + tuple(p for p in (own, guard) if p)

    def _add_tokens(self, new_tokens, special_tokens=False) -> int:
        if not special_tokens and any(not getattr(t, "special", False) for t in new_tokens):
            self._fast = None  # tokens matched in text need the full pipeline
        return super()._add_tokens(new_tokens, special_tokens=special_tokens)

    @property
    def control_token_ids(self) -> dict[str, int | None]:
        """prefix/suffix/middle/eot/step token ids by piece name (None where the vocab lacks the piece)."""
        return dict(self._control_ids)

    # ----- Meta's primitives ------------------------------------------------------------------------------------
    def _sp_encode(self, texts: list[str]) -> list[list[int]]:
        """One SentencePiece `encode` per text (dummy prefix each, no BOS/EOS), batched on all cores."""
        if self._fast is None:
            return [e.ids for e in self._tokenizer.encode_batch_fast(texts, add_special_tokens=False)]
        escaped = [escape(t, dummy_prefix=self._dummy_prefix) for t in texts]
        return [e.ids for e in self._fast.encode_batch_fast(escaped, add_special_tokens=False)]

    def _with_bos_eos(self, ids: list[int], add_special_tokens: bool) -> list[int]:
        if add_special_tokens and self.add_bos_token:
            ids.insert(0, self.bos_token_id)  # in place: batches of long texts are millions of ids
        if add_special_tokens and self.add_eos_token:
            ids.append(self.eos_token_id)
        return ids

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
        ids = [self._control_ids[k] for k in ("prefix_token_id", "suffix_token_id", "middle_token_id")]
        if None in ids:
            raise UserInputError(f"this vocabulary ({self.vocab_size} pieces) has no infilling pieces; infilling "
                                 f"works with the variants trained for it: {', '.join(INFILLING_VARIANTS)}")
        return tuple(ids)

    def decode_infilling(self, token_ids: Sequence[int], *, stop_at_eot: bool = True) -> str:
        """Meta's `decode_infilling`: the generated middle, cut at EOT/EOS, with no space lost or added at its start."""
        ids = [int(i) for i in token_ids]
        if stop_at_eot:
            stops = {self._control_ids["eot_token_id"], self.eos_token_id} - {None}
            ids = next((ids[:k] for k, i in enumerate(ids) if i in stops), ids)
        return self._decode(ids, infilling=True)

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
        if split_special_tokens is False:
            raise UserInputError("split_special_tokens=False is not supported: text never turns into control ids "
                                 "here; build prompts with suffix=..., apply_chat_template or explicit ids")
        if is_split_into_words:
            raise UserInputError("is_split_into_words=True is not supported: SentencePiece encodes whole strings")
        batched = isinstance(text, (list, tuple))
        texts = list(text) if batched else [text]
        if not all(isinstance(t, str) for t in texts):
            raise UserInputError(f"text must be a string or a list of strings, got {type(texts[0]).__name__}")
        prefixes, suffixes = self._split_infilling(texts, suffix, batched=batched)
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

    def _split_infilling(self, texts: list[str], suffix, *, batched: bool):
        """Per text: (prefix, suffix or None), from `suffix=` or from the fill marker in the text."""
        suffixes = list(suffix) if batched and isinstance(suffix, (list, tuple)) else [suffix] * len(texts)
        if len(suffixes) != len(texts):
            raise UserInputError(f"got {len(texts)} texts but {len(suffixes)} suffixes; pass one suffix per text")
        prefixes = []
        for i, (t, s) in enumerate(zip(texts, suffixes)):
            marks = t.count(self.fill_marker) if self.fill_marker else 0
            if marks and s is not None:
                raise UserInputError(f"text {i} holds {self.fill_marker!r} and suffix= is given too; use one of them")
            if marks > 1:
                raise UserInputError(f"text {i} holds {self.fill_marker!r} {marks} times; infilling takes one gap")
            if marks and in_text_generation_pipeline():
                raise UserInputError(
                    f"the prompt holds the fill marker {self.fill_marker!r}: pipeline('text-generation') would return "
                    f"the marker followed by the middle; use pipeline('code-infilling'), which returns the completed "
                    f"code")
            if marks:
                t, s = t.split(self.fill_marker)
            prefixes.append(t)
            suffixes[i] = s
        return prefixes, suffixes

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

    # ----- chat -------------------------------------------------------------------------------------------------
    def apply_chat_template(self, conversation, tools=None, documents=None, chat_template=None,
                            add_generation_prompt: bool = False, continue_final_message: bool = False,
                            tokenize: bool = True, *, allow_special_tags: bool = False, padding=False,
                            truncation: bool = False, max_length=None, return_tensors=None, return_dict: bool = True,
                            return_assistant_tokens_mask: bool = False, tokenizer_kwargs=None, **kwargs):
        """Meta's Instruct prompt for `conversation` (a list of messages, or a list of such lists).

        Differs from Transformers: with tokenize=True the ids are built as Meta builds them (separate encodes
        joined by control ids), never by tokenizing a rendered string. Messages holding `[INST]`, `[/INST]`,
        `<<SYS>>`, `<</SYS>>` or `<step>` raise, as Meta refuses them, unless allow_special_tags=True, which
        encodes them as plain text (text is never a control id). A non-Instruct tokenizer raises.
        """
        if self.chat_format == "none":
            raise UserInputError(f"{self.name_or_path or 'this tokenizer'!r} has chat_format 'none': only Instruct "
                                 f"variants chat ({', '.join(INSTRUCT_VARIANTS)}); load one, or pass "
                                 "chat_format='inst' or 'step'")
        unsupported = {"tools": tools, "documents": documents, "chat_template": chat_template,
                       "continue_final_message": continue_final_message,
                       "return_assistant_tokens_mask": return_assistant_tokens_mask}
        if given := [k for k, v in unsupported.items() if v]:
            raise UserInputError(f"{', '.join(given)} not supported: Code Llama's chat formats are fixed (Meta's)")
        batched = bool(conversation) and isinstance(conversation[0], (list, tuple))
        dialogs = [list(c) for c in conversation] if batched else [list(conversation)]
        for dialog in dialogs:
            check_messages(dialog, allow_special_tags=allow_special_tags)
        if not tokenize:
            rendered = [super(CodeLlamaTokenizer, self).apply_chat_template(
                d, add_generation_prompt=add_generation_prompt, tokenize=False, **kwargs) for d in dialogs]
            return rendered if batched else rendered[0]
        build = CHAT_BUILDERS[self.chat_format]
        ids = [build(d, encode=lambda text: self._sp_encode([text])[0], bos_id=self.bos_token_id,
                     eos_id=self.eos_token_id, step_id=self._control_ids["step_token_id"],
                     add_generation_prompt=add_generation_prompt) for d in dialogs]
        if truncation and max_length is not None:
            ids = [i[:max_length] if self.truncation_side == "right" else i[-max_length:] for i in ids]
        padding_strategy, _, max_length, _ = self._get_padding_truncation_strategies(padding=padding,
                                                                                    max_length=max_length)
        out = self._batch(ids, extra={}, batched=batched, return_tensors=return_tensors, return_attention_mask=None,
                          padding_strategy=padding_strategy, max_length=max_length, pad_to_multiple_of=None,
                          padding_side=self.padding_side)
        return out if return_dict else out["input_ids"]


def resolve_chat_format(chat_format: str | None, *, variant: str | None, folder) -> str:
    """None means: the variant's format, else the format in the folder's config.json, else the format of the
    variant the folder or hub id is named after (`CodeLlama-7b-Instruct`, `codellama/CodeLlama-7b-Instruct-hf`),
    else "none"."""
    if chat_format is None and variant is not None:
        chat_format = CodeLlamaConfig.from_variant(variant).chat_format
    if chat_format is None and folder and os.path.isfile(os.path.join(str(folder), "config.json")):
        try:
            config_dict, _ = CodeLlamaConfig.get_config_dict(str(folder))
            chat_format = config_dict.get("chat_format")
        except (OSError, ValueError) as err:
            logger.info("no chat format from %s/config.json (%s)", folder, err)
    if chat_format is None and folder and (named := variant_in_name(str(folder))) is not None:
        chat_format = named.chat_format
    chat_format = chat_format or "none"
    if chat_format not in CHAT_FORMATS:
        raise UserInputError(f"unknown chat_format {chat_format!r}; expected one of: {', '.join(CHAT_FORMATS)}")
    return chat_format


def _bos_eos_of(backend) -> tuple[bool, bool]:
    """Whether the backend's post-processor adds BOS / EOS (a tokenizer.json keeps them there), else Meta's default."""
    if backend.post_processor is None:
        return True, False
    plain = backend.encode("a", add_special_tokens=False).ids
    full = backend.encode("a", add_special_tokens=True).ids
    start = full.index(plain[0]) if plain and plain[0] in full else 0
    return start > 0, len(full) - start > len(plain)
