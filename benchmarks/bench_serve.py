"""`codellama-hf serve` under 1, 4 and 16 concurrent infilling clients, against the same model called in-process.

Each client sends llama.cpp /infill requests (a gap cut from the standard library's sources, about 600 characters
before and 300 after), one after another, each generating exactly --new-tokens tokens (ignore_eos), to a server
running in this process (uvicorn on a thread, HTTP on 127.0.0.1). The baseline is the hand-written in-process loop:
Meta's infilling prompt ids, then `model.generate` (greedy, batch 1), one request after another. Rows per engine:
requests/s, aggregate generated tokens/s, and p50/p95 latency of one request. Every row runs once untimed, then
timed, on the same requests.

The model has random weights in CodeLlama-7b's structure: --shape small (hidden 1024, 4 layers, 16 heads, the real
32016-piece vocabulary: 116M parameters, a realistic size for CPU) or --shape 7b (the real 7B shape, for a GPU).

    .venv/bin/python benchmarks/bench_serve.py                                   # CPU, a few minutes on 2 cores
    .venv/bin/python benchmarks/bench_serve.py --device cuda --shape 7b --requests-per-client 8 --new-tokens 64

With vLLM installed (its own venv, .ci/vllm-lane), `--engines vllm-offline,vllm,continuous` adds raw vLLM
(`LLM.generate` on the same ids, `clients` requests at a time, no server of ours) and `serve --engine vllm`; the
model is then saved to a temporary folder, which vLLM loads through this package's plugin (docs/benchmarks.md).
"""

from __future__ import annotations

import argparse
import asyncio
import platform
import random
import statistics
import sysconfig
import tempfile
import threading
import time
from pathlib import Path

import httpx
import torch

from codellama_hf import CodeLlamaConfig, CodeLlamaForCausalLM, CodeLlamaTokenizer
from codellama_hf.serving import ServeOptions, create_app
from codellama_hf.serving.engines import make_engine
from codellama_hf.serving.loading import plan_for
from codellama_hf.serving.service import Service

DEFAULT_TOKENIZER = Path(__file__).resolve().parents[2] / "shared" / "tokenizers" / "codellama" / "tokenizer.model"
SHAPES = {
    "small": dict(hidden_size=1024, num_hidden_layers=4, num_attention_heads=16, num_key_value_heads=16,
                  intermediate_size=2752),
    "7b": {},  # CodeLlama-7b's own shape
}


def gaps(count: int, seed: int = 0) -> list[tuple[str, str]]:
    rng = random.Random(seed)
    files = sorted(Path(sysconfig.get_paths()["stdlib"]).glob("*.py"))
    out = []
    while len(out) < count:
        src = rng.choice(files).read_text(encoding="utf-8", errors="replace")
        if len(src) < 1200:
            continue
        at = rng.randrange(600, len(src) - 300)
        out.append((src[at - 600:at], src[at:at + 300]))
    return out


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def row(name: str, clients: int, latencies: list[float], tokens: int, wall: float) -> dict:
    return dict(name=name, clients=clients, requests=len(latencies), rps=len(latencies) / wall, tps=tokens / wall,
                p50=statistics.median(latencies), p95=percentile(latencies, 0.95), wall=wall)


def in_process(model, tok, work, new_tokens: int) -> dict:
    stops = [model.config.eos_token_id, model.config.eot_token_id]
    latencies, tokens = [], 0
    start = time.perf_counter()
    for prefix, suffix in work:
        t0 = time.perf_counter()
        ids = torch.tensor([tok.infilling_prompt_ids(prefix, suffix)], device=model.device)
        with torch.inference_mode():  # as the engines run
            out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=new_tokens,
                                 min_new_tokens=new_tokens, do_sample=False, eos_token_id=stops,
                                 pad_token_id=tok.pad_token_id)
        tok.decode_infilling(out[0, ids.shape[1]:].tolist())
        latencies.append(time.perf_counter() - t0)
        tokens += out.shape[1] - ids.shape[1]
    return row("in-process `generate`, one at a time", 1, latencies, tokens, time.perf_counter() - start)


