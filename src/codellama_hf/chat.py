"""Code Llama Instruct chat prompts, token for token as Meta's `llama/generation.py` builds them.

Meta builds a prompt from separate SentencePiece calls (each with its own dummy prefix) joined by control ids, so
the builders here take an `encode(text) -> ids` callable (one SentencePiece call, no BOS/EOS) and do the same.
The Jinja templates are for tools that render a string and tokenize it with special tokens matched (vLLM, TGI,
stock Transformers): the space in front of each body stands for the dummy prefix that Meta's separate call adds.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from .errors import UserInputError

B_INST, E_INST = "[INST]", "[/INST]"
B_SYS, E_SYS = "<<SYS>>\n", "\n<</SYS>>\n\n"
# Meta answers a dialog holding these with "Error: special tags are not allowed as part of the prompt."
SPECIAL_TAGS = (B_INST, E_INST, "<<SYS>>", "<</SYS>>", "<step>")

Encode = Callable[[str], list[int]]


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


def inst_prompt_ids(messages: Sequence[dict], *, encode: Encode, bos_id: int, eos_id: int,
                    add_generation_prompt: bool = True, **_) -> list[int]:
    """7b/13b/34b-Instruct (`chat_completion`): `[INST] user [/INST] answer` turns, BOS/EOS around each."""
    roles = [m["role"] for m in messages]
    expected = "an optional 'system' message, then 'user' and 'assistant' alternating, starting with 'user'"
    if messages[0]["role"] == "system":
        if len(messages) < 2:
            raise _roles_error(roles, expected)
        merged = B_SYS + messages[0]["content"] + E_SYS + messages[1]["content"]
        messages = [{"role": messages[1]["role"], "content": merged}, *messages[2:]]
    if any(m["role"] != ("user" if i % 2 == 0 else "assistant") for i, m in enumerate(messages)):
        raise _roles_error(roles, expected)
    if add_generation_prompt and messages[-1]["role"] != "user":
        raise UserInputError(f"the last message is from {messages[-1]['role']!r}; add_generation_prompt=True needs "
                             "the user's turn last (pass add_generation_prompt=False to encode finished turns)")
    ids: list[int] = []
    for user, answer in zip(messages[::2], messages[1::2]):
        turn = f"{B_INST} {user['content'].strip()} {E_INST} {answer['content'].strip()} "
        ids += [bos_id, *encode(turn), eos_id]
    if messages[-1]["role"] == "user":
        ids += [bos_id, *encode(f"{B_INST} {messages[-1]['content'].strip()} {E_INST}")]
    return ids


def step_prompt_ids(messages: Sequence[dict], *, encode: Encode, bos_id: int, step_id: int | None,
                    add_generation_prompt: bool = True, **_) -> list[int]:
    """70b-Instruct (`dialog_prompt_tokens`): ` Source: role` headers, bodies, `<step>` after each message."""
    if step_id is None:
        raise UserInputError("this vocabulary has no '<step>' piece, so it cannot encode 70b-Instruct chats; "
                             "load CodeLlama-70b-Instruct's tokenizer.model")
    if messages[0]["role"] != "system":
        messages = [{"role": "system", "content": ""}, *messages]
    roles = [m["role"] for m in messages]
    if any(m["role"] != ("assistant" if i % 2 == 0 else "user") for i, m in enumerate(messages[1:], start=1)):
        raise _roles_error(roles, "an optional 'system' message, then 'user' and 'assistant' alternating")
    if add_generation_prompt and messages[-1]["role"] != "user":
        raise UserInputError(f"the last message is from {messages[-1]['role']!r}; add_generation_prompt=True needs "
                             "the user's turn last")
    ids = [bos_id]
    for message in messages:
        header = f"Source: {message['role'].strip()}"
        if message.get("destination") is not None:
            header += f"\nDestination: {message['destination'].strip()}"
        ids += encode(" " + header)
        if message["content"]:  # Meta tests the raw content, then strips it
            ids += encode("\n\n " + message["content"].strip())
        ids.append(step_id)
    if add_generation_prompt:
        ids += encode(" Source: assistant\nDestination: user") + encode("\n\n ")
    return ids


CHAT_BUILDERS = {"inst": inst_prompt_ids, "step": step_prompt_ids}

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
