"""Infilling helpers below the tokenizer: which variants infill, trimming a prompt around its gap, and telling when
Transformers' text-generation pipeline is the caller."""

from __future__ import annotations

import logging
import sys

from .errors import UserInputError
from .variants import PRESETS

logger = logging.getLogger(__name__)

INFILLING_VARIANTS = tuple(v.name for v in PRESETS if v.infilling)


def trim_around_gap(before: list[int], after: list[int], *, room: int) -> tuple[list[int], list[int]]:
    """Keep at most `room` ids of code nearest the gap: the end of `before` and the start of `after`, which keeps at
    least a quarter of the room (as llama.cpp's server splits it), more when `before` needs less."""
    if room < 1:
        raise UserInputError(f"the prompt limit leaves room for {room} ids of code beside the infilling control "
                             f"ids; pass a larger limit")
    if len(before) + len(after) <= room:
        return before, after
    keep_after = min(len(after), max(room // 4, room - len(before)))
    keep_before = room - keep_after
    logger.warning("the infilling prompt is %d ids over the limit: dropped %d ids from the start of the prefix and "
                   "%d from the end of the suffix", len(before) + len(after) - room, len(before) - keep_before,
                   len(after) - keep_after)
    return before[len(before) - keep_before:], after[:keep_after]


def in_text_generation_pipeline() -> bool:
    """Whether Transformers' text-generation pipeline is encoding this prompt. It builds its answer as the prompt text
    plus the decoded new tokens and has no hook for infilling, so only its caller's frame tells."""
    module = sys.modules.get("transformers.pipelines.text_generation")
    if module is None:
        return False
    preprocess = module.TextGenerationPipeline.preprocess.__code__
    frame = sys._getframe(1)
    while frame is not None:
        if frame.f_code is preprocess:
            return True
        frame = frame.f_back
    return False
