"""Code Llama Instruct chat prompts, token for token as Meta's `llama/generation.py` builds them.

Meta builds a prompt from separate SentencePiece calls (each with its own dummy prefix) joined by control ids. The
builders here return that plan as units: a `str` is one SentencePiece call (no BOS/EOS), a `Control` is one control
id (BOS, EOS or 70b's `<step>`). The tokenizer encodes the plan into ids, and rendered.py renders it into the
string that `apply_chat_template(tokenize=False)` returns. The Jinja templates below are for tools that render a
string and tokenize it with special tokens matched (vLLM, TGI, stock Transformers): they render the same string, in
which the space in front of a body stands for the dummy prefix of its separate call.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from ..errors import UserInputError

B_INST, E_INST = "[INST]", "[/INST]"
B_SYS, E_SYS = "<<SYS>>\n", "\n<</SYS>>\n\n"
# Meta answers a dialog holding these with "Error: special tags are not allowed as part of the prompt."
SPECIAL_TAGS = (B_INST, E_INST, "<<SYS>>", "<</SYS>>", "<step>")


@dataclass(frozen=True)
class Control:
    """One control id in a prompt plan, by name: "bos", "eos" or "step" (the tokenizer knows the ids)."""

    name: str


BOS, EOS, STEP = Control("bos"), Control("eos"), Control("step")
Unit = str | Control


def check_messages(messages: Sequence[dict], *, allow_special_tags: bool) -> None:
    """Refuse what Meta's chat code refuses, with a one-line message naming the message and the fix."""
    if not messages:
        raise UserInputError("the conversation is empty; pass at least one {'role': 'user', 'content': ...} message")
    for i, message in enumerate(messages):
        content = message.get("content") if isinstance(message, dict) else None
        if not isinstance(content, str):
            raise UserInputError(f"message {i} has content {content!r}; Code Llama chats take text content only")
        if allow_special_tags:
            continue
        for tag in SPECIAL_TAGS:
            if tag in content:
                raise UserInputError(f"message {i} contains {tag!r}, which Meta's chat code refuses (it would let "
                                     f"text pose as a turn marker); pass allow_special_tags=True to encode it as text")


def _roles_error(roles: list[str], expected: str) -> UserInputError:
    return UserInputError(f"roles {roles!r} are not supported; expected {expected}")


def _check_ending(messages: Sequence[dict], *, add_generation_prompt: bool, continue_final_message: bool) -> None:
    last = messages[-1]["role"]
    if add_generation_prompt and continue_final_message:
        raise UserInputError("add_generation_prompt=True and continue_final_message=True were both given; pass one: "
                             "a new assistant turn, or the last assistant message left open")
    if add_generation_prompt and last != "user":
        raise UserInputError(f"the last message is from {last!r}; add_generation_prompt=True needs the user's turn "
                             "last (pass add_generation_prompt=False to encode finished turns, or "
                             "continue_final_message=True to leave the assistant's message open)")
    if continue_final_message and last != "assistant":
        raise UserInputError(f"the last message is from {last!r}; continue_final_message=True needs an assistant "
                             "message last, whose text the model then continues")


def inst_prompt_units(messages: Sequence[dict], *, add_generation_prompt: bool = True,
                      continue_final_message: bool = False) -> list[Unit]:
    """7b/13b/34b-Instruct (`chat_completion`): `[INST] user [/INST] answer` turns, BOS/EOS around each.

    continue_final_message: the last (assistant) message is left open: no trailing space, no EOS, as a partial
    answer the model continues.
    """
    roles = [m["role"] for m in messages]
    expected = "an optional 'system' message, then 'user' and 'assistant' alternating, starting with 'user'"
    if messages[0]["role"] == "system":
        if len(messages) < 2:
            raise _roles_error(roles, expected)
        merged = B_SYS + messages[0]["content"] + E_SYS + messages[1]["content"]
        messages = [{"role": messages[1]["role"], "content": merged}, *messages[2:]]
    if any(m["role"] != ("user" if i % 2 == 0 else "assistant") for i, m in enumerate(messages)):
        raise _roles_error(roles, expected)
    _check_ending(messages, add_generation_prompt=add_generation_prompt,
                  continue_final_message=continue_final_message)
    finished = messages[:-1] if continue_final_message else messages
    units: list[Unit] = []
    for user, answer in zip(finished[::2], finished[1::2]):
        units += [BOS, f"{B_INST} {user['content'].strip()} {E_INST} {answer['content'].strip()} ", EOS]
    if continue_final_message:
        answer = messages[-1]["content"].strip()
        units += [BOS, f"{B_INST} {messages[-2]['content'].strip()} {E_INST}" + (f" {answer}" if answer else "")]
    elif messages[-1]["role"] == "user":
        units += [BOS, f"{B_INST} {messages[-1]['content'].strip()} {E_INST}"]
    return units


