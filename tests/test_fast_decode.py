"""The fast path (codellama_hf.fast_path): the tokens of eager greedy decoding, from a static cache and a
decode loop that reads its stop flag late; buckets that bound the compiles; the opt-out; the quantized fallback.

On CPU the fast path runs uncompiled (as it does there unless a compile_config is passed); the compile-count tests
pass a counting dynamo backend, whose recompiles are dynamo's and so the same as under inductor on CUDA. The compiled
CUDA path itself is tested by the `gpu`-marked tests at the end.
"""

from __future__ import annotations

import logging
import threading

import pytest
import torch
from transformers import (AutoModelForCausalLM, CompileConfig, GenerationMixin, LogitsProcessor,
                          LogitsProcessorList, TextIteratorStreamer, pipeline)
from transformers.generation.streamers import BaseStreamer

from codellama_hf import CodeLlamaForCausalLM, _compat
from codellama_hf.errors import UserInputError
from codellama_hf.fast_path import DecodePlan, cache_bucket, cache_pool, fast_sample
from codellama_hf.fast_path import warm_up, with_fast_path
from codellama_hf.pipelines import CodeLlamaTextGenerationPipeline
from tests.fixtures_tokenizer import MetaReference
from tests.test_pipelines import CODE, PREFIX, SUFFIX, Force

# The loop drives Transformers' own prefill and `cache=` forward (5.24 and later); on an older Transformers the fast
# path is off (tests/test_compat.py checks that) and there is nothing here to test.
pytestmark = pytest.mark.skipif(_compat.fast_path_missing() is not None,
                                reason=f"fast path off on this Transformers: {_compat.fast_path_missing()}")

HAS_CUDA = torch.cuda.is_available()
needs_cuda = pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA device; CI has none")
GAPS = [CODE, {"prefix": "def add(a, b):\n    ", "suffix": "\n"}, "x = <FILL_ME>", "for i in <FILL_ME>:\n    pass\n"]


class Recorder(BaseStreamer):
    """Every row of every `put`, in order, and whether `end` came."""

    def __init__(self):
        self.puts, self.ended = [], False

    def put(self, value):
        self.puts.append(value.tolist())

    def end(self):
        self.ended = True


class GenerateSpy:
    """Every generate call's keyword arguments and its output ids, on a pipeline's model."""

    def __init__(self, model, monkeypatch):
        self.calls, self.outputs, real = [], [], model.generate

        def generate(*args, **kwargs):
            self.calls.append(kwargs)
            out = real(*args, **kwargs)
            self.outputs.append(out.tolist())
            return out

        monkeypatch.setattr(model, "generate", generate)

    def fast(self) -> list[bool]:
        return [kw.get("custom_generate") is fast_sample for kw in self.calls]


@pytest.fixture(scope="module")
def folder(converted_checkpoint):
    return converted_checkpoint("CodeLlama-7b")


@pytest.fixture(scope="module")
def fill(folder):
    return pipeline("code-infilling", model=str(folder))


@pytest.fixture(scope="module")
def meta(folder):
    return MetaReference(folder / "tokenizer.model")


class EndAfter(LogitsProcessor):
    """Makes every row end with `stop_id` after `tokens` free ones, whatever the prompt length (new per call)."""

    def __init__(self, tokens: int, stop_id: int):
        self.tokens, self.stop_id, self.start = tokens, stop_id, None

    def __call__(self, input_ids, scores):
        self.start = input_ids.shape[1] if self.start is None else self.start
        if input_ids.shape[1] - self.start >= self.tokens:
            scores = torch.full_like(scores, -float("inf"))
            scores[:, self.stop_id] = 0.0
        return scores


def force_stop(meta, text: str, prefix=PREFIX, suffix=SUFFIX):
    """A processor that makes the model write `text` and then EOT."""
    prompt = len(meta.infilling_prompt(prefix, suffix))
    return LogitsProcessorList([Force(meta.encode_infilling(text) + [meta.eot_id], prompt)])


# ----- exactness ---------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("suffix_first", [False, True], ids=["psm", "spm"])
def test_infilling_on_the_fast_path_gives_eager_greedy_tokens(fill, meta, monkeypatch, suffix_first):
    spy = GenerateSpy(fill.model, monkeypatch)
    for new in (1, 9, 60):  # min_new_tokens keeps a random model from stopping at once
        eager = fill(CODE, suffix_first=suffix_first, max_new_tokens=new, min_new_tokens=new, fast=False)
        assert fill(CODE, suffix_first=suffix_first, max_new_tokens=new, min_new_tokens=new, fast=True) == eager
        assert spy.outputs[-1] == spy.outputs[-2] and len(spy.outputs[-1][0]) - len(spy.calls[-1]["input_ids"][0]) \
            == new  # the ids themselves, not only their text
    stop = force_stop(meta, " return s") if not suffix_first else None
    if stop is not None:  # a stop mid-way: nothing after EOT, the ids trimmed where the stock loop trims them
        assert fill(CODE, max_new_tokens=40, logits_processor=stop, fast=True)["infill"] == " return s"
        assert spy.outputs[-1][0][-1] == meta.eot_id
    assert spy.fast() == [False, True] * 3 + ([True] if stop is not None else [])


