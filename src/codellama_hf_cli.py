"""`codellama-hf`: the thin command-line front of codellama_hf.

It lives outside the `codellama_hf` package because importing that package registers the model with
Transformers (seconds of torch/transformers imports); `--help` and argument errors must not pay that.
Each command imports the library inside its handler, and questions that need no model (`variants`,
`estimate-memory NAME`) import only the torch-free `codellama_hf_core`.
"""

from __future__ import annotations

import argparse
import os
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


def _serving(*, http: bool = True):
    """The serving package, or a one-line error naming the extra it needs. The batch job (http=False) needs only
    pydantic of that extra: it imports no HTTP module."""
    try:
        import pydantic  # noqa: F401
        if http:
            import fastapi  # noqa: F401
            import uvicorn  # noqa: F401
    except ImportError as e:
        from codellama_hf.errors import UserInputError

        raise UserInputError(f"{e.name} is not installed; serving needs the serve extra: "
                             f"pip install 'codellama-hf[serve]'") from None
    import codellama_hf.serving as serving

    return serving


def _api_keys(args: argparse.Namespace) -> tuple[str, ...]:
    keys = list(args.api_key or [])
    if args.api_key_file:
        from codellama_hf.errors import UserInputError

        try:
            with open(args.api_key_file, encoding="utf-8") as f:
                keys += [line.strip() for line in f if line.strip() and not line.startswith("#")]
        except OSError as e:
            raise UserInputError(f"cannot read --api-key-file {args.api_key_file!r}: {e.strerror}") from None
        if not keys:
            raise UserInputError(f"--api-key-file {args.api_key_file!r} holds no key; write one key per line")
    return tuple(keys)


def _serve(args: argparse.Namespace) -> int:
    if args.headless:
        from codellama_hf.serving.engines.vllm import run_headless

        run_headless(args.model_dir, dtype=args.dtype, **vllm_options(args))
        return 0
    serving = _serving()
    keys = _api_keys(args)
    if args.host not in ("127.0.0.1", "localhost", "::1") and not keys:
        print(f"{PROG} serve: warning: listening on {args.host} with no --api-key: anyone who can reach port "
              f"{args.port} can use the model", file=sys.stderr)
    options = serving.ServeOptions(api_keys=keys, cors_origins=tuple(args.cors_origins or ()),
                                   max_body_bytes=args.max_body_bytes, allowed_hosts=tuple(args.allowed_hosts or ()),
                                   openapi=not args.no_openapi)
    stopped_by = serving.serve(
        args.model_dir, host=args.host, port=args.port, options=options, log_level=args.log_level, dtype=args.dtype,
        quantization=args.quantization, device_map=args.device_map, engine=args.engine, max_queue=args.max_queue,
        max_batch_tokens=args.max_batch_tokens, kv_cache_tokens=args.kv_cache_tokens,
        max_concurrent=args.max_concurrent, stall_timeout=args.stall_timeout, shutdown_grace=args.shutdown_grace,
        model_id=args.model_name, vllm_options=vllm_options(args))
    if not stopped_by:
        return 0
    # Stopped by a signal after a clean shutdown: every response went out and the engine stopped. The interpreter's
    # own teardown (torch's, in C) then took 3 s more on a busy 2-core machine, past --shutdown-grace + 2 s; it has
    # nothing left to do for a server process. The exit status stays the shell's convention (130 for Ctrl-C).
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(128 + stopped_by)