class Server:
    def __init__(self, service: Service):
        import uvicorn

        self.app = create_app(lambda: service, ServeOptions())
        with __import__("socket").socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.server = uvicorn.Server(uvicorn.Config(self.app, host="127.0.0.1", port=self.port, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        while not self.server.started:
            time.sleep(0.05)
        while httpx.get(f"http://127.0.0.1:{self.port}/health").status_code != 200:
            time.sleep(0.05)

    def stop(self):
        self.server.should_exit = True
        self.thread.join(timeout=60)


async def clients_run(url: str, clients: int, per_client: list[list[tuple[str, str]]], new_tokens: int):
    latencies, tokens = [], 0

    async def client(work):
        nonlocal tokens
        async with httpx.AsyncClient(base_url=url, timeout=3600) as http:
            for prefix, suffix in work:
                t0 = time.perf_counter()
                r = await http.post("/infill", json={"input_prefix": prefix, "input_suffix": suffix,
                                                     "n_predict": new_tokens, "ignore_eos": True, "temperature": 0})
                r.raise_for_status()
                latencies.append(time.perf_counter() - t0)
                tokens += r.json()["tokens_predicted"]

    start = time.perf_counter()
    await asyncio.gather(*(client(w) for w in per_client))
    return latencies, tokens, time.perf_counter() - start


def vllm_offline(folder, tok, work_for, client_counts, new_tokens: int) -> list[dict]:
    """Raw vLLM, no server of ours: `LLM.generate` on Meta's ids, `clients` requests at a time. Every request
    generates exactly new_tokens, so a batch of `clients` ends together, as `clients` sequential clients would."""
    from vllm import LLM, SamplingParams
    from vllm.inputs import TokensPrompt

    llm = LLM(model=str(folder), skip_tokenizer_init=True, dtype=str(model_dtype(folder)), enforce_eager=True,
              max_num_seqs=max(client_counts), seed=0)
    params = SamplingParams(temperature=0.0, max_tokens=new_tokens, ignore_eos=True, detokenize=False)
    rows = []
    try:
        for clients in client_counts:
            work = work_for(clients)
            rounds = [[TokensPrompt(prompt_token_ids=tok.infilling_prompt_ids(*w[i])) for w in work]
                      for i in range(len(work[0]))]
            for timed in (False, True):  # untimed first, as every row (see bench_engine)
                latencies, tokens, start = [], 0, time.perf_counter()
                for batch in rounds:
                    t0 = time.perf_counter()
                    outs = llm.generate(batch, params, use_tqdm=False)
                    latencies += [time.perf_counter() - t0] * len(batch)
                    tokens += sum(len(o.outputs[0].token_ids) for o in outs)
                wall = time.perf_counter() - start
            rows.append(row("raw vLLM offline `LLM.generate`", clients, latencies, tokens, wall))
            print(f"  vllm-offline x{clients}: {rows[-1]['tps']:.1f} tokens/s", flush=True)
    finally:
        llm.llm_engine.engine_core.shutdown()
        del llm
    return rows


def model_dtype(folder) -> str:
    import json

    return json.loads((Path(folder) / "config.json").read_text())["dtype"]


def bench_engine(engine_name: str, model, tok, work_for, client_counts, new_tokens: int, *, folder=None
                 ) -> list[dict]:
    if engine_name == "vllm":  # vLLM loads the folder itself; the service needs only the config and tokenizer
        from codellama_hf.serving.engines.vllm import VllmEngine

        engine = VllmEngine(folder, max_queue=1024, dtype=model_dtype(folder), enforce_eager=True, seed=0)
    else:
        sizes = {}
        if engine_name == "continuous":  # the server's cache plan, not Transformers' from total RAM
            plan = plan_for(model)
            sizes = dict(kv_cache_tokens=plan.kv_cache_tokens, max_batch_tokens=plan.max_batch_tokens)
        engine = make_engine(model, engine=engine_name, max_queue=1024, **sizes)
    engine.start()
    service = Service(model, tok, engine, model_id="bench", config=model.config)
    server = Server(service)
    url = f"http://127.0.0.1:{server.port}"
    rows = []
    try:
        for clients in client_counts:
            # The same row untimed first: PyTorch's CPU kernels pay a first-call cost per tensor shape (each new
            # prompt length, each new cache length), seconds at this size, which would otherwise land on whichever
            # row meets a shape first.
            asyncio.run(clients_run(url, clients, work_for(clients), new_tokens))
            latencies, tokens, wall = asyncio.run(clients_run(url, clients, work_for(clients), new_tokens))
            rows.append(row(f"serve --engine {engine_name}", clients, latencies, tokens, wall))
            print(f"  {engine_name} x{clients}: {rows[-1]['tps']:.1f} tokens/s", flush=True)
    finally:
        server.stop()
        engine.stop()
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu", help="cpu or cuda (default: %(default)s)")
    ap.add_argument("--shape", choices=tuple(SHAPES), default="small")
    ap.add_argument("--dtype", choices=("float32", "bfloat16"), help="default: float32 on cpu, bfloat16 on cuda")
    ap.add_argument("--clients", default="1,4,16", help="concurrent clients, comma-separated (default: %(default)s)")
    ap.add_argument("--requests-per-client", type=int, default=1, help="(default: %(default)s)")
    ap.add_argument("--min-requests", type=int, default=4, help="at least this many per row (default: %(default)s)")
    ap.add_argument("--new-tokens", type=int, default=32)
    ap.add_argument("--engines", default="eager,continuous",
                    help="in this order, from vllm-offline (raw vLLM, no server), vllm, continuous, eager "
                         "(default: %(default)s)")
    ap.add_argument("--tokenizer", type=Path, default=DEFAULT_TOKENIZER)
    args = ap.parse_args()
    if not args.tokenizer.is_file():
        raise SystemExit(f"no tokenizer.model at {args.tokenizer}; pass --tokenizer PATH (Code Llama's 32016 pieces)")
    dtype = args.dtype or ("bfloat16" if args.device.startswith("cuda") else "float32")
    tok = CodeLlamaTokenizer(vocab_file=str(args.tokenizer))
    torch.manual_seed(0)
    config = CodeLlamaConfig.from_variant("CodeLlama-7b", **SHAPES[args.shape], vocab_size=len(tok), dtype=dtype)
    with torch.device(args.device):
        model = CodeLlamaForCausalLM(config).to(getattr(torch, dtype)).eval()
    client_counts = [int(c) for c in args.clients.split(",")]

    def work_for(clients: int, seed: int = 0) -> list[list[tuple[str, str]]]:
        per = max(args.requests_per_client, -(-args.min_requests // clients))
        pool = gaps(clients * per, seed=seed)
        return [pool[i * per:(i + 1) * per] for i in range(clients)]

    prompt_lens = [len(tok.infilling_prompt_ids(*g)) for g in gaps(16)]
    started = time.strftime("%Y-%m-%d %H:%M %Z")
    baseline = gaps(max(args.min_requests, args.requests_per_client), seed=0)
    in_process(model, tok, baseline, args.new_tokens)  # untimed first, as every row (see bench_engine)
    rows = [in_process(model, tok, baseline, args.new_tokens)]
    print(f"  in-process: {rows[0]['tps']:.1f} tokens/s", flush=True)
    with tempfile.TemporaryDirectory() as folder:
        if any(name.startswith("vllm") for name in args.engines.split(",")):
            model.save_pretrained(folder)  # vLLM reads a folder (through the plugin: vLLM's own Llama)
            tok.save_pretrained(folder)
        for name in args.engines.split(","):
            if name == "vllm-offline":
                rows += vllm_offline(folder, tok, work_for, client_counts, args.new_tokens)
            else:
                rows += bench_engine(name, model, tok, work_for, client_counts, args.new_tokens, folder=folder)
    rows.append(in_process(model, tok, baseline, args.new_tokens))  # again at the end: the machine's drift
    rows[-1]["name"] += " (again, last)"
    params = sum(p.numel() for p in model.parameters())
    print(f"\n{started}; {platform.processor() or platform.machine()}, {torch.get_num_threads()} torch threads, "
          f"device {args.device}, torch {torch.__version__}")
    print(f"CodeLlama-7b structure, shape {args.shape}: {params / 1e6:.0f}M parameters, {dtype}, random weights; "
          f"infilling prompts of {min(prompt_lens)}-{max(prompt_lens)} tokens, {args.new_tokens} new tokens each\n")
    print("| engine | clients | requests | requests/s | tokens/s (all clients) | p50 latency (s) | p95 latency (s) |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['name']} | {r['clients']} | {r['requests']} | {r['rps']:.2f} | {r['tps']:.1f} | {r['p50']:.2f} "
              f"| {r['p95']:.2f} |")


if __name__ == "__main__":
    main()
