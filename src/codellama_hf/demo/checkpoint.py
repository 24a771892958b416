"""The demo's checkpoint: Meta's download format, CodeLlama-7b-Instruct's real structure, random weights.

Its structure keeps the head counts, one shard, rope theta 1e6 and Meta's FFN rounding; width, depth and the
vocabulary shrink so it writes, converts and loads in seconds. The random weights make generated text gibberish.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from contextlib import contextmanager
from pathlib import Path

import torch

from ..convert import convert_meta_checkpoint
from ..convert.layout import Dims, ffn_dim
from ..convert.weight_map import expected_rules
from ..errors import UserInputError
from ..tokenization.spm_model import read_spm_model
from ..variants import get_variant

DEMO_VARIANT = "CodeLlama-7b-Instruct"  # trained for infilling and chats in [INST] turns: both pipelines apply
DEMO_TOKENIZER = Path(__file__).with_name("data") / "tokenizer.model"  # 512 pieces; data/make_tokenizer.py
DEMO_HEAD_DIM = 8  # 32 heads of 8: width 256 instead of 4096
DEMO_LAYERS = 2  # instead of 32
# Meta's CodeLlama-7b params.json, width and depth aside (7b ships as one consolidated.00.pth).
DEMO_PARAMS = {"multiple_of": 256, "ffn_dim_multiplier": 1.0, "norm_eps": 1e-5, "rope_theta": 1_000_000}

# The gap from Meta's example_infilling.py, and a chat turn in the spirit of its example_instructions.py.
INFILL_CODE = 'def remove_non_ascii(s: str) -> str:\n    """ <FILL_ME>\n    return result\n'
CHAT = [{"role": "system", "content": "Provide answers in Python."},
        {"role": "user", "content": "Write a function that sorts a list of tuples by their second item."}]


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
    weights = _random_weights(params, vocab=piece_count(DEMO_TOKENIZER), seed=seed)
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
    with collect_warnings():
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


def piece_count(model_file: Path) -> int:
    return len(read_spm_model(model_file).pieces)


@contextmanager
def collect_warnings():
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