def _generate(args: argparse.Namespace) -> int:
    serving = _serving(http=False)
    load_options = dict(dtype=args.dtype, quantization=args.quantization, device_map=args.device_map,
                        engine=args.engine, max_queue=max(args.concurrency, 1), max_batch_tokens=args.max_batch_tokens,
                        kv_cache_tokens=args.kv_cache_tokens, max_concurrent=args.max_concurrent,
                        vllm_options=vllm_options(args))
    if args.ray is not None:  # the only path that imports Ray
        from codellama_hf.serving.batch_ray import run_batch_ray

        s = run_batch_ray(args.model_dir, args.input, args.output, load_options=load_options,
                          address=args.ray or None, replicas=args.ray_replicas,
                          cpus_per_replica=args.ray_cpus_per_replica, gpus_per_replica=args.ray_gpus_per_replica,
                          node_ip_address=args.ray_node_ip, default_max_new_tokens=args.max_new_tokens,
                          concurrency=args.concurrency, quiet=args.quiet)
    else:
        service = serving.load_service(args.model_dir, **load_options)
        try:
            s = serving.run_batch(service, args.input, args.output, default_max_new_tokens=args.max_new_tokens,
                                  concurrency=args.concurrency, quiet=args.quiet)
        finally:
            service.engine.stop()
    if not args.quiet:
        resumed = f"; {s.skipped} lines were already there" if s.skipped else ""
        nodes = (f"; {len(s.nodes)} Ray nodes answered (" + ", ".join(f"node {node[:12]}: {n} lines"
                                                               for node, n in sorted(s.nodes.items())) + ")"
                 if s.nodes else "")
        print(f"wrote {s.written} lines to {args.output} ({s.errors} errors), {s.tokens} tokens in {s.seconds:.1f} s "
              f"({s.tokens / max(s.seconds, 1e-9):.1f} tokens/s){resumed}{nodes}", file=sys.stderr)
    return 0  # bad lines are records in the output, not a failed job


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


def add_model_options(p: argparse.ArgumentParser) -> None:
    """How `serve` and `generate` load the model and run the engine."""
    p.add_argument("--dtype", choices=("auto", "bfloat16", "float16", "float32"), default="auto",
                   help="weights' dtype; auto = bfloat16 on a GPU, float32 on CPU (default: %(default)s)")
    p.add_argument("--quantization", choices=("none", "8bit", "4bit"), default="none",
                   help="bitsandbytes quantization (default: %(default)s)")
    p.add_argument("--device-map", metavar="MAP", help="from_pretrained's device_map, e.g. cuda:1 or auto "
                                                       "(default: the GPU if there is one, else cpu)")
    p.add_argument("--engine", choices=("auto", "vllm", "continuous", "eager"), default="auto",
                   help="auto (default): vllm where vLLM is installed and supports the device, else continuous; "
                        "vllm: vLLM's async engine, which loads the folder itself (docs/scaling.md); continuous: "
                        "Transformers' continuous batching; eager: one generate() at a time")
    p.add_argument("--max-batch-tokens", type=int, metavar="N",
                   help="tokens per continuous-batching step (default: Transformers' choice)")
    p.add_argument("--max-concurrent", type=int, default=4, metavar="N",
                   help="full-context sequences the KV cache holds at once: the default cache is N x the model's "
                        "context, capped by free memory (default: %(default)s)")
    p.add_argument("--kv-cache-tokens", type=int, metavar="N",
                   help="size of the paged KV cache in tokens, instead of --max-concurrent's; also the longest "
                        "prompt + answer; refused at start if it does not fit in free memory")
    v = p.add_argument_group("vLLM (--engine vllm): parallelism, passed to vLLM's engine arguments")
    for flag, kind, text in VLLM_OPTIONS:
        v.add_argument(flag, type=kind, metavar="N" if kind is int else flag.split("-")[-1].upper(), help=text)
    v.add_argument("--enforce-eager", action="store_true", default=None,
                   help="no CUDA graphs / compilation: starts faster, runs slower")


# vLLM's engine arguments that pass through as they are named there (vllm.engine.arg_utils.EngineArgs)
VLLM_OPTIONS = [("--tensor-parallel-size", int, "GPUs (or CPU ranks) per model replica that split each layer"),
                ("--pipeline-parallel-size", int, "stages that split the layers"),
                ("--data-parallel-size", int, "model replicas"),
                ("--nnodes", int, "machines one replica spans (multi-node without Ray); run vLLM's headless "
                                  "workers on the others (docs/scaling.md)"),
                ("--node-rank", int, "this machine's rank among --nnodes (0 serves)"),
                ("--master-addr", str, "the rank-0 machine's address, for --nnodes > 1"),
                ("--master-port", int, "the rank-0 machine's port, for --nnodes > 1"),
                ("--distributed-executor-backend", str, "mp (default on one machine) or ray (a Ray cluster)")]


