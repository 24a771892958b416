"""Meta's download folder: its files, params.json, checklist.chk, and shards loaded by mmap, weights only."""

from __future__ import annotations

import hashlib
import json
import logging
import pickle
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ..errors import UserInputError

logger = logging.getLogger(__name__)

SHARD_RE = re.compile(r"consolidated\.(\d{2})\.pth")
CHECKLIST = "checklist.chk"
PARAMS = "params.json"
TOKENIZER = "tokenizer.model"

# params.json key -> (accepted types, default). Required: a None default where None is not accepted. Meta's ModelArgs defaults where a key may be absent.
PARAM_KEYS: dict[str, tuple[tuple[type, ...], object]] = {
    "dim": ((int,), None),
    "n_layers": ((int,), None),
    "n_heads": ((int,), None),
    "n_kv_heads": ((int, type(None)), None),  # absent: as many kv heads as heads (7b, 13b)
    "multiple_of": ((int,), 256),
    "ffn_dim_multiplier": ((int, float, type(None)), None),
    "norm_eps": ((int, float), 1e-5),
    "rope_theta": ((int, float), 10000.0),
    "vocab_size": ((int,), -1),  # -1 or absent in Meta's files: the embedding's rows decide
}


@dataclass(frozen=True)
class MetaFolder:
    path: Path
    params: dict  # every PARAM_KEYS key, defaults filled in
    shard_paths: tuple[Path, ...]  # consolidated.00.pth, .01, ... in rank order
    checklist: dict[str, str] | None  # file name -> md5, when checklist.chk is there


def open_meta_folder(input_dir) -> MetaFolder:
    """Check that `input_dir` is a complete Meta download folder and read its small files."""
    path = Path(input_dir)
    if not path.is_dir():
        raise UserInputError(f"input folder {str(path)!r} does not exist or is not a folder; pass Meta's download "
                             f"folder, e.g. CodeLlama-7b/ with consolidated.00.pth and params.json")
    found = {int(m.group(1)): p for p in path.iterdir() if (m := SHARD_RE.fullmatch(p.name))}
    if not found or not (path / PARAMS).is_file():
        hint = " (it looks like a Hugging Face folder already)" if (path / "config.json").is_file() else ""
        raise UserInputError(f"{str(path)!r} is not a Meta checkpoint folder{hint}: it needs consolidated.NN.pth "
                             f"shards and {PARAMS}, as Meta's download.sh lays them out")
    if not (path / TOKENIZER).is_file():
        raise UserInputError(f"{TOKENIZER} is missing from {str(path)!r}; copy it from Meta's download "
                             f"(it sits beside the consolidated.NN.pth shards)")
    checklist = _read_checklist(path / CHECKLIST) if (path / CHECKLIST).is_file() else None
    if checklist is None:
        logger.warning("%s has no %s: cannot check that every shard is there beyond what the shapes tell",
                       path, CHECKLIST)
    else:
        _check_shards_against_checklist(found, checklist)
    missing = [f"consolidated.{i:02d}.pth" for i in range(max(found) + 1) if i not in found]
    if missing:
        raise UserInputError(f"shard {missing[0]} is missing from {str(path)!r} (found {len(found)} of "
                             f"{max(found) + 1}); re-download it")
    shards = tuple(found[i] for i in sorted(found))
    return MetaFolder(path=path, params=_read_params(path / PARAMS), shard_paths=shards, checklist=checklist)


def _check_shards_against_checklist(found: dict[int, Path], checklist: dict[str, str]) -> None:
    listed = {name for name in checklist if SHARD_RE.fullmatch(name)}
    if not listed:
        return
    on_disk = {p.name for p in found.values()}
    if missing := sorted(listed - on_disk):
        raise UserInputError(f"shard {missing[0]} is listed in {CHECKLIST} but missing; re-download it")
    if extra := sorted(on_disk - listed):
        raise UserInputError(f"shard {extra[0]} is not listed in {CHECKLIST}: an extra shard from another model? "
                             f"remove it from the folder")


