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

One mixin per concern, so each reads alone: encoding.py (plain text and the Transformers call paths),
infilling.py (Meta's infilling prompts), chat.py (Instruct chats), files.py (what a saved folder holds); the class
below only builds the backend and finds the control ids they share. What the mixins stand on: spm_model.py (Meta's
tokenizer.model read into a SentencePiece-exact backend), chat_formats.py (Meta's chat prompt plans and the Jinja
templates that render them), rendered.py (the rendered chat string that encodes back to Meta's ids). Imports run one
way: constants.py at the bottom, this module at the top.
"""

from __future__ import annotations

from tokenizers import AddedToken
from transformers.tokenization_utils_tokenizers import TokenizersBackend

from .chat_formats import CHAT_TEMPLATES
from ..remote_code import TOKENIZER_AUTO_MAP
from .spm_model import has_dummy_prefix, load_backend, twin
from ..variants import INSTRUCT_VARIANTS
from .chat import ChatMixin, resolve_chat_format
from .constants import CONTROL_PIECES, GUARD_FILE, OWN_FILE, SMILEY
from .encoding import EncodingMixin
from .files import FilesMixin, is_guard, save_llama_format_tokenizer
from .infilling import InfillingMixin

__all__ = ["CodeLlamaTokenizer", "CONTROL_PIECES", "INSTRUCT_VARIANTS", "SMILEY", "resolve_chat_format",
           "save_llama_format_tokenizer"]


class CodeLlamaTokenizer(EncodingMixin, InfillingMixin, ChatMixin, FilesMixin, TokenizersBackend):
    """Code Llama's tokenizer with Meta's exact ids for text, infilling and Instruct chats.

    Args:
        vocab_file: Meta's SentencePiece `tokenizer.model` (read without sentencepiece). Preferred when present.
        tokenizer_file: a folder's `tokenizer.json`: this class's file before 0.2, or a hub folder's (refused unless
            it encodes as SentencePiece does). The guard this class writes there now is skipped.
        codellama_tokenizer_file: the `codellama_tokenizer.json` this class writes (files.py says why
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
        kwargs.pop("auto_map", None)
        self._auto_map = dict(TOKENIZER_AUTO_MAP)  # saved in tokenizer_config.json (files.py)
        super().__init__(
            unk_token=unk_token, bos_token=bos_token, eos_token=eos_token,
            pad_token=pad_token if pad_token is not None else unk_token,  # never produced by byte-fallback text
            add_bos_token=bos_from_file if add_bos_token is None else add_bos_token,
            add_eos_token=eos_from_file if add_eos_token is None else add_eos_token,
            extra_special_tokens=extra + present, split_special_tokens=True, chat_format=self.chat_format,
            fill_marker=fill_marker, chat_template=CHAT_TEMPLATES.get(self.chat_format), **kwargs)
        # None, not True: a call that does not say (Transformers' __call__ passes this attribute) gets text as
        # text but a refusal for text that looks like a rendered chat (tokenization/chat.py says why).
        self.split_special_tokens = None
        self._space_byte_id = backend.token_to_id("<0x20>")
        self._smiley_prefix_len = len(self._sp_encode([SMILEY])[0])  # Meta's vocab: 2 ("▁", "☺")
        smiley_id = backend.token_to_id(SMILEY)
        self._smiley_ids = [smiley_id] if smiley_id is not None else [
            backend.token_to_id(f"<0x{b:02X}>") for b in SMILEY.encode("utf-8")]

    @classmethod
    def convert_to_native_format(cls, trust_remote_code=False, **kwargs):
        return kwargs  # __init__ builds the backend itself, from tokenizer.model or tokenizer.json

    def _add_tokens(self, new_tokens, special_tokens=False) -> int:
        if not special_tokens and any(not getattr(t, "special", False) for t in new_tokens):
            self._fast = None  # tokens matched in text need the full pipeline
        return super()._add_tokens(new_tokens, special_tokens=special_tokens)

    @property
    def control_token_ids(self) -> dict[str, int | None]:
        """prefix/suffix/middle/eot/step token ids by piece name (None where the vocab lacks the piece)."""
        return dict(self._control_ids)


def _bos_eos_of(backend) -> tuple[bool, bool]:
    """Whether the backend's post-processor adds BOS / EOS (a tokenizer.json keeps them there), else Meta's default."""
    if backend.post_processor is None:
        return True, False
    plain = backend.encode("a", add_special_tokens=False).ids
    full = backend.encode("a", add_special_tokens=True).ids
    start = full.index(plain[0]) if plain and plain[0] in full else 0
    return start > 0, len(full) - start > len(plain)
