"""The one request type every API shape translates to, the events a run yields, and the errors a request can meet.

Nothing here knows HTTP: the API modules map `ServingError.kind` to their own status codes and error bodies.
"""

from __future__ import annotations

from dataclasses import dataclass, field

# How generated ids become text: an infilled middle (Meta's decode_infilling), the continuation of a plain prompt
# (the same decode, which keeps the space a leading `▁` stands for), or an Instruct answer (Meta's chat_completion
# decodes it with a plain decode).
DECODES = ("infill", "continue", "chat")


@dataclass(frozen=True)
class Sampling:
    """temperature 0 is greedy; top_k 0 and top_p 1 are off; a seed makes sampling repeatable per request."""

    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0
    seed: int | None = None

    @property
    def greedy(self) -> bool:
        return self.temperature <= 0.0


GREEDY = Sampling()


@dataclass(frozen=True)
class GenerationRequest:
    prompt_ids: tuple[int, ...]  # Meta's exact ids, built by the tokenizer; never parsed from text here
    max_new_tokens: int
    sampling: Sampling = GREEDY
    stop_ids: frozenset[int] = frozenset()  # ids that end generation (EOS, EOT, 70b-Instruct's <step>)
    stop: tuple[str, ...] = ()  # stop strings, found in the decoded text by the server
    decode: str = "continue"
    max_predict_seconds: float | None = None  # llama.cpp's t_max_predict_ms: stop at a newline once this is spent


@dataclass
class Delta:
    """New text (possibly empty when only ids arrived) and the ids that produced it."""

    text: str
    ids: list[int] = field(default_factory=list)


@dataclass
class Done:
    text: str  # the whole generated text, without a stop string that ended it
    finish_reason: str  # "stop" (a stop id or stop string) | "length" (max_new_tokens or the context)
    stop_type: str  # llama.cpp's words: "eos" (a stop id) | "word" (a stop string) | "limit"
    stopping_word: str
    prompt_tokens: int
    completion_tokens: int
    prompt_ms: float  # until the first new token
    predicted_ms: float  # first new token to the end
    ids: list[int] = field(default_factory=list)  # generated ids, the stop id excluded


class ServingError(Exception):
    """A request the server cannot serve. kind: invalid | unsupported | overloaded | unavailable | internal | timeout.

    `param` names the request field at fault where there is one; the message names the value and the fix.
    """

    def __init__(self, message: str, *, kind: str = "invalid", param: str | None = None):
        super().__init__(message)
        self.message, self.kind, self.param = message, kind, param


class QueueFull(ServingError):
    def __init__(self, limit: int):
        super().__init__(f"the server is busy: {limit} requests are already queued or running (--max-queue); "
                         f"retry after a moment", kind="overloaded")
