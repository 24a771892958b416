"""`codellama-hf generate` on one engine in this process against `generate --ray` over engine replicas on a local Ray
instance, on the same JSONL job.

The job: --lines infilling gaps cut from the standard library's sources (about 600 characters before and 300 after),
each generating up to --new-tokens tokens. The model has random weights in CodeLlama-7b's structure at a small
size (hidden 1024, 4 layers, 16 heads, the real 32016-piece vocabulary: 116M parameters), saved once to a temporary
folder. Each row is one `codellama-hf generate` command run as a subprocess, timed from its own summary line: without
Ray the job's seconds start after the model loaded; with Ray they start once Ray is up and include the replicas
loading the model (they load inside the dataset's execution). The wall column is the whole command.

    .venv/bin/python benchmarks/bench_batch_ray.py                          # CPU, a few minutes on 2 cores
    .venv/bin/python benchmarks/bench_batch_ray.py --replicas 2 --cpus-per-replica 1 --lines 64
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_serve import DEFAULT_TOKENIZER, SHAPES, gaps  # noqa: E402 - the same model and gaps as the server's


def build_folder(folder: Path, tokenizer: Path) -> None:
    import torch

    from codellama_hf import CodeLlamaConfig, CodeLlamaForCausalLM, CodeLlamaTokenizer

    tok = CodeLlamaTokenizer(vocab_file=str(tokenizer))
    torch.manual_seed(0)
    config = CodeLlamaConfig.from_variant("CodeLlama-7b", **SHAPES["small"], vocab_size=len(tok), dtype="float32")
    CodeLlamaForCausalLM(config).eval().save_pretrained(folder)
    tok.save_pretrained(folder)


def run(command: list[str], timeout: int) -> tuple[dict, float]:
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
    wall = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(done.stderr[-3000:])
    m = re.search(r"wrote (\d+) lines .*\((\d+) errors\), (\d+) tokens in ([\d.]+) s \(([\d.]+) tokens/s\)",
                  done.stderr)
    if m is None:
        raise SystemExit(f"no summary line in:\n{done.stderr[-3000:]}")
    lines, errors, tokens, seconds, tps = m.groups()
    return dict(lines=int(lines), errors=int(errors), tokens=int(tokens), seconds=float(seconds), tps=float(tps)), wall


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--lines", type=int, default=32)
    ap.add_argument("--new-tokens", type=int, default=32)
    ap.add_argument("--replicas", type=int, default=2)
    ap.add_argument("--cpus-per-replica", type=float, default=1.0)
    ap.add_argument("--node-ip", default="127.0.0.2", help="Ray's node address (default: %(default)s)")
    ap.add_argument("--tokenizer", type=Path, default=DEFAULT_TOKENIZER)
    ap.add_argument("--timeout", type=int, default=1200, help="seconds per command (default: %(default)s)")
    args = ap.parse_args()
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    with tempfile.TemporaryDirectory(prefix="bray", dir="/tmp") as tmp:
        tmp = Path(tmp)
        os.environ.setdefault("RAY_TMPDIR", str(tmp / "ray"))
        build_folder(tmp / "model", args.tokenizer)
        (tmp / "in.jsonl").write_text("".join(
            json.dumps({"prefix": p, "suffix": s, "parameters": {"max_new_tokens": args.new_tokens}}) + "\n"
            for p, s in gaps(args.lines)))
        base = [sys.executable, "-m", "codellama_hf_cli", "generate", "--input", str(tmp / "in.jsonl"),
                "--kv-cache-tokens", "16384"]
        rows = [("one engine, this process", 1,
                 *run([*base, "--output", str(tmp / "one.jsonl"), str(tmp / "model")], args.timeout))]
        ray_args = ["--ray", "--ray-node-ip", args.node_ip, "--ray-replicas", str(args.replicas),
                    "--ray-cpus-per-replica", str(args.cpus_per_replica)]
        rows.append((f"--ray, {args.cpus_per_replica:g} CPU per replica", args.replicas,
                     *run([*base, *ray_args, "--output", str(tmp / "ray.jsonl"), str(tmp / "model")], args.timeout)))
    print(f"{time.strftime('%Y-%m-%d')}, {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
          f"torch threads default; {args.lines} infilling lines x up to {args.new_tokens} tokens")
    print("| run | replicas | lines | tokens | job s | tokens/s | wall s (with loading) |")
    print("|---|---|---|---|---|---|---|")
    for name, replicas, r, wall in rows:
        print(f"| {name} | {replicas} | {r['lines']} | {r['tokens']} | {r['seconds']:.1f} | {r['tps']:.1f} | "
              f"{wall:.1f} |")


if __name__ == "__main__":
    main()
