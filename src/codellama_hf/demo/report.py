"""What `codellama-hf demo` says: numbered, timed steps, the checkpoint it wrote, and a closing summary."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from ..convert.layout import ffn_dim
from .checkpoint import piece_count
from ..variants import Variant


@dataclass
class DemoResult:
    variant: str
    synthetic: bool  # random weights written by the demo, or a real Meta download
    loaded_as: str  # "4-bit nf4 (bitsandbytes), ..." or "bfloat16 (why not 4-bit)"
    infill: dict | None = None  # the code-infilling pipeline's answer; None where the variant does not infill
    chat: list[dict] | None = None  # the conversation with the assistant's turn; None for non-Instruct variants
    seconds: dict[str, float] = field(default_factory=dict)  # per step
    kept: Path | None = None  # the folder holding the files, when asked to keep them


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
            f"{preset.num_hidden_layers}), {piece_count(folder / 'tokenizer.model')} tokenizer pieces (not "
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


def indent(label: str, text: str) -> str:
    lines = text.rstrip("\n").splitlines() or [""]
    return "\n".join([f"      {label}: {lines[0]}"] + [f"        {ln}" for ln in lines[1:]])
