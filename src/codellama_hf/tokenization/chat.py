"""Instruct chats on the tokenizer: Meta's prompt ids from `apply_chat_template`, and which chat format applies."""

from __future__ import annotations

import logging
import os

from ..chat import CHAT_BUILDERS, check_messages
from ..configuration import CodeLlamaConfig
from ..errors import UserInputError
from ..variants import CHAT_FORMATS, PRESETS, variant_in_name

logger = logging.getLogger(__name__)

INSTRUCT_VARIANTS = tuple(v.name for v in PRESETS if v.chat_format != "none")


class ChatMixin:
    """`apply_chat_template` built from ../chat.py's builders. Uses EncodingMixin's `_sp_encode` and `_batch`."""

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
            render = super().apply_chat_template  # Transformers renders the Jinja template (CHAT_TEMPLATES)
            rendered = [render(d, add_generation_prompt=add_generation_prompt, tokenize=False, **kwargs)
                        for d in dialogs]
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

