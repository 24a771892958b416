"""Tokenizer benchmark: encode throughput and exactness on real code; prints markdown tables for docs/benchmarks.md.

    .venv/bin/python benchmarks/bench_tokenizer.py [--model PATH/tokenizer.model] [--megabytes 10] [--snippets 1000]

Throughput: ~10 MB of the Python standard library's sources, one file per input, encoded by
- SentencePiece (`SentencePieceProcessor.encode`, the reference; batched with num_threads = all cores),
- Transformers' own CodeLlamaTokenizer built from the same tokenizer.model,
- codellama_hf.CodeLlamaTokenizer,
single-threaded (one input per call, RAYON_NUM_THREADS=1, CPU seconds) and batched (all inputs in one call,
all cores, wall-clock seconds); best of 3 interleaved rounds.

Exactness: the faults the issue lists, measured on random snippets of the same sources for stock Transformers,
for our files loaded by stock Transformers (`save_llama_format_tokenizer`, which stock loads as
TokenizersBackend), and for codellama_hf.
"""

from __future__ import annotations

import argparse
import os
import random
import subprocess
import sys
import sysconfig
import tempfile
import time
from pathlib import Path

DEFAULT_MODEL = Path(__file__).resolve().parents[2] / "shared" / "tokenizers" / "codellama" / "tokenizer.model"
STDLIB = Path(sysconfig.get_paths()["stdlib"])


def corpus(megabytes: float) -> list[str]:
    docs, size = [], 0
    for path in sorted(STDLIB.rglob("*.py")):
        text = path.read_text(encoding="utf-8", errors="replace")
        docs.append(text)
        size += len(text.encode("utf-8"))
        if size >= megabytes * 1e6:
            break
    return docs


def loaders(model: Path, folder: Path):
    import sentencepiece as spm
    from transformers import CodeLlamaTokenizer as StockCodeLlamaTokenizer

    from codellama_hf import CodeLlamaTokenizer

    sp = spm.SentencePieceProcessor(model_file=str(model))
    return {"SentencePiece": sp, "Transformers CodeLlamaTokenizer": StockCodeLlamaTokenizer.from_pretrained(folder),
            "codellama_hf CodeLlamaTokenizer": CodeLlamaTokenizer.from_pretrained(folder)}


def throughput(tok, docs: list[str], *, batched: bool) -> tuple[float, int]:
    """Seconds and tokens. Single-threaded runs are timed in CPU seconds of this process, which other load on
    the machine does not inflate; batched runs use several cores, so they are timed on the wall clock."""
    is_spm = hasattr(tok, "piece_to_id")
    clock = time.perf_counter if batched else time.process_time
    start = clock()
    if batched:
        ids = tok.encode(docs, num_threads=os.cpu_count()) if is_spm else tok(docs)["input_ids"]
    else:
        ids = [tok.encode(d) if is_spm else tok(d)["input_ids"] for d in docs]
    return clock() - start, sum(map(len, ids))


def speed_table(model: Path, folder: Path, megabytes: float, mode: str, rounds: int = 3) -> list[str]:
    docs = corpus(megabytes)
    mb = sum(len(d.encode("utf-8")) for d in docs) / 1e6
    toks = loaders(model, folder)
    best: dict[str, tuple[float, int]] = {}
    for _ in range(rounds):  # interleaved, so a burst of load elsewhere hits every tokenizer alike
        for name, tok in toks.items():
            run = throughput(tok, docs, batched=mode == "batched")
            best[name] = min(best.get(name, run), run)
    return [f"| {name} | {mode} | {mb / s:.2f} | {n / s / 1e6:.2f} |" for name, (s, n) in best.items()]


