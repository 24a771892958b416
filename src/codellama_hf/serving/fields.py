"""Field types the API modules' request models share.

`Text` is a string the tokenizer can take: JSON may carry a lone surrogate ("\\ud800"), which is no Unicode text, so
SentencePiece (and the UTF-8 encoder of every response) cannot take it. Refused where the body is read, it becomes a
validation error that names the field, in the API's shape, instead of a 500 deep in the tokenizer."""

from __future__ import annotations

from typing import Annotated

from pydantic import AfterValidator


def encodable(text: str) -> str:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        raise ValueError(f"holds a lone surrogate {ascii(text[e.start])} at character {e.start}, which is no "
                         f"Unicode text; send valid UTF-8 (pair the surrogate or drop it)") from None
    return text


Text = Annotated[str, AfterValidator(encodable)]
