"""EagerEngine: one `model.generate` at a time on a worker thread, requests waiting in a queue.

It serves `--engine eager` and, beside continuous batching, the sampled requests that carry a seed: it samples
with a `torch.Generator` of the request's own, seeded, so the same seed gives the same text whatever else runs.
Sampling is done in a logits processor that leaves one candidate (the drawn token) for generate's greedy pick, so
neither the global RNG nor another request's draws are touched.
"""

from __future__ import annotations

import logging
import queue
import threading

import torch
from transformers import (GenerationConfig, LogitsProcessor, LogitsProcessorList, StoppingCriteria,
                          StoppingCriteriaList, TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper)
from transformers.generation.streamers import BaseStreamer

from ...fast_path import with_fast_path
from .base import Engine, Submission
from ..protocol import QueueFull

logger = logging.getLogger(__name__)


class SampleWithGenerator(LogitsProcessor):
    """Draws the next token from softmax(scores) with its own generator; returns scores where only it survives."""

    def __init__(self, seed: int | None):
        self.seed, self.generator = seed, None

    def __call__(self, input_ids, scores):
        if self.generator is None:
            self.generator = torch.Generator(device=scores.device)
            if self.seed is None:
                self.generator.seed()
            else:
                self.generator.manual_seed(self.seed)
        pick = torch.multinomial(torch.softmax(scores.float(), dim=-1), 1, generator=self.generator)
        out = torch.full_like(scores, -float("inf"))
        return out.scatter_(1, pick, 0.0)


class _Cancelled(StoppingCriteria):
    def __init__(self, sub: Submission):
        self.sub = sub

    def __call__(self, input_ids, scores, **kwargs):
        return torch.full((input_ids.shape[0],), self.sub.cancelled.is_set(), dtype=torch.bool,
                          device=input_ids.device)


class _ToSubmission(BaseStreamer):
    """generate's streamer: the prompt first (skipped), then one tensor per step."""

    def __init__(self, sub: Submission):
        self.sub, self.prompt_seen, self.ids = sub, False, []

    def put(self, value):
        if not self.prompt_seen:
            self.prompt_seen = True
            return
        new = [int(i) for i in value.reshape(-1).tolist()]
        self.ids += new
        self.sub.threadsafe(self.sub.push, new)

    def end(self):
        pass


class EagerEngine(Engine):
    name = "eager"

    def __init__(self, model, *, max_queue: int = 256, fast: bool | None = None, stall_timeout: float | None = None):
        super().__init__(max_queue=max_queue, stall_timeout=stall_timeout)
        self.model = model
        self.fast = fast  # the pipelines' fast path (codellama_hf.fast_path): None is on for CUDA models, as there
        self._jobs: queue.Queue = queue.Queue()
        self._worker: threading.Thread | None = None

    def start(self) -> None:
        if self._worker is None:
            self._worker = threading.Thread(target=self._work, name="codellama-eager", daemon=True)
            self._worker.start()

    def stop(self) -> None:
        if self._worker is not None:
            self._jobs.put(None)
            self._worker.join(timeout=30)
            self._worker = None

    def _start(self, sub: Submission) -> None:
        self._run_for(sub)

    def _run_for(self, sub: Submission) -> None:
        """Queue `sub` (admitted by this engine, or by a ContinuousEngine that hands it over)."""
        self.start()
        # Cancelled jobs wait here until the worker is free to drop them, while a cancel frees its admission slot at
        # once (so live jobs stay within max_queue): bound the backlog too, or clients that submit and disconnect
        # could grow it without end.
        if self._jobs.qsize() >= 2 * self.max_queue:
            raise QueueFull(self.max_queue)
        self._jobs.put(sub)

    def _work(self) -> None:
        while (sub := self._jobs.get()) is not None:
            if sub.cancelled.is_set():
                continue
            try:
                reason = self._generate(sub)
                sub.threadsafe(sub.finish, reason)
            except Exception as e:  # one request's failure is that request's alone
                logger.exception("generation failed")
                sub.threadsafe(sub.fail, f"{type(e).__name__}: {e}")

    @torch.inference_mode()
    def _generate(self, sub: Submission) -> str:
        request = sub.request
        ids = torch.tensor([list(request.prompt_ids)], device=self.model.device)
        processors = LogitsProcessorList()
        s = request.sampling
        if not s.greedy:
            processors.append(TemperatureLogitsWarper(s.temperature))
            if s.top_k > 0:
                processors.append(TopKLogitsWarper(s.top_k))
            if s.top_p < 1.0:
                processors.append(TopPLogitsWarper(s.top_p))
            processors.append(SampleWithGenerator(s.seed))
        stops = sorted(request.stop_ids)
        # No stop ids (llama.cpp's ignore_eos): generate would fall back to the model's own EOS ids, so those are
        # held off for the whole budget instead, as llama.cpp biases EOS away.
        config = GenerationConfig(max_new_tokens=request.max_new_tokens, do_sample=False,
                                  eos_token_id=stops or None, min_new_tokens=None if stops else request.max_new_tokens,
                                  pad_token_id=stops[0] if stops else self.model.config.eos_token_id)
        streamer = _ToSubmission(sub)
        kwargs = dict(attention_mask=torch.ones_like(ids), generation_config=config, logits_processor=processors,
                      stopping_criteria=StoppingCriteriaList([_Cancelled(sub)]), streamer=streamer)
        self.model.generate(ids, **with_fast_path(self.model, kwargs, fast=self.fast))
        return "stop" if streamer.ids and streamer.ids[-1] in request.stop_ids else "length"
