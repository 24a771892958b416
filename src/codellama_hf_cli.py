"""`codellama-hf`: the thin command-line front of codellama_hf.

It lives outside the `codellama_hf` package because importing that package registers the model with
Transformers (seconds of torch/transformers imports); `--help` and argument errors must not pay that.
Each command imports the library inside its handler.
"""

from __future__ import annotations

import argparse
import sys

PROG = "codellama-hf"


def _variants(args: argparse.Namespace) -> int:
    from codellama_hf.variants import PRESETS

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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROG, description="Meta's Code Llama in Hugging Face Transformers 5.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("variants", help="list the 12 Code Llama variants and their exact shapes")
    p.set_defaults(run=_variants)

    p = sub.add_parser("convert", help="convert a Meta consolidated.*.pth folder to HF safetensors")
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
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from codellama_hf.errors import UserInputError

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