def vllm_options(args: argparse.Namespace) -> dict:
    """The vLLM options given on the command line, as AsyncEngineArgs fields."""
    names = [flag[2:].replace("-", "_") for flag, _, _ in VLLM_OPTIONS] + ["enforce_eager"]
    return {n: getattr(args, n) for n in names if getattr(args, n, None) is not None}


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

    p = sub.add_parser(
        "serve", help="serve a converted folder over HTTP: OpenAI, llama.cpp, TGI, Ollama and the model card's /score",
        description="Serve MODEL_DIR (a `codellama-hf convert` output) to editors and clients: OpenAI\n"
                    "/v1/completions (suffix = infilling), /v1/chat/completions, /v1/models; llama.cpp /infill and\n"
                    "/completion; TGI /, /generate and /generate_stream; Ollama /api/generate (suffix = infilling),\n"
                    "/api/chat, /api/tags, /api/show, /api/version; the model card's /score; /health.\n"
                    "Prompts are Meta's exact ids. Needs the serve extra: pip install 'codellama-hf[serve]'.\n"
                    "See docs/serving.md for each endpoint and editor.",
        **examples(f"{PROG} serve ~/hf/CodeLlama-7b-Instruct",
                   f"{PROG} serve ~/hf/CodeLlama-13b --port 8012 --dtype bfloat16     # llama.vim's default port",
                   f"{PROG} serve ~/hf/CodeLlama-34b --quantization 4bit --api-key-file ~/.codellama-keys",
                   f"{PROG} serve ~/hf/CodeLlama-7b --host 0.0.0.0 --api-key \"$KEY\" --cors-origins localhost",
                   f"{PROG} serve ~/hf/CodeLlama-70b-Instruct --engine vllm --tensor-parallel-size 4  # 4 GPUs"))
    p.add_argument("model_dir", metavar="MODEL_DIR", help="a converted folder (config.json, safetensors, tokenizer)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default: %(default)s, this machine "
                                                       "only)")
    p.add_argument("--port", type=int, default=8080, help="(default: %(default)s)")
    add_model_options(p)
    p.add_argument("--max-queue", type=int, default=256, metavar="N",
                   help="requests queued or running at once; more get 429 with Retry-After (default: %(default)s)")
    p.add_argument("--api-key", action="append", metavar="KEY",
                   help="require 'Authorization: Bearer KEY' or 'X-Api-Key: KEY' on every endpoint but /health; "
                        "repeat for several keys")
    p.add_argument("--api-key-file", metavar="PATH", help="keys from a file, one a line (keeps them out of `ps`)")
    p.add_argument("--cors-origins", action="append", metavar="ORIGIN",
                   help="let web pages from ORIGIN call the server (off by default); 'localhost' admits localhost, "
                        "127.0.0.1 and [::1] on any port; repeatable")
    p.add_argument("--max-body-bytes", type=int, default=4 * 2**20, metavar="N",
                   help="larger request bodies get 413 (default: %(default)s)")
    p.add_argument("--allowed-hosts", action="append", metavar="NAME",
                   help="on a loopback address, admit this Host name besides localhost, 127.0.0.1 and [::1] (others "
                        "get 403, against DNS rebinding); '*' admits any; repeatable")
    p.add_argument("--no-openapi", action="store_true", help="do not serve /openapi.json")
    p.add_argument("--model-name", metavar="NAME", help="the id /v1/models reports (default: the variant)")
    p.add_argument("--stall-timeout", type=float, default=600.0, metavar="SECONDS",
                   help="a request that gets no new token for this long (its first included) fails with 504 and "
                        "frees its slot (default: %(default)s)")
    p.add_argument("--shutdown-grace", type=float, default=10.0, metavar="SECONDS",
                   help="on SIGINT/SIGTERM, running requests get this long to finish; then each ends with its "
                        "final event (finish_reason length) (default: %(default)s)")
    p.add_argument("--log-level", choices=("critical", "error", "warning", "info", "debug"), default="info")
    p.add_argument("--headless", action="store_true",
                   help="with --engine vllm --nnodes N --node-rank R (R >= 1): run this machine's vLLM workers "
                        "only, joined to --master-addr; no HTTP (docs/scaling.md)")
    p.set_defaults(run=_serve)

    p = sub.add_parser(
        "generate", help="batch generation: a JSONL file of requests in, a JSONL file of answers out",
        description="The model card's batch endpoint. Each line of IN.jsonl is the model card's input_data\n"
                    "({\"input_string\": [...], \"parameters\": {...}}), an infilling request ({\"prefix\", \"suffix\"})\n"
                    "or a prompt ({\"prompt\"}), with optional \"parameters\". OUT.jsonl gets one line per input, in\n"
                    "order: {\"line\": N, \"output\": ...} or {\"line\": N, \"error\": ...}. A rerun resumes after the\n"
                    "lines already written. Runs on continuous batching, as the server does, or with --ray over\n"
                    "engine replicas on a Ray cluster (the ray extra). Needs the serve extra.",
        **examples(f"{PROG} generate --input requests.jsonl --output answers.jsonl ~/hf/CodeLlama-7b",
                   f"{PROG} generate --input gaps.jsonl --output middles.jsonl --max-new-tokens 64 ~/hf/CodeLlama-13b",
                   f"{PROG} generate --ray --input requests.jsonl --output answers.jsonl ~/hf/CodeLlama-7b   "
                   f"# a local Ray instance",
                   f"{PROG} generate --ray auto --ray-gpus-per-replica 1 --input /shared/in.jsonl --output out.jsonl "
                   f"/shared/hf/CodeLlama-13b"))
    p.add_argument("model_dir", metavar="MODEL_DIR", help="a converted folder")
    p.add_argument("--input", required=True, metavar="IN.jsonl", help="one JSON request per line")
    p.add_argument("--output", required=True, metavar="OUT.jsonl", help="answers, appended to (resumed) if present")
    p.add_argument("--max-new-tokens", type=int, default=128, metavar="N",
                   help="for lines whose parameters do not say (default: %(default)s)")
    p.add_argument("--concurrency", type=int, default=64, metavar="N",
                   help="requests in the engine at once (default: %(default)s)")
    add_model_options(p)
    g = p.add_argument_group("Ray (needs the ray extra: pip install 'codellama-hf[ray]'; docs/serving.md)")
    g.add_argument("--ray", nargs="?", const="", metavar="ADDRESS",
                   help="run the job as Ray Data map_batches over replicas of the engine; ADDRESS omitted: a local Ray "
                        "instance for this job; 'auto', host:port or ray://host:port: a running cluster, where "
                        "MODEL_DIR must be at the same path on every node (write --ray=ADDRESS, or put --ray before "
                        "another option, so that MODEL_DIR is not taken for ADDRESS)")
    g.add_argument("--ray-replicas", type=int, metavar="N",
                   help="engine replicas, one actor each (default: as many as the cluster's CPUs and GPUs hold)")
    g.add_argument("--ray-cpus-per-replica", type=float, default=1.0, metavar="X",
                   help="logical CPUs each replica claims; fractions allowed (default: %(default)s)")
    g.add_argument("--ray-gpus-per-replica", type=float, metavar="X",
                   help="GPUs each replica claims; fractions allowed (default: 1 where the cluster has GPUs, else 0)")
    g.add_argument("--ray-node-ip", metavar="IP",
                   help="this machine's address as a Ray node, e.g. 127.0.0.2 where Ray's guess of the network "
                        "address hangs (Ray rewrites 127.0.0.1 to its guess; default: Ray's guess)")
    p.add_argument("--quiet", action="store_true", help="no progress bar and no summary")
    p.set_defaults(run=_generate)
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
