"""The engines and runs below HTTP: greedy text equal to eager `model.generate`, stop ids, seeds, cancelling,
admission and a failing forward pass."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import time

import pytest

from codellama_hf.serving import load_service
from codellama_hf.serving.engines.base import Engine
from codellama_hf.serving.protocol import QueueFull, Sampling, ServingError
from codellama_hf.serving.service import Service

from .conftest import KV_CACHE_TOKENS, poison, reference_greedy

PREFIX, SUFFIX = "def add(a, b):\n    ", "\n    return total\n"


@pytest.fixture(scope="module", params=["continuous", "eager"])
def service(request, instruct_folder):
    s = load_service(instruct_folder, engine=request.param, kv_cache_tokens=KV_CACHE_TOKENS)
    yield s
    s.engine.stop()


def run(coro):
    return asyncio.run(coro)


def generate(service, request):
    """Submit and wait, on a fresh event loop (submitting needs one)."""

    async def go():
        return await service.start(request).result()

    return asyncio.run(go())


def test_greedy_text_is_what_eager_generate_gives(service):
    ids = service.infill_ids(PREFIX, SUFFIX)
    done = generate(service, service.request(ids, max_new_tokens=12, decode="infill"))
    want = reference_greedy(service, ids, 12)
    assert done.ids == want and done.text == service.tokenizer.decode_infilling(want)
    assert done.prompt_tokens == len(ids) and done.completion_tokens in (len(want), len(want) + 1)


def test_seeded_sampling_repeats_and_seeds_differ(service):
    ids = service.plain_ids("def f(x):")

    def sample(seed):
        req = service.request(ids, max_new_tokens=8, sampling=Sampling(temperature=1.0, seed=seed))
        return generate(service, req).ids

    assert sample(5) == sample(5)
    assert len({tuple(sample(seed)) for seed in range(4)}) > 1
    if service.engine.name == "continuous":
        assert service.engine._eager_lane is not None  # seeded sampling left the batch for the eager lane


def test_cancelling_frees_the_slot_at_once(service):
    async def scenario():
        req = service.request(service.plain_ids("x"), max_new_tokens=5000, ignore_eos=True)
        run_ = service.start(req)
        async with contextlib.aclosing(run_.events()) as events:
            async for event in events:
                break  # one event, then the client is gone
        assert service.engine.in_flight == 0
        return run_

    run_ = run(scenario())
    assert run_.sub.cancelled.is_set()
    if service.engine.name == "continuous":  # the batch loop dropped it too
        deadline = time.monotonic() + 10
        while service.engine._manager.batch_processor.scheduler.active_requests:
            assert time.monotonic() < deadline, "the cancelled request still occupies the batch"
            time.sleep(0.01)


def test_admission_stops_at_max_queue(service, monkeypatch):
    monkeypatch.setattr(service.engine, "max_queue", 2)

    async def scenario():
        req = service.request(service.plain_ids("x"), max_new_tokens=5000, ignore_eos=True)
        first, second = service.start(req), service.start(req)
        with pytest.raises(QueueFull, match="2 requests are already queued or running"):
            service.start(req)
        first.cancel()
        third = service.start(req)
        second.cancel(), third.cancel()
        return service.engine.in_flight

    assert run(scenario()) == 0


def test_sampling_values_no_kernel_can_run_are_made_safe_and_still_mean_the_same(service):
    # Continuous batching samples the whole batch in one kernel: a top_k past int32 or a temperature that is 0 in
    # float32 (NaN probabilities) failed every request in the batch; a seed past 2**63 made torch raise.
    ids = service.infill_ids(PREFIX, SUFFIX)
    req = service.request(ids, max_new_tokens=8, decode="infill",
                          sampling=Sampling(temperature=1e-46, top_k=2**40, seed=2**70))
    assert req.sampling == Sampling(temperature=0.0, top_p=1.0, top_k=0, seed=2**70 % 2**63)
    assert generate(service, req).ids == reference_greedy(service, ids, 8)
    wide = service.request(ids, max_new_tokens=4, sampling=Sampling(temperature=0.7, top_k=2**31, seed=2**64 + 5))
    assert wide.sampling.top_k == 0 and len(generate(service, wide).ids) == 4
    assert service.request(ids, max_new_tokens=1, sampling=Sampling(temperature=0.7, top_k=40)).sampling.top_k == 40


def test_cancelled_requests_cannot_pile_up_behind_a_busy_eager_worker(service, monkeypatch):
    lane = service.engine if service.engine.name == "eager" else service.engine._lane()
    monkeypatch.setattr(lane, "max_queue", 2)

    async def scenario():
        busy = service.start(service.request(service.plain_ids("x"), max_new_tokens=3000, ignore_eos=True,
                                             sampling=Sampling(temperature=1.0, seed=1)))  # seeded: the eager lane
        refused = 0
        for _ in range(20):  # submit and disconnect, as a hostile client would
            try:
                service.start(service.request(service.plain_ids("y"), max_new_tokens=1,
                                              sampling=Sampling(temperature=1.0, seed=2))).cancel()
            except QueueFull:
                refused += 1
        backlog = lane._jobs.qsize()
        busy.cancel()
        return refused, backlog

    refused, backlog = run(scenario())
    assert refused > 0 and backlog <= 2 * 2  # live jobs within max_queue, cancelled ones within as many again


def test_a_failing_forward_fails_its_request_and_the_next_one_runs(service, monkeypatch):
    req = service.request(service.plain_ids("def poisoned_request():"), max_new_tokens=4)
    hits = poison(service.model, monkeypatch, list(req.prompt_ids))
    with pytest.raises(ServingError, match="generation failed: .*injected failure") as err:
        generate(service, req)
    assert err.value.kind == "internal" and hits
    assert generate(service, req).completion_tokens > 0  # the same request again: served
    assert service.engine.in_flight == 0


class Scripted(Engine):
    """An engine that generates the ids it is told to, one by one."""

    def __init__(self, ids):
        super().__init__(max_queue=8)
        self.ids = ids

    def _start(self, sub):
        loop = asyncio.get_running_loop()
        budget = sub.request.max_new_tokens
        out = self.ids[:budget]
        ends = [i for i, t in enumerate(out) if t in sub.request.stop_ids]
        out = out[:ends[0] + 1] if ends else out  # an engine stops at the first stop id
        for i in out:
            loop.call_soon(sub.push, [i])
        reason = "stop" if out and out[-1] in sub.request.stop_ids else "length"
        loop.call_soon(sub.finish, reason)


@pytest.fixture(scope="module")
def tok(instruct_folder):
    from codellama_hf import CodeLlamaTokenizer

    return CodeLlamaTokenizer.from_pretrained(instruct_folder)


def scripted_service(service, ids) -> Service:
    return Service(service.model, service.tokenizer, Scripted(ids))


def test_a_stop_id_ends_the_text_and_is_not_in_it(service, meta):
    body = meta.encode_infilling(" total = a + b")
    for stop in (meta.eot_id, meta.eos_id):
        s = scripted_service(service, body + [stop, *body])
        done = generate(s, s.request(s.infill_ids(PREFIX, SUFFIX), max_new_tokens=50, decode="infill"))
        assert (done.text, done.finish_reason, done.stop_type, done.ids) == (" total = a + b", "stop", "eos", body)


def test_the_token_budget_ends_with_length(service, meta):
    s = scripted_service(service, meta.encode_infilling(" total = a + b"))
    done = generate(s, s.request(s.plain_ids("x"), max_new_tokens=2))
    assert (done.finish_reason, done.stop_type, done.completion_tokens) == ("length", "limit", 2)


def test_a_stop_string_cuts_the_text_and_cancels(service, meta):
    s = scripted_service(service, meta.encode_infilling(" total = a + b\n    return total"))
    async def go():
        run_ = s.start(s.request(s.plain_ids("x"), max_new_tokens=50, stop=["\n"], decode="infill"))
        return run_, await run_.result()

    run_, done = run(go())
    assert (done.text, done.finish_reason, done.stop_type, done.stopping_word) == (" total = a + b", "stop", "word",
                                                                                   "\n")
    assert run_.sub.finish_reason in ("cancelled", "length")


def test_a_prompt_over_the_context_is_refused_before_generating(service):
    with pytest.raises(ServingError, match=r"the prompt is \d+ tokens and CodeLlama-7b-Instruct's context is") as e:
        service.request(list(range(3, 3 + service.context_tokens)), max_new_tokens=4)
    assert e.value.param == "prompt"
    assert service.request([1, 5], max_new_tokens=10**9).max_new_tokens == service.context_tokens - 2  # cut to fit


@pytest.mark.parametrize("kind", ["continue", "chat"])
def test_streamed_text_of_a_long_answer_is_its_whole_decode(service, kind):
    import random

    from codellama_hf.serving.detokenize import TextAssembler

    rng = random.Random(0)
    ids = [rng.randrange(3, 600) for _ in range(400)]  # byte-fallback ids included: characters split across ids
    first, more = service.decoders(kind)
    assembler = TextAssembler(first, decode_more=more)
    text = "".join(assembler.feed(ids[:n]) for n in range(1, len(ids) + 1)) + assembler.finish(ids)
    tok = service.tokenizer
    whole = tok.decode(ids, skip_special_tokens=True) if kind == "chat" else tok.decode_infilling(ids,
                                                                                                  stop_at_eot=False)
    assert text == whole


@pytest.mark.parametrize("sampling", [None, Sampling(temperature=1.0, seed=3)])
def test_the_eager_engine_on_the_fast_path_gives_the_same_tokens(instruct_folder, sampling, monkeypatch):
    """On CUDA the eager engine (and the seeded lane) decode on the pipelines' fast path by default; on CPU it runs
    when asked, uncompiled, and must give the stock loop's tokens, greedy and seeded alike."""
    from codellama_hf.fast_path import policy as fast_path
    from codellama_hf.serving.engines.eager import EagerEngine
    from codellama_hf.serving.loading import load_model

    from codellama_hf import _compat

    if (missing := _compat.fast_path_missing()) is not None:
        pytest.skip(f"fast path off on this Transformers: {missing}")
    calls, real = [], fast_path.fast_sample

    @functools.wraps(real)  # generate reads the custom loop's own keywords from its signature
    def spy(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(fast_path, "fast_sample", spy)
    model, tokenizer = load_model(instruct_folder)
    got = {}
    for fast in (False, True):
        engine = EagerEngine(model, fast=fast)
        engine.start()
        service = Service(model, tokenizer, engine, folder=instruct_folder)
        ids = service.infill_ids(PREFIX, SUFFIX)
        extra = {} if sampling is None else {"sampling": sampling}
        got[fast] = generate(service, service.request(ids, max_new_tokens=10, decode="infill", **extra)).ids
        engine.stop()
        assert len(calls) == int(fast)  # the fast loop ran only when asked
    assert got[True] == got[False] and got[True]
    if sampling is None:
        assert got[True] == reference_greedy(service, service.infill_ids(PREFIX, SUFFIX), 10)
