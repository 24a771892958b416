"""The wrapper must cost nothing: CodeLlamaForCausalLM vs Transformers' LlamaForCausalLM on the same weights.

Measures from_pretrained wall time and greedy-decoding tokens/s, alternating the two classes over several
rounds and reporting medians, then prints a markdown table for docs/benchmarks.md.

    .venv/bin/python benchmarks/bench_modeling.py [--rounds 7] [--new-tokens 32]
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import torch
from transformers import LlamaForCausalLM

from codellama_hf import CodeLlamaConfig, CodeLlamaForCausalLM

# CodeLlama-7b's structure (vocab, rope, infilling ids) at a width and depth a 2-core CPU decodes in seconds.
SHAPE = dict(hidden_size=1024, num_hidden_layers=8, num_attention_heads=8, num_key_value_heads=8,
             intermediate_size=2752, dtype="float32")


def make_folders(root: Path) -> tuple[Path, Path]:
    """One random checkpoint, saved once; the Llama folder differs only in its config.json."""
    torch.manual_seed(0)
    ours, stock = root / "codellama", root / "llama"
    CodeLlamaForCausalLM(CodeLlamaConfig.from_variant("CodeLlama-7b", **SHAPE)).save_pretrained(ours)
    shutil.copytree(ours, stock)
    cfg = json.loads((ours / "config.json").read_text())
    for key in ("variant", "flavor", "infilling", "chat_format", "prefix_token_id", "suffix_token_id",
                "middle_token_id", "eot_token_id", "step_token_id"):
        cfg.pop(key, None)
    (stock / "config.json").write_text(json.dumps(cfg | {"model_type": "llama", "architectures": ["LlamaForCausalLM"]}))
    return ours, stock


def measure(cls, folder: Path, prompt: torch.Tensor, new_tokens: int) -> tuple[float, float]:
    t0 = time.perf_counter()
    model = cls.from_pretrained(folder).eval()
    load = time.perf_counter() - t0
    with torch.no_grad():
        model.generate(prompt, max_new_tokens=2, do_sample=False)  # warm-up
        t0 = time.perf_counter()
        out = model.generate(prompt, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False)
        gen = time.perf_counter() - t0
    assert out.shape[1] == prompt.shape[1] + new_tokens
    return load, new_tokens / gen


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--new-tokens", type=int, default=32)
    args = ap.parse_args()
    torch.set_num_threads(torch.get_num_threads())
    prompt = torch.randint(3, 32000, (1, 64), generator=torch.Generator().manual_seed(1))
    with tempfile.TemporaryDirectory() as tmp:
        ours, stock = make_folders(Path(tmp))
        runs = {"LlamaForCausalLM": [], "CodeLlamaForCausalLM": []}
        for r in range(args.rounds):
            order = [(LlamaForCausalLM, stock), (CodeLlamaForCausalLM, ours)]
            for cls, folder in order if r % 2 == 0 else order[::-1]:
                runs[cls.__name__].append(measure(cls, folder, prompt, args.new_tokens))
    med = {k: (statistics.median(l for l, _ in v), statistics.median(t for _, t in v)) for k, v in runs.items()}
    (sl, st), (ol, ot) = med["LlamaForCausalLM"], med["CodeLlamaForCausalLM"]
    print(f"{args.rounds} alternating rounds, medians; {SHAPE}, fp32, {args.new_tokens} greedy tokens "
          f"after a 64-token prompt, torch {torch.__version__}, {torch.get_num_threads()} threads\n")
    print("| class | from_pretrained (s) | greedy tokens/s |")
    print("|---|---|---|")
    print(f"| LlamaForCausalLM (Transformers) | {sl:.3f} | {st:.2f} |")
    print(f"| CodeLlamaForCausalLM (this package) | {ol:.3f} | {ot:.2f} |")
    print(f"| ratio (ours / stock) | {ol / sl:.3f} (target <= 1.05) | {ot / st:.3f} (target >= 0.98) |")


if __name__ == "__main__":
    main()
