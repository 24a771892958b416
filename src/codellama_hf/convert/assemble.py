"""One output tensor built from its shard slices, as bounded row chunks: memory never scales with the tensor.

A dim-0 split is just the shards' rows one after another, so each slice streams through on its own (q and
k rows permuted per head on the way: a shard always holds whole heads). A dim-1 split interleaves the
shards within every row, so rows are concatenated a chunk at a time.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch

from ..errors import UserInputError
from .layout import OutTensor

CHUNK_BYTES = 32 << 20  # bounds the copy a permutation, a dtype cast or a dim-1 concatenation makes


def iter_chunks(t: OutTensor, shards: list[dict], dtype: torch.dtype, names: list[str]) -> Iterator[torch.Tensor]:
    """The bytes of output tensor `t` in row-major order, as contiguous `dtype` tensors of at most ~CHUNK_BYTES."""
    parts = [s[t.meta_name] for s in shards]
    if t.split_dim is None:
        for name, p in zip(names[1:], parts[1:]):
            if not torch.equal(p, parts[0]):
                raise UserInputError(f"{t.meta_name} differs between {names[0]} and {name}, yet every shard holds "
                                     f"the same copy: the shards come from different checkpoints")
        yield parts[0].to(dtype).contiguous()
    elif t.split_dim == 0:
        heads_per_shard = t.rope_heads // len(parts) if t.rope_heads else None
        for p in parts:
            yield from _row_chunks(p, dtype, heads_per_shard)
    else:
        rows = _rows_per_chunk(t.shape[1] * max(dtype.itemsize, parts[0].dtype.itemsize))
        for r in range(0, t.shape[0], rows):
            yield torch.cat([p[r:r + rows] for p in parts], dim=1).to(dtype)


def _row_chunks(p: torch.Tensor, dtype: torch.dtype, heads: int | None) -> Iterator[torch.Tensor]:
    rows = _rows_per_chunk(p.shape[1] * max(dtype.itemsize, p.dtype.itemsize))
    if heads:
        head_dim = p.shape[0] // heads
        rows = max(head_dim, rows - rows % head_dim)  # whole heads per chunk
    for r in range(0, p.shape[0], rows):
        chunk = p[r:r + rows]
        if heads:
            chunk = rope_pairs_to_halves(chunk, chunk.shape[0] // head_dim)
        yield chunk.to(dtype).contiguous()  # a view of the mmap, no copy, when nothing changes


def rope_pairs_to_halves(w: torch.Tensor, heads: int) -> torch.Tensor:
    """Reorder each head's rows from Meta's RoPE layout to HF's.

    Meta rotates interleaved pairs (rows 2i, 2i+1 form complex number i); HF's rotate_half pairs row i
    with row i + head_dim/2. Taking the even rows, then the odd rows, of each head maps one onto the other.
    """
    rows, cols = w.shape
    return w.reshape(heads, rows // heads // 2, 2, cols).transpose(1, 2).reshape(rows, cols)


def _rows_per_chunk(row_bytes: int) -> int:
    return max(1, CHUNK_BYTES // row_bytes)
