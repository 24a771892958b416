"""Decoding speed on a GPU: eager `generate`, `generate(cache_implementation="static")` and our two pipelines (fast path
and eager), for CodeLlama-7b's shape in bf16 with random weights built on the device. Prints the Markdown tables of
docs/benchmarks.md#gpu-decoding, each as soon as it is measured, so a run cut short still reports what it finished.

    python benchmarks/bench_gpu.py                    # CUDA: the 7B shape; under 6 minutes on one H200
    python benchmarks/bench_gpu.py --tiny             # CPU: a tiny model and small sizes; proves the script

Tokens/s are decode rates: (N - 1) new tokens over the time a call for N tokens takes beyond a call for 1, so the
prefill is left out; every call is forced to exactly N tokens (`min_new_tokens`). The share of the bandwidth limit is
tokens/s over (memory bandwidth / weight bytes). The tokenizer is Code Llama's real 32016-piece `tokenizer.model`.
"""

from __future__ import annotations

import argparse
import datetime
import logging
import random
import statistics
import sys
import sysconfig
import tempfile
import time
from pathlib import Path

import torch
import transformers
from torch.autograd import DeviceType
from transformers import pipeline

from codellama_hf import CodeLlamaConfig, CodeLlamaForCausalLM, CodeLlamaTokenizer
from codellama_hf.fast_path import generate as fast_generate
from codellama_hf.fast_path import warm_up

ROOT = Path(__file__).resolve().parents[1]
TOKENIZER_PLACES = [ROOT.parent / "shared" / "tokenizers" / "codellama" / "tokenizer.model",  # beside the checkout
                    ROOT / "shared" / "tokenizers" / "codellama" / "tokenizer.model"]  # inside it (device machine)
# Datasheet memory bandwidth by the exact name torch reports; another GPU's is measured by a device-to-device copy.
BANDWIDTH_TB_S = {"NVIDIA H200": 4.8, "NVIDIA H100 80GB HBM3": 3.35, "NVIDIA A100-SXM4-80GB": 2.039}
TINY = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, intermediate_size=128)
SIZES = {  # per mode: decode tokens, the editor infill, batches, the overhead comparison
    "full": dict(new=128, eager_new=64, editor_prompt=1500, editor_middle=64, editor_reps=20, eager_reps=3,
                 batches=(8, 32), batch_prompt=300, batch_middle=64, gaps=4, overhead_new=32, overhead_rounds=2,
                 profile_steps=32),
    "tiny": dict(new=64, eager_new=64, editor_prompt=300, editor_middle=16, editor_reps=5, eager_reps=2,
                 batches=(8, 32), batch_prompt=100, batch_middle=8, gaps=4, overhead_new=16, overhead_rounds=2,
                 profile_steps=8),
}


def log(message: str) -> None:
    print(f"[{time.perf_counter() - START:6.1f} s] {message}", file=sys.stderr, flush=True)


def sync(device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, device) -> float:
    return timed_result(fn, device)[0]


def timed_result(fn, device):
    """(seconds, result) of fn(), with the device idle before and after."""
    sync(device)
    t0 = time.perf_counter()
    result = fn()
    sync(device)
    return time.perf_counter() - t0, result


