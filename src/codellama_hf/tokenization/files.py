"""What a CodeLlamaTokenizer folder holds, and the files that stock Transformers reads instead.

A codellama_hf folder keeps the SentencePiece-exact `tokenizers` pipeline in `codellama_tokenizer.json` and puts a
guard in `tokenizer.json`. Why: in a process that never imported codellama_hf, `AutoTokenizer` resolves the
`CodeLlamaTokenizer` named in tokenizer_config.json to Transformers' own class (ids far from Meta's), and a missing
class falls back to a generic tokenizer without infilling. Both read `tokenizer.json` first, so the guard makes them
fail with the fix in the message instead of loading a wrong tokenizer in silence.
"""

from __future__ import annotations

import json
import os

from .. import remote_code
from .constants import CONTROL_PIECES, GUARD_FILE, OWN_FILE

GUARD_MESSAGE = ("codellama_hf: this tokenizer is codellama_hf.CodeLlamaTokenizer; run `import codellama_hf` before "
                 "AutoTokenizer.from_pretrained (stock Transformers' CodeLlamaTokenizer gives other ids), or convert "
                 "with `codellama-hf convert --format llama` for files stock Transformers reads")


class FilesMixin:
    """Saving a CodeLlamaTokenizer: its own pipeline file, the guard where stock Transformers looks first, and
    tokenizer_config.json's `auto_map` with its module (../remote_code.py), which `trust_remote_code=True` follows.
    Uses `_auto_map`, which CodeLlamaTokenizer.__init__ sets and Transformers writes to tokenizer_config.json."""

    def _save_pretrained(self, save_directory, file_names, legacy_format=None, filename_prefix=None):
        prefix = f"{filename_prefix}-" if filename_prefix else ""
        own = os.path.join(str(save_directory), prefix + OWN_FILE)
        self.backend_tokenizer.save(own)
        if prefix:
            return tuple(file_names) + (own,)
        extra = remote_code.write_files(save_directory, remote_code.TOKENIZER_FILES)
        return tuple(file_names) + (own, write_guard(save_directory), *extra)

    @classmethod
    def register_for_auto_class(cls, auto_class="AutoTokenizer"):
        """Differs: does nothing, so saving never copies this package's source into a folder (remote_code.py)."""


def write_guard(folder) -> str:
    path = os.path.join(folder, GUARD_FILE)
    with open(path, "w", encoding="utf-8") as f:
        # `tokenizers` rejects an unknown version before anything else and quotes it in its error.
        # Transformers reads "added_tokens" from it before any class is built.
        json.dump({"version": GUARD_MESSAGE, "added_tokens": []}, f)
    return path


def is_guard(path: str | None) -> bool:
    if not path or not os.path.isfile(path) or os.path.getsize(path) > 4096:
        return False
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f).get("version") == GUARD_MESSAGE
    except (ValueError, AttributeError):
        return False


def save_llama_format_tokenizer(tokenizer, out_dir, *, split_special_tokens: bool = False):
    """Write tokenizer files that stock Transformers (no codellama_hf) loads with `AutoTokenizer`.

    Stock loads them as its generic `TokenizersBackend`, which keeps this tokenizer's SentencePiece-exact
    normalizer, merges, word split and decoder. Special tokens are matched in text by default there
    (`split_special_tokens=False`), which chat templates need; docs/tokenizer.md ("Files for stock Transformers") says
    what a user of this format still inherits from stock.
    """
    os.makedirs(out_dir, exist_ok=True)
    tokenizer.backend_tokenizer.save(os.path.join(out_dir, GUARD_FILE))
    config = {
        "tokenizer_class": "TokenizersBackend",
        "bos_token": tokenizer.bos_token, "eos_token": tokenizer.eos_token, "unk_token": tokenizer.unk_token,
        "pad_token": tokenizer.pad_token, "padding_side": tokenizer.padding_side,
        "add_bos_token": tokenizer.add_bos_token, "add_eos_token": tokenizer.add_eos_token,
        "clean_up_tokenization_spaces": False, "split_special_tokens": split_special_tokens,
        "model_max_length": tokenizer.model_max_length, "chat_format": tokenizer.chat_format,
        "extra_special_tokens": [CONTROL_PIECES[k] for k, i in tokenizer.control_token_ids.items() if i is not None],
    }
    if tokenizer.chat_template:
        config["chat_template"] = tokenizer.chat_template
    with open(os.path.join(out_dir, "tokenizer_config.json"), "w", encoding="utf-8") as f:
        json.dump(config, f, indent=2, ensure_ascii=False)
        f.write("\n")
    return out_dir