def step_prompt_units(messages: Sequence[dict], *, add_generation_prompt: bool = True,
                      continue_final_message: bool = False) -> list[Unit]:
    """70b-Instruct (`dialog_prompt_tokens`): ` Source: role` headers, bodies, `<step>` after each message.

    continue_final_message: the last (assistant) message gets its header and body but no `<step>`; give it
    destination="user" to match the header of Meta's generation prompt.
    """
    if messages[0]["role"] != "system":
        messages = [{"role": "system", "content": ""}, *messages]
    roles = [m["role"] for m in messages]
    if any(m["role"] != ("assistant" if i % 2 == 0 else "user") for i, m in enumerate(messages[1:], start=1)):
        raise _roles_error(roles, "an optional 'system' message, then 'user' and 'assistant' alternating")
    _check_ending(messages, add_generation_prompt=add_generation_prompt,
                  continue_final_message=continue_final_message)
    units: list[Unit] = [BOS]
    for i, message in enumerate(messages):
        header = f"Source: {message['role'].strip()}"
        if message.get("destination") is not None:
            header += f"\nDestination: {message['destination'].strip()}"
        units.append(" " + header)
        if continue_final_message and i == len(messages) - 1:
            units.append("\n\n " + message["content"].strip())
            return units
        if message["content"]:  # Meta tests the raw content, then strips it
            units.append("\n\n " + message["content"].strip())
        units.append(STEP)
    if add_generation_prompt:
        units += [" Source: assistant\nDestination: user", "\n\n "]
    return units


CHAT_BUILDERS = {"inst": inst_prompt_units, "step": step_prompt_units}

# Rendered strings that tokenize to the builders' ids when `<s>`, `</s>` and `<step>` are matched as special tokens
# and every stretch of text between them gets the dummy prefix (as `tokenizers` does).
_INST_TEMPLATE = (
    "{%- if messages[0]['role'] == 'system' -%}"
    "{%- set merged = [{'role': messages[1]['role'], 'content': '<<SYS>>\\n' + messages[0]['content'] + "
    "'\\n<</SYS>>\\n\\n' + messages[1]['content']}] + messages[2:] -%}"
    "{%- else -%}{%- set merged = messages -%}{%- endif -%}"
    "{%- for message in merged -%}"
    "{%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) -%}"
    "{{ raise_exception('roles must alternate user/assistant after an optional system message') }}"
    "{%- endif -%}"
    "{%- if message['role'] == 'user' -%}{{ bos_token + '[INST] ' + message['content'] | trim + ' [/INST]' }}"
    "{%- else -%}{{ ' ' + message['content'] | trim + ' ' + eos_token }}{%- endif -%}"
    "{%- endfor -%}"
)
_STEP_TEMPLATE = (
    "{%- if messages[0]['role'] != 'system' -%}"
    "{%- set messages = [{'role': 'system', 'content': ''}] + messages -%}{%- endif -%}"
    "{{ bos_token }}"
    "{%- for message in messages -%}"
    "{{ ' Source: ' + message['role'] | trim }}"
    "{%- if message['destination'] is defined and message['destination'] is not none -%}"
    "{{ '\\nDestination: ' + message['destination'] | trim }}{%- endif -%}"
    "{%- if message['content'] -%}{{ ' \\n\\n ' + message['content'] | trim }}{%- endif -%}"
    "{{ '<step>' }}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ ' Source: assistant\\nDestination: user \\n\\n ' }}{%- endif -%}"
)
CHAT_TEMPLATES = {"inst": _INST_TEMPLATE, "step": _STEP_TEMPLATE}
