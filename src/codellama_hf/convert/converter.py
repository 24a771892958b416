"""convert_meta_checkpoint: Meta's consolidated.NN.pth folder -> a Hugging Face folder, streamed and atomic."""

from __future__ import annotations

import glob
import logging
import math
import os
import re
import shutil
import sys
import tempfile
from pathlib import Path

import torch

from ..errors import UserInputError
from ..variants import resolve_variant
from . import hf_files
from .assemble import Scratch, iter_chunks
from .layout import OutTensor, plan_tensors
from .meta_folder import checksum_bytes, load_shard, open_meta_folder, verify_checksums
from .safetensors_writer import INDEX_NAME, Entry, file_names, index_json, split_into_files, write_file

logger = logging.getLogger(__name__)

DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}
FORMATS = ("codellama", "llama")
SIZE_UNITS = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12,
              "KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40}  # Transformers' "5GB" is 5 * 10**9


def convert_meta_checkpoint(input_dir, output_dir, *, variant: str | None = None, dtype="bfloat16",
                            max_shard_size: int | str = "5GB", format: str = "codellama", verify: bool = False,
                            overwrite: bool = False, quiet: bool = False) -> Path:
    """Convert Meta's download folder `input_dir` (consolidated.NN.pth, params.json, tokenizer.model) into an
    HF folder at `output_dir`, and return its path.

    variant: preset name (default: the input folder's name, as Meta names it, e.g. "CodeLlama-7b-Python").
    dtype: "bfloat16" | "float16" | "float32" (or the torch dtype), of the weights and in config.json.
    max_shard_size: largest safetensors file, bytes or a string like "5GB" / "500MiB".
    format: "codellama" (this package's model type) or "llama" (stock Transformers and other Llama readers).
    verify: check the md5 sums in checklist.chk first. overwrite: replace a non-empty `output_dir`.
    quiet: no progress bar on stderr.

    The folder is built beside `output_dir` and renamed into place at the end, so a failure or a kill
    never leaves a half-written folder there, and an existing one is untouched unless the run succeeds.
    """
    torch_dtype, dtype_name = _dtype(dtype)
    if format not in FORMATS:
        raise UserInputError(f"unknown format {format!r}; expected one of: {', '.join(FORMATS)}")
    max_bytes = parse_size(max_shard_size)
    folder = open_meta_folder(input_dir)
    out = _check_output(Path(output_dir), folder.path, overwrite=overwrite)
    preset = resolve_variant(folder.path, variant=variant)

    if verify:
        with _bar(checksum_bytes(folder), "verify md5", quiet) as bar:
            verify_checksums(folder, on_bytes=bar.update)
    names = [p.name for p in folder.shard_paths]
    shards = [load_shard(p) for p in folder.shard_paths]
    dims, tensors = plan_tensors(folder.params, shards, names)
    tok = hf_files.load_tokenizer(folder.path, chat_format=preset.chat_format)
    config = hf_files.build_config(preset.name, folder.params, dims, dtype_name,
                                   hf_files.tokenizer_fields(tok, dims.vocab))
    tok.model_max_length = config.max_position_embeddings  # the variant's context, not Transformers' "unlimited"

    need = sum(math.prod(t.shape) for t in tensors) * torch_dtype.itemsize
    tmp = _staging_folder(out, need)
    try:
        _write_weights(tmp, tensors, shards, names, torch_dtype, max_bytes, quiet)
        hf_files.write_config(config, tmp, format=format)
        hf_files.write_generation_config(config, tmp)
        hf_files.write_tokenizer(tok, folder.path, tmp, format=format)
        _publish(tmp, out)
    except OSError as e:  # a full disk, say: the user's to fix, not a bug
        shutil.rmtree(tmp, ignore_errors=True)
        raise UserInputError(f"cannot write {str(out)!r}: {e.strerror or e}; check free space (the weights need "
                             f"{need / 1e9:.1f} GB) and permissions") from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def _staging_folder(out: Path, need: int) -> Path:
    """A hidden sibling of `out` to build in: the same file system, so the final rename is atomic."""
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        free = shutil.disk_usage(out.parent).free
        if free < need:
            raise UserInputError(f"the weights need {need / 1e9:.1f} GB but {str(out.parent)!r} has "
                                 f"{free / 1e9:.1f} GB free; free some space or choose another output folder")
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
        os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp's 0700 would outlive the rename
        return tmp
    except OSError as e:
        raise UserInputError(f"cannot create a folder beside {str(out)!r}: {e.strerror or e}") from None


def _write_weights(tmp: Path, tensors: list[OutTensor], shards: list[dict], names: list[str],
                   dtype: torch.dtype, max_bytes: int, quiet: bool) -> None:
    by_name = {t.hf_name: t for t in tensors}
    entries = [Entry(t.hf_name, t.shape, dtype) for t in tensors]
    files = split_into_files(entries, max_bytes)
    fnames = file_names(len(files))
    scratch = Scratch()

    def chunks(e: Entry):
        return iter_chunks(by_name[e.name], shards, dtype, names, scratch)

    with _bar(sum(e.nbytes for e in entries), "convert", quiet) as bar:
        for fname, group in zip(fnames, files):
            write_file(tmp / fname, group, chunks, bar.update)
    (tmp / INDEX_NAME).write_text(index_json(files, fnames))


def _check_output(out: Path, input_dir: Path, *, overwrite: bool) -> Path:
    if out.exists() and not out.is_dir():
        raise UserInputError(f"output {str(out)!r} exists and is not a folder; pass a folder path")
    resolved, source = out.resolve(), input_dir.resolve()
    if resolved == source or resolved in source.parents:
        raise UserInputError(f"output {str(out)!r} would replace the input folder {str(input_dir)!r}; "
                             f"pass another output folder")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise UserInputError(f"output folder {str(out)!r} is not empty; pass --overwrite to replace it, "
                             f"or choose a new folder")
    stale = sorted(out.parent.glob(f".{glob.escape(out.name)}.partial-*")) if out.parent.is_dir() else []
    if stale:
        logger.warning("found %s beside %s: left by an interrupted conversion; delete it", stale[0].name, out)
    return out


def _publish(tmp: Path, out: Path) -> None:
    """Put the finished folder at `out`; the old one is renamed aside first and deleted only after."""
    if not out.exists():
        os.rename(tmp, out)
        return
    old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
    os.rename(out, old / out.name)
    os.rename(tmp, out)
    shutil.rmtree(old, ignore_errors=True)


def parse_size(size: int | str) -> int:
    if isinstance(size, int) and not isinstance(size, bool) and size > 0:
        return size
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([A-Za-z]*)\s*", str(size))
    if not m or m.group(2).upper() not in SIZE_UNITS or float(m.group(1)) <= 0:
        raise UserInputError(f"max shard size {size!r} is not a size; pass e.g. 5GB, 500MB, 2GiB or a byte count")
    return int(float(m.group(1)) * SIZE_UNITS[m.group(2).upper()])


def _dtype(dtype) -> tuple[torch.dtype, str]:
    for name, t in DTYPES.items():
        if dtype in (name, t):
            return t, name
    raise UserInputError(f"unknown dtype {dtype!r}; expected one of: {', '.join(DTYPES)}")


def _bar(total: int, desc: str, quiet: bool):
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="B", unit_scale=True, unit_divisor=1024, file=sys.stderr,
                disable=quiet, dynamic_ncols=True)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask

