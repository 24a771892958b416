"""The demo's runner: the steps of `codellama-hf demo`, in order, on the demo's checkpoint or a real Meta folder."""

from __future__ import annotations

import logging
import shutil
import sys
import tempfile
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path

import torch

from ..convert import convert_meta_checkpoint
from ..convert.meta_folder import open_meta_folder
from .checkpoint import CHAT, DEMO_VARIANT, INFILL_CODE, collect_warnings, write_demo_checkpoint
from .report import DemoResult, Steps, describe_checkpoint, indent, summary
from ..errors import UserInputError
from ..quantization import bitsandbytes_config
from ..variants import Variant, get_variant, resolve_variant


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
        preset = resolve_variant(source, variant=variant)

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
        with collect_warnings() as notes:
            convert_meta_checkpoint(source, hf_dir, variant=preset.name, quiet=synthetic)
        say(f"      wrote {hf_dir}")
        if synthetic and notes:
            say("      the converter warned that the shapes differ from the full-size preset: expected, the demo "
                "shrinks width, depth and vocabulary")
        for note in notes if not synthetic else ():
            say(f"      converter warning: {note}")
    with steps.step("load", "load it (AutoModelForCausalLM.from_pretrained)"):
        with _progress_bars(enabled=not synthetic), _optional_kernel_notice() as notice:
            model, tok, result.loaded_as = _load(hf_dir)  # a bar for 21 tiny tensors is noise
        say(f"      loaded as {result.loaded_as}, device {_devices(model)}")
        for line in notice:
            say(line)
    if can_infill:
        with steps.step("infill", 'infill through pipeline("code-infilling")'):
            result.infill = _infill(model, tok, max_new_tokens)
            say(indent("code in", INFILL_CODE))
            say(indent("middle generated", repr(result.infill["infill"])))
    if can_chat:
        with steps.step("chat", 'one chat turn through pipeline("text-generation")'):
            result.chat = _chat(model, tok, max_new_tokens)
            say(indent("user", CHAT[-1]["content"]))
            say(indent("assistant", repr(result.chat[-1]["content"])))
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
def _progress_bars(*, enabled: bool):
    from transformers.utils import logging as hf_logging

    was = hf_logging.is_progress_bar_enabled()
    (hf_logging.enable_progress_bar if enabled else hf_logging.disable_progress_bar)()
    try:
        yield
    finally:
        (hf_logging.enable_progress_bar if was else hf_logging.disable_progress_bar)()


# Loggers whose lines during the demo's 4-bit load are about bitsandbytes' optional CPU kernel: bitsandbytes' CPU
# backend asks `kernels` for it when imported (on AVX512-BF16 CPUs), and `kernels` reports on its hub check. Held back
# by logger, not by wording, and replaced by one line of ours only when bitsandbytes' own state says it looked for the
# kernel; otherwise they pass through untouched.
OPTIONAL_KERNEL_LOGGERS = ("bitsandbytes.backends.cpu", "kernels")


def optional_kernel_line(state: str | None, *, kernels_installed: bool) -> str | None:
    """The demo's line about bitsandbytes' optional CPU kernel, from `_compat.bnb_optional_cpu_kernel()`'s state."""
    if state == "loaded":
        return ("      bitsandbytes runs its optional faster CPU 4-bit kernel, fetched from the hub through the "
                "`kernels` package (docs/big-models.md)")
    if state != "missing":
        return None
    why = ("the `kernels` package is installed but did not deliver it (offline, or the hub or its trust check "
           "refused)" if kernels_installed else "through the `kernels` package, not installed here")
    return (f"      bitsandbytes runs its built-in CPU 4-bit kernel: its optional faster one comes from the hub {why} "
            f"(docs/big-models.md); same model, other speed")


@contextmanager
def _optional_kernel_notice():
    """Hold back what the optional-kernel loggers say; the list gets the line that explains it, if one does."""
    from .. import _compat

    held: list[logging.LogRecord] = []
    hold = logging.Handler()
    hold.emit = held.append
    saved = {}
    for name in OPTIONAL_KERNEL_LOGGERS:  # children (created now or during the load) propagate to these, and stop
        log = logging.getLogger(name)
        saved[name] = (log.handlers, log.propagate)
        log.handlers, log.propagate = [hold], False
    notice: list[str] = []
    try:
        yield notice
    finally:
        for name, (handlers, propagate) in saved.items():
            log = logging.getLogger(name)
            log.handlers, log.propagate = handlers, propagate
        line = optional_kernel_line(_compat.bnb_optional_cpu_kernel() if "bitsandbytes" in sys.modules else None,
                                    kernels_installed=_importable("kernels"))
        if line is not None:
            notice.append(line)
        else:  # nothing of ours explains them: let them through as they were
            for record in held:
                logging.getLogger(record.name).handle(record)


def _importable(name: str) -> bool:
    import importlib.util

    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):  # ValueError: sys.modules holds None for it (import blocked)
        return False


def _load(folder: Path):
    import importlib.util

    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(folder)
    if importlib.util.find_spec("bitsandbytes") is None:
        why = "bitsandbytes is not installed; pip install 'codellama-hf[bitsandbytes]' for 4-bit"
    else:
        try:
            quant = bitsandbytes_config("4bit", compute_dtype=torch.bfloat16)
            model = AutoModelForCausalLM.from_pretrained(folder, quantization_config=quant, dtype=torch.bfloat16,
                                                         device_map="auto")
            with torch.no_grad():  # bitsandbytes can import yet lack a kernel for this device: find out now
                model(torch.tensor([[tok.bos_token_id]], device=model.device))
            return model, tok, "4-bit nf4 (bitsandbytes), double quantization, bfloat16 compute"
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