def code_gaps(count: int, *, chars: int, seed: int = 0) -> list[dict]:
    """Gaps in the standard library's sources: `chars` characters of prefix, a third as many of suffix."""
    rng = random.Random(seed)
    files = [f for f in sorted(Path(sysconfig.get_paths()["stdlib"]).glob("*.py")) if f.stat().st_size > 4 * chars]
    out = []
    while len(out) < count:
        src = rng.choice(files).read_text(encoding="utf-8", errors="replace")
        at = rng.randrange(chars, len(src) - chars // 3)
        out.append({"prefix": src[at - chars:at], "suffix": src[at:at + chars // 3]})
    return out


def decode_rate(call, new: int, device, reps: int) -> float:
    """Tokens/s of decoding alone: call(n) forces n new tokens; the best of `reps` calls of N and of 1, after one."""
    call(new)
    full = min(timed(lambda: call(new), device) for _ in range(reps))
    one = min(timed(lambda: call(1), device) for _ in range(reps))
    return (new - 1) / (full - one) if full > one else float("nan")


def bandwidth_tb_s(device) -> float | None:
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    if name in BANDWIDTH_TB_S:
        return BANDWIDTH_TB_S[name]
    x = torch.empty(2 << 30, dtype=torch.uint8, device=device)
    y = torch.empty_like(x)
    y.copy_(x)
    seconds = min(timed(lambda: y.copy_(x), device) for _ in range(5))
    return 2 * x.numel() / seconds / 1e12  # bytes read and written


def build(mode: str, device):
    dims = {} if mode == "full" else TINY
    dtype = torch.bfloat16 if mode == "full" else torch.float32
    config = CodeLlamaConfig.from_variant("CodeLlama-7b", **dims, dtype=str(dtype).removeprefix("torch."))
    torch.manual_seed(0)
    with torch.device(device):
        model = CodeLlamaForCausalLM._from_config(config, dtype=dtype).eval()
    sync(device)
    return model


def own_us(event, on_device: bool) -> float:
    return event.self_device_time_total if on_device else event.self_cpu_time_total


def row(cells) -> str:
    return "| " + " | ".join(str(c) for c in cells) + " |"


def table(header: list[str], rows: list[list], *, right_from: int = 1) -> None:
    print(row(header))
    print(row(["---"] * right_from + ["---:"] * (len(header) - right_from)))
    for r in rows:
        print(row(r))
    print(flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tiny", action="store_true", help="a tiny model on the CPU, small sizes: proves the script")
    ap.add_argument("--tokenizer", type=Path, help="Code Llama's tokenizer.model (default: ../shared or shared/)")
    args = ap.parse_args()
    logging.getLogger("codellama_hf.tokenization.infilling").setLevel(logging.ERROR)  # the editor prompts are trimmed on purpose
    mode = "tiny" if args.tiny else "full"
    size = SIZES[mode]
    device = torch.device("cpu" if args.tiny else "cuda")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("no CUDA device; run with --tiny on a CPU")
    path = args.tokenizer or next((p for p in TOKENIZER_PLACES if p.is_file()), None)
    if path is None or not path.is_file():
        raise SystemExit(f"no tokenizer.model at {path or TOKENIZER_PLACES}; pass --tokenizer PATH (Code Llama's "
                         f"32016 pieces)")
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "tokenizer.model").write_bytes(path.read_bytes())
        tok = CodeLlamaTokenizer.from_pretrained(tmp)

    t0 = time.perf_counter()
    model = build(mode, device)
    build_s = time.perf_counter() - t0
    weight_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    bw = bandwidth_tb_s(device)
    limit = bw * 1e12 / weight_bytes if bw else None
    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(f"**{datetime.date.today().isoformat()}**, {gpu}, torch {torch.__version__}, transformers "
          f"{transformers.__version__}; CodeLlama-7b's shape{' (tiny dims)' if args.tiny else ''}, "
          f"{str(model.dtype).removeprefix('torch.')}, {weight_bytes / 1e9:.2f} GB of weights built on the device in "
          f"{build_s:.1f} s" + (f"; bandwidth limit {bw:.2f} TB/s / weights = {limit:.0f} tokens/s" if bw else "")
          + "\n", flush=True)

    stops = [model.config.eos_token_id, model.config.eot_token_id]
    fast_on = None if device.type == "cuda" else True  # the pipelines' default on CUDA; asked for on the CPU
    fill = pipeline("code-infilling", model=model, tokenizer=tok)
    complete = pipeline("text-generation", model=model, tokenizer=tok)
    short = {"prefix": "def fibonacci(n):\n    ", "suffix": "\n\nprint(fibonacci(10))\n"}
    ids = torch.tensor([tok.infilling_prompt_ids(short["prefix"], short["suffix"])], device=device)

    def gen(n, **kw):
        return model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=n, min_new_tokens=n,
                              do_sample=False, eos_token_id=stops, pad_token_id=tok.pad_token_id, **kw)

    def infill(n, gaps=short, **kw):
        return fill(gaps, max_new_tokens=n, min_new_tokens=n, **kw)

    def text(n, **kw):
        return complete("def fibonacci(n):", max_new_tokens=n, min_new_tokens=n, do_sample=False, **kw)

    # 1. decode rate, batch 1 ----------------------------------------------------------------------------------------
    rows = []
    log("eager generate")
    gen(4)
    rows.append(["`generate`, eager, dynamic cache", decode_rate(gen, size["eager_new"], device, 2), "—"])
    log("generate(cache_implementation='static'): first call compiles on CUDA")
    first = timed(lambda: gen(size["new"], cache_implementation="static"), device)
    rows.append(["`generate(cache_implementation=\"static\")`",
                 decode_rate(lambda n: gen(n, cache_implementation="static"), size["new"], device, 3), f"{first:.1f}"])
    log(f"fast path warm-up: batch 1 and {size['batches']}, the cache lengths this run uses")
    warm = warm_up(model, batch_sizes=(1,), max_lengths=(256, size["editor_prompt"] + size["editor_middle"]),
                   fast=fast_on)
    warm += warm_up(model, batch_sizes=size["batches"], max_lengths=(size["batch_prompt"] + size["batch_middle"],),
                    fast=fast_on)
    first = timed(lambda: infill(size["new"], fast=fast_on), device)
    rows.append(["`pipeline(\"code-infilling\")`, fast path",
                 decode_rate(lambda n: infill(n, fast=fast_on), size["new"], device, 3),
                 f"{warm:.1f} warm-up + {first:.1f}"])
    rows.append(["`pipeline(\"text-generation\")`, fast path",
                 decode_rate(lambda n: text(n, fast=fast_on), size["new"], device, 3), "(shares the warm-up)"])
    log("eager pipelines")
    rows.append(["`pipeline(\"code-infilling\")`, `fast=False`",
                 decode_rate(lambda n: infill(n, fast=False), size["eager_new"], device, 2), "—"])
    table(["path (batch 1, greedy)", "tokens/s", "share of the bandwidth limit", "first call (s)"],
          [[name, f"{rate:.1f}", f"{rate / limit:.0%}" if limit else "n/a (CPU)", first_s]
           for name, rate, first_s in rows])

    # 2. editor-style infill latency -------------------------------------------------------------------------------
    log("editor infill latency")
    editor = code_gaps(1, chars=size["editor_prompt"] * 6, seed=1)[0]
    n_prompt = len(tok.infilling_prompt_ids(editor["prefix"], editor["suffix"], max_length=size["editor_prompt"]))
    lat = {}
    for name, fast, reps in (("fast path", fast_on, size["editor_reps"]), ("`fast=False`", False, size["eager_reps"])):
        def one():
            fill(editor, max_prompt_tokens=size["editor_prompt"], max_new_tokens=size["editor_middle"],
                 min_new_tokens=size["editor_middle"], fast=fast)
        one()
        times = sorted(timed(one, device) for _ in range(reps))
        lat[name] = (statistics.median(times), times[min(len(times) - 1, round(0.95 * (len(times) - 1)))], reps)
    table([f"`pipeline(\"code-infilling\")`, {n_prompt}-token prompt, {size['editor_middle']}-token middle",
           "p50 (s)", "p95 (s)", "calls"], [[k, f"{a:.3f}", f"{b:.3f}", r] for k, (a, b, r) in lat.items()])

    # 3. batches ---------------------------------------------------------------------------------------------------
    rows = []
    for batch in (1, *size["batches"]):
        log(f"batch {batch}")
        gaps = code_gaps(batch, chars=size["batch_prompt"] * 3, seed=2)
        cells = [batch]
        for fast in (fast_on, False):
            def call():
                fill(gaps, batch_size=batch, max_prompt_tokens=size["batch_prompt"],
                     max_new_tokens=size["batch_middle"], min_new_tokens=size["batch_middle"], fast=fast)
            call()
            cells.append(f"{batch * size['batch_middle'] / min(timed(call, device) for _ in range(2)):.0f}")
        rows.append(cells)
    table([f"batch ({size['batch_prompt']}-token prompts, {size['batch_middle']} new tokens each)",
           "fast path tokens/s", "`fast=False` tokens/s"], rows)

    # 4. pipeline overhead against a hand-written loop ---------------------------------------------------------------
    log("pipeline overhead")
    gaps = code_gaps(size["gaps"], chars=600, seed=3)
    new = size["overhead_new"]

    def loop(gap, fast, on_device=True):
        prompt = torch.tensor([tok.infilling_prompt_ids(gap["prefix"], gap["suffix"])])
        prompt = prompt.to(device) if on_device else prompt
        kwargs = dict(input_ids=prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=new,
                      min_new_tokens=new, do_sample=False, eos_token_id=stops, pad_token_id=tok.pad_token_id)
        out = fast_generate(model, fast=fast, **kwargs) if fast is not False else model.generate(**kwargs)
        return tok.decode_infilling(out[0, prompt.shape[1]:].tolist())

    def pipe(gap, fast):
        return fill(gap, max_new_tokens=new, min_new_tokens=new, fast=fast)["infill"]

    runs = {"fast path": (lambda g: loop(g, fast_on), lambda g: pipe(g, fast_on)),
            "eager": (lambda g: loop(g, False), lambda g: pipe(g, False)),
            "eager, loop's ids left on the CPU": (lambda g: loop(g, False, on_device=False), lambda g: pipe(g, False))}
    rows = []
    for name, (hand, piped) in runs.items():
        assert hand(gaps[0]) == piped(gaps[0]), name  # warm
        t = {"loop": [[] for _ in gaps], "pipe": [[] for _ in gaps]}
        middles = {"loop": {}, "pipe": {}}
        for r in range(size["overhead_rounds"]):
            for i, gap in enumerate(gaps):
                order = [("loop", hand), ("pipe", piped)]
                for key, fn in order if (r + i) % 2 == 0 else order[::-1]:
                    seconds, middles[key][i] = timed_result(lambda: fn(gap), device)
                    t[key][i].append(seconds)
        assert middles["loop"] == middles["pipe"], name  # the same middles
        a, b = (sum(statistics.median(x) for x in t[k]) for k in ("loop", "pipe"))
        rows.append([name, f"{a:.3f}", f"{b:.3f}", f"{b / a:.3f}"])
    table([f"{size['gaps']} gaps × {new} tokens, {size['overhead_rounds']} alternating rounds",
           "hand-written loop (s)", "pipeline (s)", "ratio"], rows)

    # 5. where a fast-path token's time goes -------------------------------------------------------------------------
    log("profile")
    steps = size["profile_steps"]
    activities = [torch.profiler.ProfilerActivity.CPU] + ([torch.profiler.ProfilerActivity.CUDA]
                                                          if device.type == "cuda" else [])
    infill(steps, fast=fast_on)
    with torch.profiler.profile(activities=activities) as prof:
        wall = timed(lambda: infill(steps, fast=fast_on), device)
    on_device = device.type == "cuda"
    # kernels are their own events; a CPU op's device time repeats theirs, so count each kernel once
    events = [e for e in prof.key_averages() if (e.device_type == DeviceType.CUDA) == on_device]
    device_us = sum(e.self_device_time_total for e in events) if on_device else 0
    top = sorted(events, key=lambda e: own_us(e, on_device), reverse=True)[:8]
    per_token = f"{wall * 1e3 / steps:.2f} ms per token of wall time (profiler on)"
    print(f"One fast-path infill of {steps} tokens under torch.profiler: {per_token}"
          + (f", of which the device was busy {device_us / 1e3 / steps:.2f} ms ({device_us / 1e6 / wall:.0%})."
             if on_device else " (CPU ops below)."))
    print()
    table(["kernel" if on_device else "op", "self device ms per token" if on_device else "self CPU ms per token",
           "calls per token"],
          [[f"`{e.key[:70]}`", f"{own_us(e, on_device) / 1e3 / steps:.3f}", f"{e.count / steps:.1f}"] for e in top])
    from torch._dynamo.utils import counters

    print(f"Dynamo graphs compiled in the whole run: {counters['stats']['unique_graphs']} (Transformers' static "
          f"generate and the fast path together).")
    log("done")


START = time.perf_counter()

if __name__ == "__main__":
    main()
