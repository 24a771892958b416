"""`codellama-hf demo`: first contact, fully offline.

It writes a tiny checkpoint in Meta's download format with CodeLlama-7b-Instruct's real structure (its head
counts, one shard, rope theta 1e6, Meta's FFN rounding) and random weights, converts it, loads it (4-bit where
bitsandbytes works, else bfloat16), and runs one infilling and one Instruct chat turn through the pipelines.
With `meta_dir` the same steps run on a real Meta download. The random weights make the text gibberish: the
demo shows the path from Meta's files to generated text, not a model's skill.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import tempfile
import time
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .convert import convert_meta_checkpoint
from .convert.layout import Dims, ffn_dim
from .convert.meta_folder import open_meta_folder
from .convert.weight_map import expected_rules
from .errors import UserInputError
from .spm_model import read_spm_model
from .variants import VARIANTS, Variant, get_variant

DEMO_VARIANT = "CodeLlama-7b-Instruct"  # trained for infilling and chats in [INST] turns: both pipelines apply
DEMO_TOKENIZER = Path(__file__).with_name("demo_data") / "tokenizer.model"  # 512 pieces; demo_data/make_tokenizer.py
DEMO_HEAD_DIM = 8  # 32 heads of 8: width 256 instead of 4096
DEMO_LAYERS = 2  # instead of 32
# Meta's CodeLlama-7b params.json, width and depth aside (7b ships as one consolidated.00.pth).
DEMO_PARAMS = {"multiple_of": 256, "ffn_dim_multiplier": 1.0, "norm_eps": 1e-5, "rope_theta": 1_000_000}

# The gap from Meta's example_infilling.py, and a chat turn in the spirit of its example_instructions.py.
INFILL_CODE = 'def remove_non_ascii(s: str) -> str:\n    """ <FILL_ME>\n    return result\n'
CHAT = [{"role": "system", "content": "Provide answers in Python."},
        {"role": "user", "content": "Write a function that sorts a list of tuples by their second item."}]


@dataclass
class DemoResult:
    variant: str
    synthetic: bool  # random weights written by the demo, or a real Meta download
    loaded_as: str  # "4-bit nf4 (bitsandbytes), ..." or "bfloat16 (why not 4-bit)"
    infill: dict | None = None  # the code-infilling pipeline's answer; None where the variant does not infill
    chat: list[dict] | None = None  # the conversation with the assistant's turn; None for non-Instruct variants
    seconds: dict[str, float] = field(default_factory=dict)  # per step
    kept: Path | None = None  # the folder holding the files, when asked to keep them


def write_demo_checkpoint(folder, *, seed: int = 0) -> Path:
    """Write a Meta-format CodeLlama-7b-Instruct folder with random weights (seeded) into `folder`, a new or empty
    folder named anything; returns it. Files as in Meta's download: consolidated.00.pth, params.json,
    tokenizer.model, checklist.chk. Its embedding has one row per tokenizer piece, so every generated id decodes."""
    folder = Path(folder)
    if folder.exists() and (not folder.is_dir() or any(folder.iterdir())):
        raise UserInputError(f"{str(folder)!r} exists and is not an empty folder; pass a new or empty folder")
    preset = get_variant(DEMO_VARIANT)
    params = {"dim": preset.num_attention_heads * DEMO_HEAD_DIM, "n_layers": DEMO_LAYERS,
              "n_heads": preset.num_attention_heads, **DEMO_PARAMS}
    weights = _random_weights(params, vocab=_piece_count(DEMO_TOKENIZER), seed=seed)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        torch.save(weights, folder / "consolidated.00.pth")
        (folder / "params.json").write_text(json.dumps(params))
        shutil.copyfile(DEMO_TOKENIZER, folder / "tokenizer.model")
        lines = [f"{hashlib.md5((folder / n).read_bytes()).hexdigest()}  {n}"
                 for n in ("consolidated.00.pth", "params.json", "tokenizer.model")]
        (folder / "checklist.chk").write_text("\n".join(lines) + "\n")  # as Meta ships it, so --verify works
    except OSError as e:
        raise UserInputError(f"cannot write {str(folder)!r}: {e.strerror or e}; check free space and "
                             f"permissions") from None
    return folder