def _read_checklist(path: Path) -> dict[str, str]:
    """`md5sum` output: '<32 hex>  <name>' per line ('*name' in binary mode, './name' from find)."""
    entries = {}
    for n, line in enumerate(_read_text(path, errors="replace").splitlines(), 1):
        if not line.strip():
            continue
        m = re.fullmatch(r"([0-9a-fA-F]{32}) [ *](?:\./)?(.+)", line.strip())
        if not m:
            raise UserInputError(f"{path} line {n} is not an md5sum line: {line.strip()[:80]!r}; "
                                 f"re-download {CHECKLIST} from Meta")
        entries[m.group(2)] = m.group(1).lower()
    return entries


def _read_params(path: Path) -> dict:
    try:
        raw = json.loads(_read_text(path))
    except (ValueError, UnicodeDecodeError) as e:
        raise UserInputError(f"{path} is not valid JSON ({e}); re-download it from Meta") from None
    if not isinstance(raw, dict):
        raise UserInputError(f"{path} holds {type(raw).__name__}, not a JSON object; re-download it from Meta")
    raw = raw.get("model", raw)  # some releases nest the arguments under "model"
    params = {}
    for key, (types, default) in PARAM_KEYS.items():
        if key not in raw:
            if default is None and type(None) not in types:
                raise UserInputError(f"{path} has no {key!r}; a Meta params.json holds dim, n_layers, n_heads, ...")
            params[key] = default
            continue
        value = raw[key]
        if isinstance(value, bool) or not isinstance(value, types):
            raise UserInputError(f"{path}: {key!r} is {value!r}, expected {' or '.join(t.__name__ for t in types)}")
        params[key] = value
    for key in ("dim", "n_layers", "n_heads", "multiple_of"):
        if params[key] <= 0:
            raise UserInputError(f"{path}: {key!r} is {params[key]!r}, expected a positive integer")
    return params


def _read_text(path: Path, **kw) -> str:
    try:
        return path.read_text(**kw)
    except OSError as e:
        raise UserInputError(f"cannot read {path}: {e.strerror or e}") from None


def verify_checksums(folder: MetaFolder, *, on_bytes: Callable[[int], None] = lambda n: None) -> None:
    """md5 of every file checklist.chk lists, read in blocks (never whole files in memory)."""
    if folder.checklist is None:
        raise UserInputError(f"--verify needs {CHECKLIST} in {str(folder.path)!r}; it is missing")
    buf = bytearray(8 << 20)
    view = memoryview(buf)
    for name, expected in folder.checklist.items():
        path = folder.path / name
        if not path.is_file():
            raise UserInputError(f"{name} is listed in {CHECKLIST} but missing from {str(folder.path)!r}")
        md5 = hashlib.md5()
        with open(path, "rb", buffering=0) as f:
            while n := f.readinto(buf):
                md5.update(view[:n])
                on_bytes(n)
        if md5.hexdigest() != expected:
            raise UserInputError(f"checksum mismatch for {name}: md5 {md5.hexdigest()}, {CHECKLIST} says {expected}; "
                                 f"the file is corrupt or incomplete, re-download it")


def checksum_bytes(folder: MetaFolder) -> int:
    return sum((folder.path / n).stat().st_size for n in (folder.checklist or {}) if (folder.path / n).is_file())


def load_shard(path: Path) -> dict:
    """A shard's tensors, memory-mapped (the bytes stay in the page cache), never running pickled code."""
    import torch

    try:
        state = torch.load(path, mmap=True, weights_only=True, map_location="cpu")
    except pickle.UnpicklingError as e:
        reason = next((ln.strip() for ln in str(e).splitlines() if "GLOBAL" in ln or "Unsupported" in ln), "")
        raise UserInputError(f"refusing to load {path.name}: its pickle holds code or objects that are not tensors "
                             f"({reason or 'weights_only load failed'}); Meta's shards hold tensors only, "
                             f"re-download it") from None
    except (RuntimeError, OSError, EOFError, ValueError, KeyError) as e:
        raise UserInputError(f"cannot read shard {path.name}: truncated or corrupt ({_first_line(e)}); "
                             f"re-download it (--verify checks checklist.chk)") from None
    if not isinstance(state, dict) or not all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                              for k, v in state.items()):
        raise UserInputError(f"{path.name} is not a Meta shard: expected a dict of named tensors, "
                             f"got {type(state).__name__}")
    return state


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return (text[0][:160] if text else type(e).__name__)
