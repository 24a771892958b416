"""One output tensor built from its shard slices, as bounded row chunks: memory never scales with the tensor.

A dim-0 split is just the shards' rows one after another, so each slice streams through on its own (q and
k rows permuted per head on the way: a shard always holds whole heads). A dim-1 split interleaves the
shards within every row, so rows are gathered a chunk at a time.

Chunks that need a copy (a permutation, a dtype cast, a dim-1 gather) are built in one reused scratch
buffer: a fresh allocation per chunk would page-fault through new memory every time. So a chunk is valid
only until the next one is asked for; the writer writes each before asking.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import torch

from ..errors import UserInputError
from .layout import OutTensor

CHUNK_BYTES = 32 << 20  # bounds the scratch buffer and so the memory a conversion adds


class Scratch:
    def __init__(self):
        self._buf = torch.empty(0, dtype=torch.uint8)

    def get(self, shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
        n = math.prod(shape) * dtype.itemsize
        if self._buf.numel() < n:
            self._buf = torch.empty(n, dtype=torch.uint8)
        return self._buf[:n].view(dtype).view(shape)


def iter_chunks(t: OutTensor, shards: list[dict], dtype: torch.dtype, names: list[str],
                scratch: Scratch) -> Iterator[torch.Tensor]:
    """The bytes of output tensor `t` in row-major order, as contiguous `dtype` tensors of at most ~CHUNK_BYTES."""
    parts = [s[t.meta_name] for s in shards]
    if t.split_dim is None:
        for name, p in zip(names[1:], parts[1:]):
            if not torch.equal(p, parts[0]):
                raise UserInputError(f"{t.meta_name} differs between {names[0]} and {name}, yet every shard holds "
                                     f"the same copy: the shards come from different checkpoints")
        yield parts[0].to(dtype).contiguous()  # a norm: one row
    elif t.split_dim == 0:
        heads_per_shard = t.rope_heads // len(parts) if t.rope_heads else None
        for p in parts:
            yield from _row_chunks(p, dtype, heads_per_shard, scratch)
    else:
        rows = _rows_per_chunk(t.shape[1], dtype)
        for r in range(0, t.shape[0], rows):
            out = scratch.get((min(rows, t.shape[0] - r), t.shape[1]), dtype)
            col = 0
            for p in parts:
                out[:, col:col + p.shape[1]].copy_(p[r:r + rows])
                col += p.shape[1]
            yield out


def _row_chunks(p: torch.Tensor, dtype: torch.dtype, heads: int | None, scratch: Scratch) -> Iterator[torch.Tensor]:
    rows = _rows_per_chunk(p.shape[1], dtype)
    if heads:
        head_dim = p.shape[0] // heads
        rows = max(head_dim, rows - rows % head_dim)  # whole heads per chunk
    for r in range(0, p.shape[0], rows):
        chunk = p[r:r + rows]
        if heads:
            out = scratch.get(tuple(chunk.shape), dtype)
            rope_pairs_to_halves(chunk, chunk.shape[0] // head_dim, out=out)
            yield out
        elif chunk.dtype == dtype and chunk.is_contiguous():
            yield chunk  # a view of the memory-mapped shard: no copy at all
        else:
            yield scratch.get(tuple(chunk.shape), dtype).copy_(chunk)


def rope_pairs_to_halves(w: torch.Tensor, heads: int, *, out: torch.Tensor) -> torch.Tensor:
    """Reorder each head's rows from Meta's RoPE layout to HF's, into `out` (same shape, any float dtype).

    Meta rotates interleaved pairs (rows 2i, 2i+1 form complex number i); HF's rotate_half pairs row i
    with row i + head_dim/2. Taking the even rows, then the odd rows, of each head maps one onto the other.
    """
    rows, cols = w.shape
    out.view(heads, 2, rows // heads // 2, cols).copy_(w.reshape(heads, rows // heads // 2, 2, cols).transpose(1, 2))
    return out


def _rows_per_chunk(cols: int, dtype: torch.dtype) -> int:
    return max(1, CHUNK_BYTES // (cols * dtype.itemsize))