def test_batches_on_the_fast_path_give_the_one_at_a_time_eager_tokens(fill, monkeypatch):
    one_by_one = [fill(x, max_new_tokens=12, min_new_tokens=12, fast=False) for x in GAPS]
    spy = GenerateSpy(fill.model, monkeypatch)
    assert fill(GAPS, max_new_tokens=12, min_new_tokens=12, batch_size=3, fast=True) == one_by_one
    assert spy.fast() == [True, True] and spy.calls[0]["attention_mask"].min() == 0  # left padding in the batch
    assert fill(GAPS, max_new_tokens=25, batch_size=4, fast=True) == fill(GAPS, max_new_tokens=25, batch_size=4,
                                                                           fast=False)  # rows stop at their EOT/EOS
    assert spy.outputs[-2] == spy.outputs[-1]


@pytest.mark.parametrize("variant", ["CodeLlama-7b", "CodeLlama-7b-Instruct"])
def test_completion_and_chat_on_the_fast_path_give_eager_greedy_tokens(converted_checkpoint, monkeypatch, variant):
    pipe = pipeline("text-generation", model=str(converted_checkpoint(variant)))
    assert type(pipe) is CodeLlamaTextGenerationPipeline
    spy = GenerateSpy(pipe.model, monkeypatch)
    prompt = ("def fibonacci(n):" if variant == "CodeLlama-7b" else
              [{"role": "system", "content": "Answer in Python."}, {"role": "user", "content": "Sort a list."}])
    for kwargs in ({"max_new_tokens": 20, "min_new_tokens": 20}, {"max_new_tokens": 60}):
        eager = pipe(prompt, do_sample=False, fast=False, **kwargs)
        assert pipe(prompt, do_sample=False, fast=True, **kwargs) == eager
    batch = ["def f(x):", "import os\n\nclass Walker:", "x ="]
    assert pipe(batch, do_sample=False, max_new_tokens=10, batch_size=3, fast=True) == \
        pipe(batch, do_sample=False, max_new_tokens=10, batch_size=3, fast=False)
    assert spy.fast() == [False, True, False, True, True, False]


class ForceRows(Force):
    """Force, but a list of ids per row."""

    def __call__(self, input_ids, scores):
        step = input_ids.shape[1] - self.prompt_length
        for row, ids in enumerate(self.ids):
            if step < len(ids):
                scores[row] = -float("inf")
                scores[row, ids[step]] = 0.0
        return scores


@pytest.mark.parametrize("lag", [0, 1, 3])
def test_a_late_stop_check_returns_and_streams_the_stock_tokens(fill, meta, lag):
    """lag 1 is what CUDA runs; the steps past the stop must not come back or reach the streamer."""
    model = fill.model
    rows = [meta.infilling_prompt(PREFIX, SUFFIX), meta.infilling_prompt(" x", " y\n")]
    width = max(map(len, rows))
    ids = torch.tensor([[0] * (width - len(r)) + r for r in rows])
    mask = (torch.arange(width) >= torch.tensor([[width - len(r)] for r in rows])).long()
    stops = ForceRows([[7, 8, 9, meta.eot_id], [10, meta.eot_id]], width)  # row 1 pads after its EOT
    runs = ForceRows([list(range(20, 31)), list(range(40, 51))], width)
    for name, forced in {"max length": runs, "eot": stops}.items():
        kwargs = dict(input_ids=ids, attention_mask=mask, max_new_tokens=11, do_sample=False, pad_token_id=0,
                      eos_token_id=[meta.eot_id], logits_processor=LogitsProcessorList([forced]))
        stock, fast = Recorder(), Recorder()
        want = model.generate(**kwargs, streamer=stock)
        got = model.generate(**kwargs, custom_generate=fast_sample, codellama_plan=DecodePlan(forward=None, lag=lag),
                             codellama_streamer=fast)
        assert got.tolist() == want.tolist(), name
        assert want.shape[1] == width + (4 if forced is stops else 11), name
        assert fast.puts == stock.puts and fast.ended and stock.ended, name