def make_demo_model(folder, *, seed: int = 0) -> Path:
    """The demo checkpoint, converted: writes `folder`/meta/CodeLlama-7b-Instruct (Meta format) and returns
    `folder`/hf/CodeLlama-7b-Instruct (a Hugging Face folder that from_pretrained and pipeline(...) load).
    The converter's warnings about the shrunk shapes are expected here and not shown."""
    folder = Path(folder)
    meta = write_demo_checkpoint(folder / "meta" / DEMO_VARIANT, seed=seed)
    with _collect_warnings():
        return convert_meta_checkpoint(meta, folder / "hf" / DEMO_VARIANT, quiet=True)


def _random_weights(params: dict, *, vocab: int, seed: int) -> dict[str, torch.Tensor]:
    """Meta-named bf16 tensors in Meta's save order, scaled by 1/sqrt(fan-in) so activations stay finite."""
    dim, heads = params["dim"], params["n_heads"]
    dims = Dims(dim=dim, n_layers=params["n_layers"], n_heads=heads, n_kv_heads=heads, head_dim=dim // heads,
                ffn_dim=ffn_dim(params), vocab=vocab, n_shards=1)
    g = torch.Generator().manual_seed(seed)
    weights = {}
    for name, rule in expected_rules(dims.n_layers).items():
        shape = tuple(getattr(dims, s) for s in rule.shape)
        t = torch.ones(shape) if len(shape) == 1 else torch.randn(shape, generator=g) / shape[1] ** 0.5
        weights[name] = t.to(torch.bfloat16)
    return weights


def _piece_count(model_file: Path) -> int:
    return len(read_spm_model(model_file).pieces)


def run_demo(*, keep=None, meta_dir=None, variant: str | None = None, max_new_tokens: int = 32, seed: int = 0,
             echo: Callable[[str], None] | None = print) -> DemoResult:
    """Write (or take, with `meta_dir`) a Meta checkpoint, convert it, load it and run the pipelines on it.

    keep: a new or empty folder to keep the files in; None works in a temporary folder that is removed at the end,
        also on an error or Ctrl-C. With keep, a failed run removes what it wrote there.
    meta_dir: a real Meta download folder (consolidated.NN.pth, params.json, tokenizer.model) instead of the
        synthetic checkpoint. variant: its preset name (default: the folder's name, as Meta names it).
    max_new_tokens: per generation. seed: of the synthetic weights. echo: where progress lines go (None: silent).
    Bad input raises UserInputError before anything is written.
    """
    say = echo or (lambda line: None)
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 1:
        raise UserInputError(f"max_new_tokens {max_new_tokens!r} is not a positive integer; pass e.g. 32")
    keep_dir = _check_keep(keep)
    if meta_dir is None:
        if variant is not None:
            raise UserInputError(f"variant {variant!r} applies to a real checkpoint only; pass --meta-dir with it, "
                                 f"or drop it (the demo's own checkpoint is {DEMO_VARIANT})")
        preset, source = get_variant(DEMO_VARIANT), None
    else:
        try:
            source = open_meta_folder(meta_dir).path
        except UserInputError as e:
            raise UserInputError(f"--meta-dir: {e}") from None
        preset = _variant_of(source, variant)

    if keep_dir is None:
        with tempfile.TemporaryDirectory(prefix="codellama-hf-demo-") as tmp:
            return _run(Path(tmp), preset, source, max_new_tokens, seed, say, kept=False)
    created = not keep_dir.exists()
    try:
        keep_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserInputError(f"cannot create the --keep folder {str(keep_dir)!r}: {e.strerror or e}; pass a folder "
                             f"you can write to") from None
    try:
        return _run(keep_dir, preset, source, max_new_tokens, seed, say, kept=True)
    except BaseException:
        _remove_written(keep_dir, created=created)
        raise


def _check_keep(keep) -> Path | None:
    if keep is None:
        return None
    path = Path(keep)
    if path.exists() and not path.is_dir():
        raise UserInputError(f"--keep {str(path)!r} is a file; pass a new or empty folder")
    if path.is_dir() and any(path.iterdir()):
        raise UserInputError(f"--keep folder {str(path)!r} is not empty; pass a new or empty folder, "
                             f"or delete its contents")
    return path


def _variant_of(source: Path, variant: str | None) -> Variant:
    name = variant or source.resolve().name
    try:
        return get_variant(name)
    except ValueError as e:
        if variant:
            raise UserInputError(f"{e}; fix --variant") from None
        raise UserInputError(f"the folder name {name!r} is not a variant name, as Meta names its folders; pass "
                             f"--variant NAME, one of: {', '.join(VARIANTS)}") from None


