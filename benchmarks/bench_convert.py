"""The converter against `cp -r` and Transformers' own converter, on a synthetic 34b-shaped Meta checkpoint.

Writes a Meta folder (4 shards, 64 heads / 8 kv heads, vocab 32000, dim 2048) at 4 and at 24 layers
(24 layers is about 2.3 GB), then runs, each in a fresh process, rounds that interleave:
  - `cp -r` of the folder;
  - `codellama-hf convert` (this package), and `python -c "import codellama_hf"` alone: the startup
    (torch and Transformers imports) that every conversion pays whatever the checkpoint's size;
  - Transformers' convert_llama_weights_to_hf.py from its last release that shipped it (4.46.3), run by
    another venv's python (`--tf-python`); skipped without it.
Each run starts after `sync` (no writeback left from the run before) with the source either in the page
cache ("warm") or evicted from it with posix_fadvise DONTNEED ("cold": read from disk, as after a
download too big to stay cached). Peak RssAnon is sampled from /proc/<pid>/status every 10 ms; CPU is the
process's user+sys time. Prints a markdown table of medians.

    python -m venv /tmp/venv-tf446 && /tmp/venv-tf446/bin/pip install -c constraints.txt \\
        transformers==4.46.3 torch sentencepiece protobuf accelerate
    .venv/bin/python benchmarks/bench_convert.py --tf-python /tmp/venv-tf446/bin/python [--workdir DIR]

Needs ~10 GB free in --workdir (default: a temp folder under /tmp; check `df -h`) and the Llama-2
vocabulary from ../shared/tokenizers (Transformers' converter sizes the embedding from the tokenizer, so
it must have 32000 pieces). Everything written is deleted at the end.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.conftest import SHARED_TOKENIZERS  # noqa: E402
from tests.fixtures_convert import meta_params, meta_state_dict, shard_state_dict, write_meta_folder  # noqa: E402

VARIANT = "CodeLlama-34b"  # folder name = variant, as Meta names it
HEAD_DIM = 32  # 64 heads * 32 = dim 2048
CLI = Path(sys.executable).parent / "codellama-hf"


def build(workdir: Path, layers: int) -> Path:
    params = meta_params(VARIANT, n_layers=layers, head_dim=HEAD_DIM)
    sd = meta_state_dict(params, 32000, seed=layers)
    return write_meta_folder(workdir / f"meta-{layers}" / VARIANT, params, shard_state_dict(sd, 4),
                             SHARED_TOKENIZERS / "llama2" / "tokenizer.model")


def set_cache(folder: Path, state: str) -> None:
    os.sync()
    for p in folder.iterdir():
        fd = os.open(p, os.O_RDONLY)
        try:
            if state == "cold":
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            else:
                while os.read(fd, 16 << 20):
                    pass
        finally:
            os.close(fd)


def run(cmd: list[str]) -> tuple[float, float, float]:
    """Wall seconds, CPU seconds (user+sys) and peak RssAnon (MB) of `cmd`."""
    peak, done = [0], threading.Event()
    err = tempfile.TemporaryFile()
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=err)

    def sample():
        status = Path(f"/proc/{proc.pid}/status")
        while not done.is_set():
            try:
                for line in status.read_text().splitlines():
                    if line.startswith("RssAnon:"):
                        peak[0] = max(peak[0], int(line.split()[1]))
            except (OSError, ValueError):
                pass
            time.sleep(0.01)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    _, status, usage = os.wait4(proc.pid, 0)  # reaps it: the sampler reads the zombie's status until then
    wall = time.perf_counter() - t0
    done.set()
    sampler.join()
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode:
        err.seek(0)
        raise SystemExit(f"{' '.join(cmd)} failed ({proc.returncode}):\n{err.read().decode()[-2000:]}")
    return wall, usage.ru_utime + usage.ru_stime, peak[0] / 1024


def du(path: Path) -> float:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) / 1e9


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--layers", type=int, nargs="+", default=[4, 24])
    ap.add_argument("--rounds", type=int, default=5, help="interleaved rounds; the table shows medians")
    ap.add_argument("--cache", nargs="+", choices=("warm", "cold"), default=["warm", "cold"])
    ap.add_argument("--tf-python", help="python of a venv with transformers==4.46.3 (Transformers' converter)")
    ap.add_argument("--workdir", type=Path, help="where to write (default: a new temp folder under /tmp)")
    args = ap.parse_args()
    if not (SHARED_TOKENIZERS / "llama2" / "tokenizer.model").is_file():
        raise SystemExit(f"needs the Llama-2 vocabulary at {SHARED_TOKENIZERS}/llama2 (see tests/conftest.py)")
    work = Path(tempfile.mkdtemp(prefix="bench-convert-", dir=args.workdir))
    rows = []
    try:
        for layers in args.layers:
            src = build(work, layers)
            out = work / "out"
            tools = {"cp -r": ["cp", "-r", str(src), str(out)],
                     "codellama-hf convert": [str(CLI), "convert", str(src), str(out), "--quiet"],
                     # its fixed startup: the torch + Transformers imports every codellama_hf process pays
                     "└ of which `import codellama_hf`": [sys.executable, "-c", f"import codellama_hf, os; "
                                                           f"os.makedirs({str(out)!r})"]}
            if args.tf_python:
                tools["Transformers 4.46.3 converter"] = [
                    args.tf_python, "-m", "transformers.models.llama.convert_llama_weights_to_hf",
                    "--input_dir", str(src), "--model_size", "34B", "--llama_version", "2", "--output_dir", str(out)]
            results = {(cache, name): [] for cache in args.cache for name in tools}
            for r in range(args.rounds):
                for cache in args.cache:
                    for name, cmd in tools.items():
                        set_cache(src, cache)
                        results[cache, name].append(run(cmd))
                        shutil.rmtree(out)
                        wall, cpu, mem = results[cache, name][-1]
                        print(f"round {r}, {layers} layers, {cache}, {name}: {wall:.2f} s wall, {cpu:.2f} s cpu, "
                              f"{mem:.0f} MB", file=sys.stderr)
            size = du(src)
            for cache in args.cache:
                cp = statistics.median(w for w, _, _ in results[cache, "cp -r"])
                for name in tools:
                    runs = results[cache, name]
                    wall = statistics.median(w for w, _, _ in runs)
                    cpu = statistics.median(c for _, c, _ in runs)
                    rows.append(f"| {name} | {layers} | {size:.2f} | {cache} | {wall:.2f} | {wall / cp:.1f}× | "
                                f"{cpu:.2f} | {max(m for _, _, m in runs):.0f} |")
            shutil.rmtree(src.parent)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"\n{os.cpu_count()} cores; medians of {args.rounds} interleaved rounds; peak RssAnon is the max\n")
    print("| tool | layers | checkpoint GB | source | wall s | × cp -r | CPU s | peak RssAnon MB |")
    print("| --- | ---: | ---: | --- | ---: | ---: | ---: | ---: |")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
