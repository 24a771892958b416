"""The server's core, below HTTP: Meta's prompt ids for each kind of request, the shared GenerationRequest, and runs
that turn an engine's ids into text events. Every API module is a thin translation onto this.

Code Llama facts (the variant's name, whether it was trained for infilling, its chat format, its context, its stop ids)
come from `capabilities()`, as the pipelines read them; the prompt ids come only from CodeLlamaTokenizer.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import time
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from ..configuration import capabilities
from ..errors import UserInputError
from ..tokenization.rendered import looks_rendered
from ..variants import INFILLING_VARIANTS, INSTRUCT_VARIANTS
from .engines.base import Engine, Submission
from .prompts import extra_context, split_literal_template
from .protocol import DECODES, Delta, Done, GenerationRequest, Sampling, ServingError
from .detokenize import TextAssembler


MIN_TEMPERATURE = 1e-3  # below it, float32 logits / temperature overflow to inf, or all but one token get p=0


class Service:
    """A loaded model, its tokenizer and an engine, fixed at start: no request names a path or another model."""

    def __init__(self, model, tokenizer, engine: Engine, *, folder=None, model_id: str | None = None, config=None):
        """`model`: the Transformers model, or None where the engine loaded the folder itself (vLLM): then
        `config` (the folder's) gives the facts."""
        self.model, self.tokenizer, self.engine = model, tokenizer, engine
        self.config = config if config is not None else model.config
        caps = capabilities(self.config, tokenizer)
        self.model_id = model_id or caps.variant or (Path(folder).name if folder else "codellama")
        self.infilling = caps.infilling == "trained"
        self._misfit = None if caps.tokenizer_fits else caps.infilling_refusal
        self.chat_format, self.context_tokens = caps.chat_format, caps.context
        self.stop_ids = frozenset(caps.stop_token_ids)
        # The engine stops at the stop ids and they are cut before decoding, so an infilled middle and a
        # continuation decode alike: Meta's decode_infilling keeps the space a leading `▁` stands for. An Instruct
        # answer decodes as Meta's chat_completion does (a plain decode, its first space dropped); what follows its
        # first ids continues it.
        special = set(tokenizer.all_special_ids)
        more = lambda ids: tokenizer.decode_infilling(ids, stop_at_eot=False)  # noqa: E731
        self._decoders = {"infill": (more, more), "continue": (more, more),
                          "chat": (lambda ids: tokenizer.decode(ids, skip_special_tokens=True),
                                   lambda ids: more([i for i in ids if i not in special]))}
        assert set(self._decoders) == set(DECODES)
        # Tokenizing a request costs time in proportion to its text (up to the 4 MiB body limit: seconds), so it runs
        # here, off the event loop, which then keeps answering /health and streaming to everyone else.
        self._pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="codellama-tokenize")

    async def off_loop(self, fn, /, *args, **kwargs):
        """fn(*args, **kwargs) on the tokenizing threads; for work that grows with a request's text."""
        return await asyncio.get_running_loop().run_in_executor(self._pool, functools.partial(fn, *args, **kwargs))

    def check_room(self, count: int = 1) -> None:
        """Refuse (429) before any work is spent when `count` more requests would pass --max-queue."""
        self.engine.check_room(count)

    # ----- prompt ids (Meta's) --------------------------------------------------------------------------------
    def require_infilling(self, param: str) -> None:
        if self._misfit:
            raise ServingError(self._misfit, kind="unsupported", param=param)
        if not self.infilling:
            raise ServingError(f"{self.model_id} was not trained for infilling, so it cannot fill a gap; the "
                               f"variants that infill: {', '.join(INFILLING_VARIANTS)}", kind="unsupported",
                               param=param)

    def infill_ids(self, prefix: str, suffix: str, *, suffix_first: bool = False,
                   max_prompt_tokens: int | None = None, param: str = "suffix") -> list[int]:
        """Meta's infilling prompt; with max_prompt_tokens, trimmed around the gap (only when the client asks)."""
        self.require_infilling(param)
        try:
            return self.tokenizer.infilling_prompt_ids(prefix, suffix, suffix_first=suffix_first,
                                                       max_length=max_prompt_tokens)
        except UserInputError as e:
            raise ServingError(str(e), param="max_prompt_tokens") from None

    def llamacpp_infill_ids(self, prefix: str, suffix: str, prompt: str, extra, *,
                            max_prompt_tokens: int | None = None) -> list[int]:
        """llama.cpp's /infill: extra chunks, then the prefix, then `prompt` (the text at the cursor) before the gap.

        llama.cpp tokenizes these pieces one by one and puts the chunks before BOS; here they are one prefix text,
        so the ids are Meta's infilling prompt for that prefix (BOS first, as every Code Llama prompt starts)."""
        self.require_infilling("input_prefix")
        return self.infill_ids(extra_context(extra) + prefix + prompt, suffix, max_prompt_tokens=max_prompt_tokens,
                               param="input_prefix")

    def plain_ids(self, text: str, *, param: str = "prompt") -> list[int]:
        """A plain prompt: BOS and SentencePiece's ids for the text (`encode_text`). Text never becomes a control id:
        a `<FILL_ME>` in it is text, and literal templates are parsed only by /completion (template_ids)."""
        if looks_rendered(text):  # its '<s>'/'</s>' would be text: the client meant a chat
            raise ServingError(f"{param} {text[:24]!r}... starts like a rendered Code Llama chat, whose '<s>' and "
                               f"'</s>' would be plain text here; send the messages to /v1/chat/completions",
                               param=param)
        try:
            return self.tokenizer.encode_text(text)
        except UserInputError as e:
            raise ServingError(f"{param}: {e}", param=param) from None

    def template_ids(self, prompt: str, *, max_prompt_tokens: int | None = None) -> tuple[list[int], str]:
        """(ids, decode) for llama.cpp's /completion, the one place where the literal `<PRE>`/`<SUF>`/`<MID>` of
        Continue's, Tabby's and Twinny's template stand for the control ids: parsed, then built by the tokenizer."""
        parts = split_literal_template(prompt)
        if parts is None:
            return self.plain_ids(prompt), "continue"
        prefix, suffix, suffix_first = parts
        return self.infill_ids(prefix, suffix, suffix_first=suffix_first, max_prompt_tokens=max_prompt_tokens,
                               param="prompt"), "infill"

    def chat_ids(self, messages: list[dict]) -> list[int]:
        """Meta's Instruct prompt ([INST] turns, or 70b-Instruct's Source:/<step> turns), ready for the answer."""
        if self.chat_format == "none":
            raise ServingError(f"{self.model_id} is not an Instruct variant, so it does not chat; the Instruct "
                               f"variants: {', '.join(INSTRUCT_VARIANTS)}", kind="unsupported", param="messages")
        try:
            return list(self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_dict=False))
        except (UserInputError, KeyError, TypeError) as e:
            raise ServingError(f"messages: {e}", param="messages") from None

    # ----- requests -------------------------------------------------------------------------------------------
    def request(self, prompt_ids: list[int], *, max_new_tokens: int | None, sampling: Sampling = Sampling(),
                stop=(), decode: str = "continue", ignore_eos: bool = False,
                max_predict_seconds: float | None = None, param: str = "max_tokens") -> GenerationRequest:
        """The shared request. A prompt that fills the context is refused before anything is generated; a budget
        past the context is cut to what fits (finish_reason "length"). None: until a stop or the context's end."""
        room = self.context_tokens - len(prompt_ids)
        if room <= 0:
            raise ServingError(f"the prompt is {len(prompt_ids)} tokens and {self.model_id}'s context is "
                               f"{self.context_tokens}; shorten it (for infilling, max_prompt_tokens trims it "
                               f"around the gap)", param="prompt")
        if max_new_tokens is not None and max_new_tokens < 0:
            raise ServingError(f"{param} must be >= 0, got {max_new_tokens}", param=param)
        budget = room if max_new_tokens is None else min(max_new_tokens, room)
        stops = (stop,) if isinstance(stop, str) else tuple(stop or ())
        return GenerationRequest(tuple(prompt_ids), budget, self._safe(sampling),
                                 frozenset() if ignore_eos else self.stop_ids, stops, decode, max_predict_seconds)

    def _safe(self, s: Sampling) -> Sampling:
        """The same sampling in values every engine can run. Continuous batching samples the whole batch in one
        kernel, so one request's top_k past int32 or a temperature that is 0 in float32 (NaN probabilities) would
        fail every request in it: top_k >= the vocabulary is off, a temperature under MIN_TEMPERATURE is greedy (what
        it samples anyway), and a seed is kept modulo 2**63 (torch takes no larger; the same seed stays the same)."""
        vocab = int(self.config.vocab_size)
        return Sampling(temperature=0.0 if s.temperature < MIN_TEMPERATURE else float(s.temperature),
                        top_p=float(s.top_p), top_k=0 if s.top_k >= vocab else int(s.top_k),
                        seed=None if s.seed is None else int(s.seed) % 2**63)

    def start(self, request: GenerationRequest) -> Run:
        """Submit now (so a full queue is refused before any byte of a response); iterate the run for events."""
        sub = self.engine.submit(request) if request.max_new_tokens > 0 else None
        return Run(self, request, sub)

    async def warm_up(self) -> None:
        """One short greedy request, so that the first client does not wait for the engine's first batch."""
        await self.start(self.request(self.plain_ids("def"), max_new_tokens=2)).result()

    def decoders(self, kind: str):
        """(decode from the start, decode ids that continue earlier ones) for a request's `decode`."""
        return self._decoders[kind]