def _remove_written(root: Path, *, created: bool) -> None:
    if created:
        shutil.rmtree(root, ignore_errors=True)
        return
    for child in root.iterdir() if root.is_dir() else ():  # it was empty before the run
        shutil.rmtree(child, ignore_errors=True) if child.is_dir() else child.unlink(missing_ok=True)


def _run(root: Path, preset: Variant, source: Path | None, max_new_tokens: int, seed: int,
         say: Callable[[str], None], *, kept: bool) -> DemoResult:
    synthetic = source is None
    if synthetic:
        say(f"codellama-hf demo: a tiny {preset.name} with RANDOM weights (seed {seed}). It runs every real step, "
            f"from Meta's files to generated text, but the text it generates is gibberish by design.")
    else:
        say(f"codellama-hf demo: {preset.name} from {str(source)!r}")
    can_infill, can_chat = bool(preset.infilling), preset.chat_format != "none"
    steps = Steps(say, total=(1 if synthetic else 0) + 2 + can_infill + can_chat)
    result = DemoResult(variant=preset.name, synthetic=synthetic, loaded_as="", seconds=steps.seconds,
                        kept=root if kept else None)
    hf_dir = root / "hf" / preset.name

    if synthetic:
        with steps.step("write", "write a Meta-format checkpoint"):
            source = write_demo_checkpoint(root / "meta" / preset.name, seed=seed)
            for line in describe_checkpoint(source, preset):
                say(line)
    with steps.step("convert", "convert to a Hugging Face folder (convert_meta_checkpoint)"):
        with _collect_warnings() as notes:
            convert_meta_checkpoint(source, hf_dir, variant=preset.name, quiet=synthetic)
        say(f"      wrote {hf_dir}")
        if synthetic and notes:
            say("      the converter warned that the shapes differ from the full-size preset: expected, the demo "
                "shrinks width, depth and vocabulary")
        for note in notes if not synthetic else ():
            say(f"      converter warning: {note}")
    with steps.step("load", "load it (AutoModelForCausalLM.from_pretrained)"):
        with _progress_bars(enabled=not synthetic):  # a bar for 21 tiny tensors is noise
            model, tok, result.loaded_as = _load(hf_dir)
        say(f"      loaded as {result.loaded_as}, device {_devices(model)}")
    if can_infill:
        with steps.step("infill", 'infill through pipeline("code-infilling")'):
            result.infill = _infill(model, tok, max_new_tokens)
            say(_indent("code in", INFILL_CODE))
            say(_indent("middle generated", repr(result.infill["infill"])))
    if can_chat:
        with steps.step("chat", 'one chat turn through pipeline("text-generation")'):
            result.chat = _chat(model, tok, max_new_tokens)
            say(_indent("user", CHAT[-1]["content"]))
            say(_indent("assistant", repr(result.chat[-1]["content"])))
    for line in summary(result, source=source, max_new_tokens=max_new_tokens,
                        skipped=_skipped(preset, can_infill, can_chat)):
        say(line)
    return result


def _skipped(preset: Variant, can_infill: bool, can_chat: bool) -> list[str]:
    reasons = []
    if not can_infill:
        reasons.append(f"infilling skipped: {preset.name} was not trained for infilling")
    if not can_chat:
        reasons.append(f"chat skipped: {preset.name} is not an Instruct variant")
    return reasons


@contextmanager
def _collect_warnings():
    """The converter's warnings, as a list, instead of on stderr: the demo says them in its own words."""
    notes: list[str] = []

    class Collect(logging.Handler):
        def emit(self, record):
            notes.append(record.getMessage())

    handler, log = Collect(logging.WARNING), logging.getLogger("codellama_hf")
    log.addHandler(handler)
    propagate, log.propagate = log.propagate, False  # nor through a handler the caller set up on the root
    try:
        yield notes
    finally:
        log.removeHandler(handler)
        log.propagate = propagate


@contextmanager
def _progress_bars(*, enabled: bool):
    from transformers.utils import logging as hf_logging

    was = hf_logging.is_progress_bar_enabled()
    (hf_logging.enable_progress_bar if enabled else hf_logging.disable_progress_bar)()
    try:
        yield
    finally:
        (hf_logging.enable_progress_bar if was else hf_logging.disable_progress_bar)()


