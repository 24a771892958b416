"""`codellama-hf`: the thin command-line front of codellama_hf.

It lives outside the `codellama_hf` package because importing that package registers the model with
Transformers (seconds of torch/transformers imports); `--help` and argument errors must not pay that.
Each command imports the library inside its handler, and questions that need no model (`variants`,
`estimate-memory NAME`) import only the torch-free `codellama_hf_core`.
"""

from __future__ import annotations

import argparse
import sys

PROG = "codellama-hf"


def _variants(args: argparse.Namespace) -> int:
    from codellama_hf_core.variants import PRESETS

    cols = ("name", "flavor", "hidden_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads",
            "intermediate_size", "vocab_size", "rope_theta", "max_position_embeddings", "infilling", "chat_format")
    print("\t".join(cols))
    for v in PRESETS:
        print("\t".join(str(getattr(v, c)) for c in cols))
    return 0


def _convert(args: argparse.Namespace) -> int:
    import logging

    handler = logging.StreamHandler(sys.stderr)  # the converter's warnings, e.g. what differs from the preset
    handler.setFormatter(logging.Formatter(f"{PROG} convert: warning: %(message)s"))
    logging.getLogger("codellama_hf").addHandler(handler)
    from codellama_hf.convert import convert_meta_checkpoint

    out = convert_meta_checkpoint(
        args.input_dir, args.output_dir, variant=args.variant, dtype=args.dtype, max_shard_size=args.max_shard_size,
        format=args.format, verify=args.verify, overwrite=args.overwrite, quiet=args.quiet)
    if not args.quiet:
        print(f"wrote {out}", file=sys.stderr)
    return 0


def _demo(args: argparse.Namespace) -> int:
    from codellama_hf.demo import run_demo

    run_demo(keep=args.keep, meta_dir=args.meta_dir, variant=args.variant, max_new_tokens=args.max_new_tokens,
             echo=lambda line: print(line, flush=True))
    return 0


def examples(*lines: str) -> dict:
    """add_parser/ArgumentParser keywords for a help text that ends in examples, laid out as written."""
    return {"epilog": "examples:\n" + "\n".join(f"  {line}" for line in lines),
            "formatter_class": argparse.RawDescriptionHelpFormatter}