def test_streaming_on_the_fast_path_joins_to_the_infill(fill, meta):
    middle = " if not s:\n        return s"
    streamer = TextIteratorStreamer(fill.tokenizer)
    result = {}
    force = force_stop(meta, middle)
    worker = threading.Thread(target=lambda: result.update(fill(CODE, streamer=streamer, logits_processor=force,
                                                                fast=True)))
    worker.start()
    pieces = list(streamer)
    worker.join(timeout=60)
    assert len(pieces) > 1 and "".join(pieces) == middle == result["infill"]


def test_speculative_options_through_the_infilling_pipeline_give_plain_greedy(folder, converted_checkpoint):
    assistant = AutoModelForCausalLM.from_pretrained(converted_checkpoint("CodeLlama-7b", n_layers=1, seed=1))
    code = "def mean(xs):\n    total = 0\n    for x in xs:\n        total += x\n    <FILL_ME>\n    return total\n"
    plain = pipeline("code-infilling", model=str(folder))
    want = plain(code, max_new_tokens=24, min_new_tokens=24)
    assert plain(code, max_new_tokens=24, min_new_tokens=24, prompt_lookup_num_tokens=3) == want
    assert plain(code, max_new_tokens=24, min_new_tokens=24, assistant_model=assistant, fast=True) == want
    assisted = pipeline("code-infilling", model=str(folder), assistant_model=assistant)
    assert assisted(code, max_new_tokens=24, min_new_tokens=24) == want


# ----- switches and routing ----------------------------------------------------------------------------------------

def test_the_fast_path_is_default_on_cuda_only_and_fast_false_opts_out(folder, monkeypatch):
    model = CodeLlamaForCausalLM.from_pretrained(folder)
    call = {"input_ids": torch.tensor([[1, 5, 6]]), "max_new_tokens": 4}
    assert with_fast_path(model, call, fast=None) is call  # CPU: eager unless asked
    assert with_fast_path(model, call, fast=True)["custom_generate"] is fast_sample
    monkeypatch.setattr(type(model), "device", property(lambda self: torch.device("cuda")))
    routed = with_fast_path(model, call, fast=None)
    assert routed["custom_generate"] is fast_sample and routed["codellama_plan"].lag == 1
    assert routed["codellama_plan"].forward is not None  # compiled on CUDA
    assert with_fast_path(model, call, fast=False) is call
    assert with_fast_path(model, call, fast=None, default=False) is call  # another model type in text-generation
    for stock in ({"num_beams": 2}, {"prompt_lookup_num_tokens": 3}, {"return_dict_in_generate": True},
                  {"cache_implementation": "static"}, {"do_sample": True, "num_beams": 3}, {"token_type_ids": 0}):
        assert "custom_generate" not in with_fast_path(model, {**call, **stock}, fast=True), stock
    with pytest.raises(UserInputError, match=r"fast='yes' is not a switch; pass fast=True, fast=False"):
        with_fast_path(model, call, fast="yes")


def test_pipelines_take_the_switch_at_construction_and_leave_stock_generate_alone(folder, monkeypatch):
    fast = pipeline("code-infilling", model=str(folder), fast=True)
    spy = GenerateSpy(fast.model, monkeypatch)
    fast(CODE, max_new_tokens=3)
    fast(CODE, max_new_tokens=3, fast=False)
    assert spy.fast() == [True, False]
    assert CodeLlamaForCausalLM.generate is GenerationMixin.generate
    direct = CodeLlamaForCausalLM.from_pretrained(folder)
    direct.generate(torch.tensor([[1, 5, 6]]), max_new_tokens=3)
    assert "_codellama_cache_pool" not in direct.__dict__  # a direct generate never touches the fast path
    from transformers import LlamaForCausalLM

    stock = pipeline("text-generation", model=LlamaForCausalLM.from_pretrained(folder), tokenizer=fast.tokenizer)
    assert stock._fast_default() is False