def fault_table(model: Path, folder: Path, count: int) -> list[str]:
    import sentencepiece as spm
    from transformers import CodeLlamaTokenizer as StockCodeLlamaTokenizer
    from transformers import TokenizersBackend

    from codellama_hf import CodeLlamaTokenizer
    from codellama_hf.tokenization import save_llama_format_tokenizer

    sp = spm.SentencePieceProcessor(model_file=str(model))
    ours = CodeLlamaTokenizer.from_pretrained(folder)
    stock_dir = Path(tempfile.mkdtemp()) / "llama-format"
    save_llama_format_tokenizer(ours, stock_dir)
    tokenizers = {"Transformers CodeLlamaTokenizer": StockCodeLlamaTokenizer.from_pretrained(folder),
                  "our files in stock Transformers": TokenizersBackend.from_pretrained(stock_dir),
                  "codellama_hf CodeLlamaTokenizer": ours}
    rng = random.Random(0)
    files = sorted(STDLIB.glob("*.py"))
    snippets = []
    for _ in range(count):
        src = rng.choice(files).read_text(encoding="utf-8", errors="replace")
        a = rng.randrange(len(src))
        snippets.append(src[a:a + rng.randrange(1, 1500)])
    splits = [(s[:c], s[c:]) for s in snippets for c in [rng.randrange(len(s) + 1)]]
    pre, suf, mid = (sp.piece_to_id(p) for p in ("▁<PRE>", "▁<SUF>", "▁<MID>"))
    meta_psm = [[1, pre] + sp.encode(p) + [suf] + sp.encode("☺" + s)[2:] + [mid] for p, s in splits]

    def pct(hits) -> str:
        hits = list(hits)
        return f"{100 * sum(hits) / len(hits):.1f}%"

    rows = []
    for name, tok in tokenizers.items():
        plain = pct(tok(s, add_special_tokens=False)["input_ids"] == sp.encode(s) for s in snippets)
        roundtrip = pct(tok.decode(tok(s)["input_ids"], skip_special_tokens=True) == s for s in snippets)
        try:
            psm = pct(tok(p, suffix=s)["input_ids"] == want for (p, s), want in zip(splits, meta_psm))
        except Exception as err:  # noqa: BLE001 - report what stock does
            psm = f"error: {type(err).__name__}"
        before = len(tok)
        fill = tok("def f(<FILL_ME>):")["input_ids"]
        fill_note = f"{len(tok)} entries" + (" (new id)" if max(fill) >= before else "")
        leak = "yes" if {32007, 32008, 32009, 32010} & set(tok(" <PRE> <SUF> <MID> <EOT>")["input_ids"]) else "no"
        rows.append(f"| {name} | {plain} | {roundtrip} | {psm} | {fill_note} | {leak} |")
    return rows


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", type=Path, default=DEFAULT_MODEL, help="a Code Llama tokenizer.model")
    parser.add_argument("--megabytes", type=float, default=10.0)
    parser.add_argument("--snippets", type=int, default=1000)
    parser.add_argument("--mode", choices=["single", "batched"], help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    folder = Path(tempfile.mkdtemp())
    (folder / "tokenizer.model").write_bytes(args.model.read_bytes())
    if args.mode:  # child process: one throughput mode, with the thread count set before tokenizers loads
        print("\n".join(speed_table(args.model, folder, args.megabytes, args.mode)))
        return
    print(f"Encode throughput, {args.megabytes:g} MB of stdlib sources, {os.cpu_count()} cores, model {args.model}\n")
    print("| tokenizer | mode | MB/s | M tokens/s |\n| --- | --- | ---: | ---: |")
    for mode, threads in (("single", "1"), ("batched", str(os.cpu_count()))):
        env = {**os.environ, "RAYON_NUM_THREADS": threads, "TOKENIZERS_PARALLELISM": "true"}
        child = [sys.executable, __file__, "--model", str(args.model), "--megabytes", str(args.megabytes),
                 "--mode", mode]
        print(subprocess.run(child, env=env, check=True, capture_output=True, text=True).stdout.strip())
    print(f"\nExactness on {args.snippets} random stdlib snippets (reference: SentencePiece / Meta's PSM prompt)\n")
    print("| tokenizer | plain = SentencePiece | decode(encode(x)) = x | PSM prompt = Meta's | after `<FILL_ME>` "
          "| ` <PRE>` text -> control id |\n| --- | ---: | ---: | ---: | --- | --- |")
    print("\n".join(fault_table(args.model, folder, args.snippets)))


if __name__ == "__main__":
    main()
