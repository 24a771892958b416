"""Text-level prompt helpers that do not need the tokenizer: the literal infilling template and llama.cpp's extra
context chunks. The ids themselves always come from CodeLlamaTokenizer (infilling_prompt_ids, encode, chat)."""

from __future__ import annotations

from .protocol import ServingError

MARKERS = ("<PRE>", "<SUF>", "<MID>")
# llama.cpp's separator before each `input_extra` chunk for models without repo-level tokens (its server writes it
# as bytes, "\n\n--- snippet ---\n\n", in format_infill).
SNIPPET_SEPARATOR = "\n\n--- snippet ---\n\n"
TEMPLATE_HELP = "'<PRE> {prefix} <SUF>{suffix} <MID>' (or suffix first: '<PRE> <SUF>{suffix} <MID> {prefix}')"


def _drop(text: str, *, lead: bool = False, trail: bool = False) -> str:
    if lead and text.startswith(" "):
        text = text[1:]
    if trail and text.endswith(" "):
        text = text[:-1]
    return text


def split_literal_template(prompt: str) -> tuple[str, str, bool] | None:
    """(prefix, suffix, suffix_first) of a prompt written as Code Llama's infilling template, or None for a prompt
    holding none of its markers.

    The template is how Meta's ids decode: `<PRE>`, then the prefix's own encode (whose dummy prefix decodes as one
    space), then ` <SUF>` and ` <MID>` (the pieces are `▁<SUF>` and `▁<MID>`, a space in front). So exactly those
    spaces are dropped and everything else is the client's text; Continue, Tabby and llm-ls write it this way.
    """
    found = {m: prompt.count(m) for m in MARKERS}
    if not any(found.values()):
        return None
    if any(n != 1 for n in found.values()):
        counts = ", ".join(f"{m} x{n}" for m, n in found.items())
        raise ServingError(f"prompt holds the infilling markers {counts}; write each exactly once, as "
                           f"{TEMPLATE_HELP}", param="prompt")
    pre, suf, mid = (prompt.index(m) for m in MARKERS)
    if not pre < suf < mid or prompt[:pre].strip():
        raise ServingError(f"prompt has the infilling markers out of place; write {TEMPLATE_HELP}", param="prompt")
    between = prompt[pre + 5:suf]
    middle = prompt[suf + 5:mid]
    after = prompt[mid + 5:]
    if between.strip() == "" and after:  # suffix first (SPM): <PRE> <SUF>{suffix} <MID> {prefix}
        return _drop(after, lead=True), _drop(middle, trail=True), True
    if after:  # Meta's prompt ends at <MID>: the model writes what comes next
        raise ServingError(f"prompt has text after <MID> ({after[:20]!r}); write {TEMPLATE_HELP}", param="prompt")
    return _drop(between, lead=True, trail=True), _drop(middle, trail=True), False


def extra_context(chunks) -> str:
    """llama.cpp's `input_extra` ([{"filename", "text"}]) as text in front of the prefix."""
    if chunks is None:
        return ""
    if not isinstance(chunks, list):
        raise ServingError(f"input_extra must be an array of {{\"filename\": string, \"text\": string}} objects, got "
                           f"{type(chunks).__name__}", param="input_extra")
    parts = []
    for i, chunk in enumerate(chunks):
        if not isinstance(chunk, dict) or not isinstance(chunk.get("text"), str):
            raise ServingError(f"input_extra[{i}] needs a string \"text\"; send {{\"filename\": ..., \"text\": ...}}",
                               param="input_extra")
        if not isinstance(chunk.get("filename", ""), str):
            raise ServingError(f"input_extra[{i}].filename must be a string, got "
                               f"{type(chunk['filename']).__name__}", param="input_extra")
        parts.append(SNIPPET_SEPARATOR + chunk["text"])
    return "".join(parts)
