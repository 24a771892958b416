"""A streaming safetensors writer: every shape is known up front, so the header goes first, then the bytes in order.

The format (safetensors' spec): an 8-byte little-endian header length, a JSON header mapping each tensor
name to its dtype, shape and [begin, end) byte offsets into the data that follows, then the raw
little-endian bytes. The header is padded with spaces to a multiple of 8 so the data is aligned.
"""

from __future__ import annotations

import json
import math
import struct
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch

DTYPE_CODES = {torch.bfloat16: "BF16", torch.float16: "F16", torch.float32: "F32"}
INDEX_NAME = "model.safetensors.index.json"


@dataclass(frozen=True)
class Entry:
    name: str
    shape: tuple[int, ...]
    dtype: torch.dtype

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * self.dtype.itemsize


def split_into_files(entries: list[Entry], max_bytes: int) -> list[list[Entry]]:
    """Greedy, in order: a new file when the next tensor would pass max_bytes (a bigger tensor gets a file alone)."""
    files: list[list[Entry]] = [[]]
    size = 0
    for e in entries:
        if files[-1] and size + e.nbytes > max_bytes:
            files.append([])
            size = 0
        files[-1].append(e)
        size += e.nbytes
    return files


def file_names(n: int) -> list[str]:
    return [f"model-{i:05d}-of-{n:05d}.safetensors" for i in range(1, n + 1)]


def header_bytes(entries: list[Entry]) -> bytes:
    header, offset = {}, 0
    for e in entries:
        header[e.name] = {"dtype": DTYPE_CODES[e.dtype], "shape": list(e.shape),
                          "data_offsets": [offset, offset + e.nbytes]}
        offset += e.nbytes
    header["__metadata__"] = {"format": "pt"}  # Transformers refuses safetensors files without it
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    return struct.pack("<Q", len(raw)) + raw


def write_file(path: Path, entries: list[Entry], chunks: Callable[[Entry], Iterator[torch.Tensor]],
               on_bytes: Callable[[int], None] = lambda n: None) -> None:
    """Write one safetensors file; `chunks(entry)` yields the entry's bytes as contiguous tensors, in order."""
    if sys.byteorder != "little":
        raise RuntimeError("the streaming safetensors writer needs a little-endian machine")
    with open(path, "wb") as f:
        f.write(header_bytes(entries))
        for e in entries:
            written = 0
            for chunk in chunks(e):
                if chunk.dtype != e.dtype or not chunk.is_contiguous():
                    raise RuntimeError(f"internal error: a chunk of {e.name} is {chunk.dtype}, "
                                       f"contiguous={chunk.is_contiguous()}; expected contiguous {e.dtype}")
                data = chunk.reshape(-1).view(torch.uint8).numpy()
                f.write(data)  # straight from the (often memory-mapped) tensor: no bytes() copy
                written += data.nbytes
                on_bytes(data.nbytes)
                del chunk, data
            if written != e.nbytes:
                raise RuntimeError(f"internal error: wrote {written} bytes for {e.name}, its header says {e.nbytes}")


def index_json(files: list[list[Entry]], names: list[str]) -> str:
    weight_map = {e.name: fname for fname, entries in zip(names, files) for e in entries}
    total = sum(e.nbytes for entries in files for e in entries)
    return json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2) + "\n"