def test_cache_lengths_come_in_power_of_two_buckets(fill, meta):
    assert [cache_bucket(n) for n in (1, 255, 256, 257, 600, 1564, 2048, 2049, 16384)] == \
        [256, 256, 256, 512, 1024, 2048, 2048, 4096, 16384]
    model = fill.model
    cache_pool(model).free.clear()
    for new in (3, 40, 100, 150, 300, 460):
        fill(CODE, max_new_tokens=new, logits_processor=LogitsProcessorList([EndAfter(2, meta.eot_id)]), fast=True)
    prompt = len(fill.tokenizer.infilling_prompt_ids(PREFIX, SUFFIX))
    buckets = sorted({(1, cache_bucket(prompt + n)) for n in (3, 40, 100, 150, 300, 460)})
    assert sorted(cache_pool(model).keys()) == buckets == [(1, 256), (1, 512)]
    past = {"max_new_tokens": 17000, "min_new_tokens": 4}  # past the trained context: the stock loop, no cache kept
    assert fill(CODE, **past, fast=True, logits_processor=LogitsProcessorList([EndAfter(4, meta.eot_id)])) == \
        fill(CODE, **past, fast=False, logits_processor=LogitsProcessorList([EndAfter(4, meta.eot_id)]))
    assert sorted(cache_pool(model).keys()) == buckets


def test_warm_up_refuses_bad_shapes(fill):
    with pytest.raises(UserInputError, match=r"batch_sizes=\(0,\) must be a non-empty list of positive ints"):
        warm_up(fill.model, batch_sizes=(0,), fast=True)
    assert warm_up(fill.model, fast=False) == 0.0
    with pytest.raises(UserInputError, match=r"warmup='yes': pass True, or a dict of warm_up's keyword arguments"):
        fill._warm_up_if_asked("yes", True)


# ----- compiles ----------------------------------------------------------------------------------------------------

def counting_backend():
    """A dynamo backend that counts the graphs it is given and runs them as traced (no inductor on CPU), and its
    CompileConfig. A function, not an object: CompileConfig deep-copies its fields, and that keeps a function."""
    graphs = []

    def backend(graph, example_inputs):
        graphs.append(graph)
        return graph.forward

    # as DEFAULT_COMPILE_CONFIG but for the backend; mode is inductor's
    return graphs, CompileConfig(backend=backend, fullgraph=True, dynamic=True, mode=None)


VARIED = [  # (gaps, max_new_tokens): prompt lengths, buckets and batch sizes all change
    ([CODE], 5), (["x = <FILL_ME>"], 5), ([CODE], 300), ([{"prefix": "def f(a):\n" * 30, "suffix": "\n"}], 700),
    (GAPS[:2], 5), (GAPS, 200), (GAPS[1:], 40), (["y = <FILL_ME>"], 1000),
]


def run_varied(pipe, compile_config, meta) -> list:
    out = []
    for gaps, new in VARIED:
        stop = LogitsProcessorList([EndAfter(3, meta.eot_id)])  # keeps runs short; the bucket is max_new_tokens'
        out.append(pipe(gaps, max_new_tokens=new, batch_size=len(gaps), fast=True, compile_config=compile_config,
                        logits_processor=stop, eos_token_id=[meta.eot_id]))
    return out


def test_compiles_are_bounded_across_prompts_lengths_and_batches(folder, meta):
    torch._dynamo.reset()
    graphs, config = counting_backend()
    pipe = pipeline("code-infilling", model=str(folder))
    got = run_varied(pipe, config, meta)
    assert 1 <= len(graphs) <= 2, len(graphs)  # batch 1 at any cache length, and any batch at any length
    first = len(graphs)
    assert run_varied(pipe, config, meta) == got and len(graphs) == first
    assert got == run_varied_eager(pipe, meta)


def run_varied_eager(pipe, meta) -> list:
    out = []
    for gaps, new in VARIED:
        stop = LogitsProcessorList([EndAfter(3, meta.eot_id)])
        out.append(pipe(gaps, max_new_tokens=new, batch_size=len(gaps), fast=False, logits_processor=stop,
                        eos_token_id=[meta.eot_id]))
    return out


def test_warm_up_pays_every_compile_before_the_first_request(folder, meta):
    torch._dynamo.reset()
    graphs, config = counting_backend()
    pipe = pipeline("code-infilling", model=str(folder), fast=True, batch_size=4,
                    warmup={"compile_config": config, "max_lengths": (600,)})
    warmed = len(graphs)
    assert warmed >= 1
    run_varied(pipe, config, meta)
    assert len(graphs) == warmed


def test_a_failed_compile_decodes_eagerly_with_one_log_line(folder, caplog):
    def broken(graph, example_inputs):
        raise NotImplementedError("no such backend here")

    pipe = pipeline("code-infilling", model=str(folder))
    config = CompileConfig(backend=broken, fullgraph=True, mode=None)
    with caplog.at_level(logging.WARNING, logger="codellama_hf"):
        first = pipe(CODE, max_new_tokens=5, min_new_tokens=5, fast=True, compile_config=config)
        assert pipe(CODE, max_new_tokens=5, min_new_tokens=5, fast=True, compile_config=config) == first
    assert first == pipe(CODE, max_new_tokens=5, min_new_tokens=5, fast=False)
    lines = [r.getMessage() for r in caplog.records if "compiling the decode step failed" in r.getMessage()]
    assert len(lines) == 1 and "no such backend here" in lines[0]


