"""Instruct chats on the tokenizer: Meta's prompt ids from `apply_chat_template`, the rendered string that encodes
back to them, and which chat format applies.

Render-then-tokenize (lm-eval, vLLM, scripts): `apply_chat_template(tokenize=False)` returns a RenderedChat (see
rendered.py), which `tok(text)`, `tok.encode(text)` and `tok.tokenize(text)` encode to exactly the ids of
`apply_chat_template(tokenize=True)`. The trade-off, chosen over making `<s>` in any text a control id: only strings
our renderer made (kept through `+` and slicing) become control ids, so typed text, including a message's, never
can; a plain str that starts like a rendered chat is refused with the fix rather than encoded as text in silence
(`split_special_tokens=True` encodes it as text, `split_special_tokens=False` takes its `<s>`, `</s>` and `<step>`
as control ids, as stock Transformers does).
"""

from __future__ import annotations

import logging
import os

from .chat_formats import CHAT_BUILDERS, Unit, check_messages
from .rendered import RenderedChat, looks_rendered, render, trusted_units
from ..configuration import CodeLlamaConfig, check_chat_format
from ..errors import UserInputError
from ..variants import INSTRUCT_VARIANTS, variant_in_name

logger = logging.getLogger(__name__)

class ChatMixin:
    """`apply_chat_template` built from chat_formats.py's builders, and the encoding of rendered chats. Uses
    EncodingMixin's `_sp_encode` and `_batch`, and the ids CodeLlamaTokenizer.__init__ finds (`_control_ids`)."""

    def apply_chat_template(self, conversation, tools=None, documents=None, chat_template=None,
                            add_generation_prompt: bool = False, continue_final_message: bool = False,
                            tokenize: bool = True, *, allow_special_tags: bool = False, padding=False,
                            truncation: bool = False, max_length=None, return_tensors=None, return_dict: bool = True,
                            return_assistant_tokens_mask: bool = False, tokenizer_kwargs=None, **kwargs):
        """Meta's Instruct prompt for `conversation` (a list of messages, or a list of such lists).

        Differs from Transformers: with tokenize=True the ids are built as Meta builds them (separate encodes
        joined by control ids), never by tokenizing a rendered string; with tokenize=False the string returned is a
        RenderedChat, which this tokenizer encodes back to the same ids. Messages holding `[INST]`, `[/INST]`,
        `<<SYS>>`, `<</SYS>>` or `<step>` raise, as Meta refuses them, unless allow_special_tags=True, which
        encodes them as plain text (text is never a control id). continue_final_message=True leaves the last
        (assistant) message open for the model to continue. A non-Instruct tokenizer raises.
        """
        if self.chat_format == "none":
            raise UserInputError(f"{self.name_or_path or 'this tokenizer'!r} has chat_format 'none': only Instruct "
                                 f"variants chat ({', '.join(INSTRUCT_VARIANTS)}); load one, or pass "
                                 "chat_format='inst' or 'step'")
        # vLLM (LLM.chat, /v1/chat/completions) always passes the folder's template explicitly: ours is Meta's
        # format, so it gets Meta's ids; any other template would be ignored in silence, so it is refused.
        foreign = chat_template if chat_template and not self._is_own_template(chat_template) else None
        unsupported = {"tools": tools, "documents": documents, "chat_template": foreign,
                       "return_assistant_tokens_mask": return_assistant_tokens_mask}
        if given := [k for k, v in unsupported.items() if v]:
            raise UserInputError(f"{', '.join(given)} not supported: Code Llama's chat formats are fixed (Meta's); "
                                 f"leave chat_template unset, or pass the tokenizer's own")
        batched = bool(conversation) and isinstance(conversation[0], (list, tuple))
        dialogs = [list(c) for c in conversation] if batched else [list(conversation)]
        build = CHAT_BUILDERS[self.chat_format]
        plans = []
        for dialog in dialogs:
            check_messages(dialog, allow_special_tags=allow_special_tags)
            plans.append(build(dialog, add_generation_prompt=add_generation_prompt,
                               continue_final_message=continue_final_message))
        if not tokenize:
            rendered = [render(plan, self._control_pieces()) for plan in plans]
            return rendered if batched else rendered[0]
        ids = self._plan_ids(plans)
        if truncation and max_length is not None:
            ids = [i[:max_length] if self.truncation_side == "right" else i[-max_length:] for i in ids]
        padding_strategy, _, max_length, _ = self._get_padding_truncation_strategies(padding=padding,
                                                                                    max_length=max_length)
        out = self._batch(ids, extra={}, batched=batched, return_tensors=return_tensors, return_attention_mask=None,
                          padding_strategy=padding_strategy, max_length=max_length, pad_to_multiple_of=None,
                          padding_side=self.padding_side)
        return out if return_dict else out["input_ids"]

    def _is_own_template(self, template) -> bool:
        """The tokenizer's own template, or the folder's chat_template.jinja (what vLLM reads and passes back)."""
        own = [self.chat_template]
        saved = os.path.join(str(self.name_or_path or ""), "chat_template.jinja")
        if self.name_or_path and os.path.isfile(saved):
            with open(saved, encoding="utf-8") as f:
                own.append(f.read())
        return isinstance(template, str) and template.strip() in [t.strip() for t in own if isinstance(t, str)]

    def _control_pieces(self) -> dict[str, str | None]:
        step = "<step>" if self._control_ids["step_token_id"] is not None else None
        return {"bos": self.bos_token, "eos": self.eos_token, "step": step}

    def _plan_ids(self, plans: list[list[Unit]]) -> list[list[int]]:
        """Ids of prompt plans: every call in one batched backend call, control ids by name."""
        texts = [u for plan in plans for u in plan if isinstance(u, str)]
        encoded = iter(self._sp_encode(texts) if texts else [])
        controls = {"bos": self.bos_token_id, "eos": self.eos_token_id, "step": self._control_ids["step_token_id"]}
        out = []
        for plan in plans:
            row: list[int] = []
            for unit in plan:
                if isinstance(unit, str):
                    row += next(encoded)
                elif controls[unit.name] is not None:
                    row.append(controls[unit.name])
                else:
                    raise UserInputError("this vocabulary has no '<step>' piece, so it cannot encode 70b-Instruct "
                                         "chats; load CodeLlama-70b-Instruct's tokenizer.model")
            out.append(row)
        return out

    def _chat_plans(self, texts: list[str], *, split_special_tokens: bool | None) -> dict[int, list[Unit]]:
        """Plans of the texts to encode as chats: RenderedChats, and with split_special_tokens=False any text
        holding a control piece. A plain str that looks rendered raises unless split_special_tokens says what it is."""
        plans = {}
        for i, text in enumerate(texts):
            if isinstance(text, RenderedChat) and split_special_tokens is not True:
                plans[i] = text.units()
            elif split_special_tokens is False:
                units = trusted_units(text, self._control_pieces())
                if any(not isinstance(u, str) for u in units):
                    plans[i] = units
            elif split_special_tokens is None and looks_rendered(text):
                raise UserInputError(
                    f"text {i} ({text[:40]!r}...) starts like a rendered chat but is a plain str, whose '<s>', "
                    "'</s>' and '<step>' would be text: not the string apply_chat_template(tokenize=False) returned "
                    "(that one keeps its token plan through + and slicing; strip(), f-strings, str() and dataset "
                    "round trips drop it); pass the messages to apply_chat_template(tokenize=True), or "
                    "split_special_tokens=False to take those pieces as control ids, or split_special_tokens=True "
                    "to encode the text as text")
        return plans


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
    return check_chat_format(chat_format or "none")