def _load(folder: Path):
    import importlib.util

    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(folder)
    if importlib.util.find_spec("bitsandbytes") is None:
        why = "bitsandbytes is not installed; pip install 'codellama-hf[bitsandbytes]' for 4-bit"
    else:
        from transformers import BitsAndBytesConfig

        try:
            quant = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                                       bnb_4bit_compute_dtype=torch.bfloat16)
            model = AutoModelForCausalLM.from_pretrained(folder, quantization_config=quant, dtype=torch.bfloat16,
                                                         device_map="auto")
            with torch.no_grad():  # bitsandbytes can import yet lack a kernel for this device: find out now
                model(torch.tensor([[tok.bos_token_id]], device=model.device))
            return model, tok, "4-bit nf4 (bitsandbytes), bfloat16 compute"
        except Exception as e:  # any failure of the optional 4-bit path falls back to bf16, saying why
            why = f"4-bit failed: {type(e).__name__}: {(str(e).strip().splitlines() or [''])[0][:120]}"
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.bfloat16, device_map="auto")
    return model, tok, f"bfloat16 ({why})"


def _devices(model) -> str:
    devices = sorted({str(d) for d in (getattr(model, "hf_device_map", None) or {}).values()})
    return ", ".join(devices) or str(model.device)


def _infill(model, tok, max_new_tokens: int) -> dict:
    from transformers import pipeline

    fill = pipeline("code-infilling", model=model, tokenizer=tok)
    return fill(INFILL_CODE, max_new_tokens=max_new_tokens)


def _chat(model, tok, max_new_tokens: int) -> list[dict]:
    from transformers import pipeline

    chat = pipeline("text-generation", model=model, tokenizer=tok)
    return chat(CHAT, max_new_tokens=max_new_tokens, do_sample=False)[0]["generated_text"]


def _indent(label: str, text: str) -> str:
    lines = text.rstrip("\n").splitlines() or [""]
    return "\n".join([f"      {label}: {lines[0]}"] + [f"        {ln}" for ln in lines[1:]])


# ----- what the demo says ----------------------------------------------------------------------------------------

class Steps:
    """Numbered, timed steps: '[2/5] title', the step's own lines, then 'done in 0.3 s'."""

    def __init__(self, say: Callable[[str], None], *, total: int):
        self.say, self.total, self.seconds = say, total, {}

    @contextmanager
    def step(self, key: str, title: str):
        self.say(f"[{len(self.seconds) + 1}/{self.total}] {title}")
        self.seconds[key] = 0.0
        start = time.perf_counter()
        yield
        self.seconds[key] = time.perf_counter() - start
        self.say(f"      done in {self.seconds[key]:.1f} s")


def describe_checkpoint(folder: Path, preset: Variant) -> list[str]:
    params = json.loads((folder / "params.json").read_text())
    files = ", ".join(f"{p.name} ({_size(p.stat().st_size)})" for p in sorted(folder.iterdir()))
    return [f"      wrote {folder}",
            f"      files: {files}",
            f"      structure kept from {preset.name}: {params['n_heads']} heads, {params['n_heads']} kv heads, "
            f"1 shard, rope theta {params['rope_theta']:,}, FFN width rounded up to a multiple of "
            f"{params['multiple_of']} ({ffn_dim(params)})",
            f"      shrunk: width {params['dim']} (not {preset.hidden_size}), {params['n_layers']} layers (not "
            f"{preset.num_hidden_layers}), {_piece_count(folder / 'tokenizer.model')} tokenizer pieces (not "
            f"{preset.vocab_size})"]


def summary(result: DemoResult, *, source: Path, max_new_tokens: int, skipped: list[str]) -> list[str]:
    weights = "random weights, so gibberish text" if result.synthetic else f"Meta's weights from {str(source)!r}"
    ran = [name for name, done in (("infilling", result.infill), ("chat", result.chat)) if done is not None]
    times = ", ".join(f"{k} {v:.1f}" for k, v in result.seconds.items())
    if result.kept is not None:
        files = f"kept in {result.kept}: " + (f"meta/{result.variant} (Meta format) and " if result.synthetic else "") \
            + f"hf/{result.variant} (converted; from_pretrained or pipeline(..., model=...) load it)"
    else:
        files = "removed (a temporary folder); pass --keep DIR to keep them"
    return ["", "summary",
            f"  model     {result.variant} ({weights})",
            f"  loaded    {result.loaded_as}",
            f"  ran       {' and '.join(ran) or 'no generation'}, at most {max_new_tokens} new tokens each"
            + "".join(f"; {s}" for s in skipped),
            f"  time      {sum(result.seconds.values()):.1f} s ({times}), after the torch/Transformers import",
            f"  files     {files}"]


def _size(n: int) -> str:
    return f"{n / 1e6:.1f} MB" if n >= 1e6 else f"{n / 1e3:.1f} kB" if n >= 1e3 else f"{n} B"