# ----- quantized models --------------------------------------------------------------------------------------------

def test_a_4bit_model_falls_back_to_eager_with_one_log_line(folder, caplog):
    pytest.importorskip("bitsandbytes", reason="bitsandbytes is not installed (pip install '.[bitsandbytes]')")
    from transformers import BitsAndBytesConfig

    quant = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.float32)
    pipe = pipeline("code-infilling", model=str(folder), device_map="cpu", model_kwargs={"quantization_config": quant})
    with caplog.at_level(logging.WARNING, logger="codellama_hf"):
        first = pipe(CODE, max_new_tokens=6, fast=True)
        assert pipe(CODE, max_new_tokens=6, fast=True) == first == pipe(CODE, max_new_tokens=6, fast=False)
    lines = [r.getMessage() for r in caplog.records if "fast path off" in r.getMessage()]
    assert lines == ["fast path off for this model, decoding eagerly: its bitsandbytes 4-bit weights cannot be "
                     "compiled (Transformers marks Bnb4BitHfQuantizer not compileable)"]


# ----- CUDA: the compiled path -------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def cuda_fill(folder):
    """fp32 on CUDA, warmed up for batches up to 4: the compiles these tests pay, once."""
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    before = counters["stats"]["unique_graphs"]
    pipe = pipeline("code-infilling", model=str(folder), device="cuda", dtype=torch.float32, batch_size=4,
                    warmup={"max_lengths": (600,)})
    pipe.graphs_warmed = counters["stats"]["unique_graphs"]
    pipe.graphs_compiled_by_warm_up = pipe.graphs_warmed - before
    return pipe


@pytest.mark.gpu
@needs_cuda
def test_cuda_warm_up_compiles_everything_before_the_first_request(cuda_fill, meta):
    from torch._dynamo.utils import counters

    assert 1 <= cuda_fill.graphs_compiled_by_warm_up <= 2
    assert run_varied(cuda_fill, None, meta) == run_varied_eager(cuda_fill, meta)
    assert counters["stats"]["unique_graphs"] == cuda_fill.graphs_warmed


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize("suffix_first", [False, True], ids=["psm", "spm"])
def test_cuda_compiled_infilling_gives_eager_greedy_tokens(cuda_fill, monkeypatch, suffix_first):
    spy = GenerateSpy(cuda_fill.model, monkeypatch)
    for new in (1, 9, 60):
        eager = cuda_fill(CODE, suffix_first=suffix_first, max_new_tokens=new, min_new_tokens=new, fast=False)
        assert cuda_fill(CODE, suffix_first=suffix_first, max_new_tokens=new, min_new_tokens=new) == eager
    assert cuda_fill(GAPS, max_new_tokens=20, batch_size=3) == cuda_fill(GAPS, max_new_tokens=20, batch_size=3,
                                                                         fast=False)
    assert spy.fast() == [False, True] * 3 + [True, True, False, False]
    plans = [kw["codellama_plan"] for kw in spy.calls if "codellama_plan" in kw]
    assert all(p.forward is not None and p.lag == 1 for p in plans)  # compiled, stop read a step late


@pytest.mark.gpu
@needs_cuda
def test_cuda_streaming_on_the_compiled_path_joins_to_the_infill(cuda_fill, meta):
    middle = " if not s:\n        return s"
    streamer = TextIteratorStreamer(cuda_fill.tokenizer)
    result = {}
    force = force_stop(meta, middle)
    worker = threading.Thread(target=lambda: result.update(cuda_fill(CODE, streamer=streamer,
                                                                     logits_processor=force)))
    worker.start()
    pieces = list(streamer)
    worker.join(timeout=300)
    assert len(pieces) > 1 and "".join(pieces) == middle == result["infill"]


@pytest.mark.gpu
@needs_cuda
def test_cuda_4bit_model_falls_back_with_one_log_line(folder, caplog):
    pytest.importorskip("bitsandbytes")
    from transformers import BitsAndBytesConfig

    quant = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.bfloat16)
    pipe = pipeline("code-infilling", model=str(folder), device_map="cuda", model_kwargs={"quantization_config": quant})
    with caplog.at_level(logging.WARNING, logger="codellama_hf"):
        assert pipe(CODE, max_new_tokens=6) == pipe(CODE, max_new_tokens=6)
    assert sum("fast path off for this model" in r.getMessage() for r in caplog.records) == 1
