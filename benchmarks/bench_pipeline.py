"""The infilling pipeline's overhead against a hand-written tokenize + generate + decode loop on the same model.

Both fill the same gaps (slices of the standard library's sources) with the same greedy tokens: the loop calls
`CodeLlamaTokenizer.infilling_prompt_ids`, `model.generate` and `decode_infilling` directly; the pipeline is
`pipeline("code-infilling", model=model, tokenizer=tok)`, one input per call. Calls alternate between the two,
the table sums each gap's median time over the rounds, and every middle is checked to be equal between them.

    .venv/bin/python benchmarks/bench_pipeline.py [--rounds 7] [--new-tokens 32] [--tokenizer PATH/tokenizer.model]
"""

from __future__ import annotations

import argparse
import random
import statistics
import sysconfig
import tempfile
import time
from pathlib import Path

import torch
from transformers import pipeline

from codellama_hf import CodeLlamaConfig, CodeLlamaForCausalLM, CodeLlamaTokenizer

DEFAULT_TOKENIZER = Path(__file__).resolve().parents[2] / "shared" / "tokenizers" / "codellama" / "tokenizer.model"
SHAPES = {  # CodeLlama-7b's structure; "small" is bench_modeling.py's 166M-parameter model, "tiny" the tests' size
    "small": dict(hidden_size=1024, num_hidden_layers=8, num_attention_heads=8, num_key_value_heads=8,
                  intermediate_size=2752, dtype="float32"),
    "tiny": dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                 intermediate_size=128, dtype="float32"),
}


def gaps(count: int) -> list[tuple[str, str]]:
    rng = random.Random(0)
    files = sorted(Path(sysconfig.get_paths()["stdlib"]).glob("*.py"))
    out = []
    while len(out) < count:
        src = rng.choice(files).read_text(encoding="utf-8", errors="replace")
        at = rng.randrange(200, max(201, len(src) - 200))
        out.append((src[max(0, at - 600):at], src[at:at + 300]))
    return out


def hand_loop(model, tok, prefix: str, suffix: str, new_tokens: int, stops: list[int]) -> str:
    ids = torch.tensor([tok.infilling_prompt_ids(prefix, suffix)])
    with torch.no_grad():
        out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=new_tokens,
                             min_new_tokens=new_tokens, do_sample=False, eos_token_id=stops,
                             pad_token_id=tok.pad_token_id)
    return tok.decode_infilling(out[0, ids.shape[1]:].tolist())


def bench(shape: str, tok, inputs, rounds: int, new_tokens: int) -> dict:
    torch.manual_seed(0)
    config = CodeLlamaConfig.from_variant("CodeLlama-7b", **SHAPES[shape])
    model = CodeLlamaForCausalLM(config).eval()
    pipe = pipeline("code-infilling", model=model, tokenizer=tok)
    stops = [config.eos_token_id, config.eot_token_id]

    def run_loop(prefix, suffix):
        return hand_loop(model, tok, prefix, suffix, new_tokens, stops)

    def run_pipe(prefix, suffix):
        return pipe({"prefix": prefix, "suffix": suffix}, max_new_tokens=new_tokens,
                    min_new_tokens=new_tokens)["infill"]

    assert [run_loop(*x) for x in inputs] == [run_pipe(*x) for x in inputs]  # warm-up, and the same middles
    times = {"loop": [[] for _ in inputs], "pipeline": [[] for _ in inputs]}
    for r in range(rounds):  # alternate per call, so drifts in machine load hit both alike
        for i, gap in enumerate(inputs):
            order = [("loop", run_loop), ("pipeline", run_pipe)]
            for name, fn in order if (r + i) % 2 == 0 else order[::-1]:
                t0 = time.perf_counter()
                fn(*gap)
                times[name][i].append(time.perf_counter() - t0)
    loop = sum(statistics.median(t) for t in times["loop"])
    pipe_t = sum(statistics.median(t) for t in times["pipeline"])
    params = sum(p.numel() for p in model.parameters())
    return dict(shape=shape, params=params, loop=loop, pipe=pipe_t, per_call_ms=(pipe_t - loop) / len(inputs) * 1e3)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--new-tokens", type=int, default=32)
    ap.add_argument("--inputs", type=int, default=4)
    ap.add_argument("--tokenizer", type=Path, default=DEFAULT_TOKENIZER)
    args = ap.parse_args()
    if not args.tokenizer.is_file():
        raise SystemExit(f"no tokenizer.model at {args.tokenizer}; pass --tokenizer PATH (Code Llama's 32016 pieces)")
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "tokenizer.model").write_bytes(args.tokenizer.read_bytes())
        tok = CodeLlamaTokenizer.from_pretrained(tmp)
    inputs = gaps(args.inputs)
    results = [bench(shape, tok, inputs, args.rounds, args.new_tokens) for shape in ("small", "tiny")]
    print(f"{args.rounds} rounds of alternating calls, per-gap medians summed; {args.inputs} gaps (600 + 300 characters of stdlib code), "
          f"{args.new_tokens} greedy tokens each, fp32, torch {torch.__version__}, {torch.get_num_threads()} threads\n")
    print("| model | parameters | hand-written loop (s) | pipeline (s) | ratio | overhead per call (ms) |")
    print("|---|---:|---:|---:|---:|---:|")
    for r in results:
        print(f"| CodeLlama-7b structure, {r['shape']} | {r['params'] / 1e6:.1f}M | {r['loop']:.3f} | {r['pipe']:.3f} "
              f"| {r['pipe'] / r['loop']:.3f} | {r['per_call_ms']:.2f} |")


if __name__ == "__main__":
    main()