def _estimate_memory(args: argparse.Namespace) -> int:
    import json
    import os

    target, options = args.variant, {}
    if os.path.isdir(target) or args.max_memory is not None:  # a folder's config or a device map: torch
        from codellama_hf.memory import estimate_memory

        options["max_memory"] = args.max_memory
        if os.path.isdir(target):
            from codellama_hf import CodeLlamaConfig

            target = CodeLlamaConfig.from_pretrained(target)
    else:
        from codellama_hf_core.memory import estimate_memory
    e = estimate_memory(target, dtype=args.dtype, quantization=args.quantization, context=args.context,
                        batch=args.batch, **options)
    print(json.dumps(e.to_json(), indent=2) if args.json else e.describe())
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROG, description="Meta's Code Llama in Hugging Face Transformers 5.",
                                     **examples(f"{PROG} demo                # offline first run: a tiny random model, "
                                                f"infilling and chat",
                                                f"{PROG} variants            # the 12 variants and their shapes",
                                                f"{PROG} estimate-memory CodeLlama-34b --quantization 4bit",
                                                f"{PROG} convert ~/codellama/CodeLlama-7b-Instruct "
                                                f"~/hf/CodeLlama-7b-Instruct",
                                                f"{PROG} COMMAND --help      # a command's options and examples"))
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("variants", help="list the 12 Code Llama variants and their exact shapes",
                       description="Print the 12 Code Llama variants and their exact shapes, tab-separated.",
                       **examples(f"{PROG} variants",
                                  f"{PROG} variants | column -t -s $'\\t'    # aligned columns"))
    p.set_defaults(run=_variants)

    p = sub.add_parser("convert", help="convert a Meta consolidated.*.pth folder to HF safetensors",
                       description="Convert Meta's download folder (consolidated.NN.pth, params.json, "
                                   "tokenizer.model)\nto a Hugging Face folder of safetensors shards.",
                       **examples(f"{PROG} convert ~/codellama/CodeLlama-7b-Instruct ~/hf/CodeLlama-7b-Instruct "
                                  f"--verify",
                                  f"{PROG} convert ~/codellama/CodeLlama-34b-Python ~/hf/CodeLlama-34b-Python-llama "
                                  f"--format llama",
                                  f"{PROG} convert ~/Downloads/my-copy ~/hf/CodeLlama-13b --variant CodeLlama-13b"))
    p.add_argument("input_dir", help="Meta's folder (consolidated.*.pth, params.json, tokenizer.model)")
    p.add_argument("output_dir", help="the HF folder to create")
    p.add_argument("--variant", help="preset name, e.g. CodeLlama-7b-Python (default: the input folder's name)")
    p.add_argument("--dtype", choices=("bfloat16", "float16", "float32"), default="bfloat16")
    p.add_argument("--max-shard-size", default="5GB", help="largest safetensors shard (default: %(default)s)")
    p.add_argument("--format", choices=("codellama", "llama"), default="codellama",
                   help="codellama: this package's model type; llama: stock Transformers Llama (default: %(default)s)")
    p.add_argument("--verify", action="store_true", help="check checklist.chk md5 sums first")
    p.add_argument("--overwrite", action="store_true", help="replace a non-empty OUTPUT_DIR")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(run=_convert)

    p = sub.add_parser(
        "estimate-memory", help="weights, KV cache and device map of a variant, before any download",
        description="Bytes of a variant's weights (exact; bitsandbytes' layout when quantized) and KV cache,\n"
                    "whether they fit common GPUs and this machine, and with --max-memory the device_map that\n"
                    "from_pretrained(device_map='auto') would make, planned on the meta device. No download.",
        **examples(f"{PROG} estimate-memory CodeLlama-34b --quantization 4bit --context 4096",
                   f"{PROG} estimate-memory CodeLlama-70b --max-memory 0=40GiB,1=40GiB,cpu=64GiB --json"))
    p.add_argument("variant", metavar="VARIANT",
                   help="a variant name (see `codellama-hf variants`) or a converted folder")
    p.add_argument("--dtype", choices=("bfloat16", "float16", "float32"), default="bfloat16",
                   help="weights' dtype; with --quantization, the compute dtype (default: %(default)s)")
    p.add_argument("--quantization", choices=("none", "8bit", "4bit"), default="none",
                   help="bitsandbytes: 8bit = LLM.int8, 4bit = nf4 with double quantization (default: %(default)s)")
    p.add_argument("--context", type=int, help="tokens per sequence for the KV cache (default: the variant's context)")
    p.add_argument("--batch", type=int, default=1, help="sequences at once (default: %(default)s)")
    p.add_argument("--max-memory", metavar="SPEC",
                   help="devices and budgets, e.g. 0=24GiB,1=24GiB,cpu=64GiB: also show device_map='auto''s split")
    p.add_argument("--json", action="store_true", help="print JSON (weights_bytes, kv_cache_bytes, total_bytes, ...)")
    p.set_defaults(run=_estimate_memory)

    p = sub.add_parser("demo", help="first contact, offline: convert, load and run a tiny random-weight model",
                       description="Write a tiny Meta-format checkpoint with CodeLlama-7b-Instruct's structure and\n"
                                   "random weights (so the generated text is gibberish by design), convert it,\n"
                                   "load it (4-bit where bitsandbytes works, else bfloat16), and run one infilling\n"
                                   "and one Instruct chat turn through the pipelines, timing each step. Offline.\n"
                                   "With --meta-dir, the same steps run on a real Meta download.",
                       **examples(f"{PROG} demo",
                                  f"{PROG} demo --keep demo-files          # keep the Meta and HF folders",
                                  f"{PROG} demo --meta-dir ~/codellama/CodeLlama-7b-Instruct --keep ~/hf-demo"))
    p.add_argument("--keep", metavar="DIR", help="a new or empty folder to keep the files in (default: a temporary "
                                                 "folder, removed at the end)")
    p.add_argument("--meta-dir", metavar="DIR", help="a real Meta download folder to run on instead (its conversion, "
                                                     "as large as the download, goes to --keep DIR or to a "
                                                     "temporary folder)")
    p.add_argument("--variant", help="with --meta-dir: its preset name (default: the folder's name)")
    p.add_argument("--max-new-tokens", type=int, default=32, metavar="N",
                   help="tokens to generate per step (default: %(default)s)")
    p.set_defaults(run=_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from codellama_hf_core.errors import UserInputError

    try:
        return args.run(args)
    except UserInputError as e:
        print(f"{PROG} {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{PROG} {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