def start_all(service, requests) -> list[Run]:
    """Submit every request, or none: a full queue part-way cancels those already submitted."""
    runs: list[Run] = []
    try:
        for request in requests:
            runs.append(service.start(request))
    except BaseException:
        for run in runs:
            run.cancel()
        raise
    return runs


class Run:
    """One request's events: Delta(text, ids) as text becomes final, then one Done."""

    def __init__(self, service: Service, request: GenerationRequest, sub: Submission | None):
        self.service, self.request, self.sub = service, request, sub
        self.started = time.perf_counter()

    def cancel(self) -> None:
        if self.sub is not None:
            self.sub.cancel()

    async def events(self) -> AsyncIterator[Delta | Done]:
        req = self.request
        first, more = self.service.decoders(req.decode)
        assembler = TextAssembler(first, req.stop, decode_more=more)
        ids: list[int] = []
        finish, stop_type, first = "length", "limit", None
        try:
            if self.sub is not None:
                async with contextlib.aclosing(self.sub.new_ids()) as stream:
                    async for new in stream:
                        first = first or time.perf_counter()
                        ids += new
                        text = assembler.feed(self._body(ids))
                        yield Delta(text, new)
                        if assembler.stopped_by is not None:
                            finish, stop_type = "stop", "word"
                            break
                        if (req.max_predict_seconds is not None and "\n" in assembler.emitted
                                and time.perf_counter() - first > req.max_predict_seconds):
                            break  # llama.cpp's t_max_predict_ms: out of time once a line is done
                if assembler.stopped_by is None and self.sub.finish_reason == "stop":
                    finish, stop_type = "stop", "eos"
            tail = assembler.finish(self._body(ids))
            if assembler.stopped_by is not None:
                finish, stop_type = "stop", "word"
            if tail:
                yield Delta(tail, [])
            end = time.perf_counter()
            first = first or end
            yield Done(text=assembler.emitted, finish_reason=finish, stop_type=stop_type,
                       stopping_word=assembler.stopped_by or "", prompt_tokens=len(req.prompt_ids),
                       completion_tokens=len(ids), prompt_ms=(first - self.started) * 1000,
                       predicted_ms=(end - first) * 1000, ids=self._body(ids))
        finally:
            self.cancel()  # a stop string, a deadline or a client gone: free the engine's slot now

    def _body(self, ids: list[int]) -> list[int]:
        return ids[:-1] if ids and ids[-1] in self.request.stop_ids else ids

    async def result(self) -> Done:
        async with contextlib.aclosing(self.events()) as events:
            async for event in events:
                if isinstance(event, Done):
                    return event
        raise ServingError("generation ended without a result", kind="internal")
