"""The checkpoint's dimensions, and every output tensor checked against the shard shapes before a byte is written."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..errors import UserInputError
from .weight_map import IGNORED, Rule, expected_rules

FLOAT_DTYPES = (torch.bfloat16, torch.float16, torch.float32)


@dataclass(frozen=True)
class Dims:
    dim: int
    n_layers: int
    n_heads: int
    n_kv_heads: int
    head_dim: int
    ffn_dim: int
    vocab: int
    n_shards: int

    @property
    def q_dim(self) -> int:
        return self.n_heads * self.head_dim

    @property
    def kv_dim(self) -> int:
        return self.n_kv_heads * self.head_dim


@dataclass(frozen=True)
class OutTensor:
    meta_name: str
    hf_name: str
    shape: tuple[int, ...]
    split_dim: int | None
    rope_heads: int | None  # heads to permute (rows), or None


def ffn_dim(params: dict) -> int:
    """Meta's FeedForward width: 2/3 of 4*dim, times ffn_dim_multiplier, rounded up to multiple_of."""
    hidden = int(2 * 4 * params["dim"] / 3)
    if params["ffn_dim_multiplier"] is not None:
        hidden = int(params["ffn_dim_multiplier"] * hidden)
    return params["multiple_of"] * math.ceil(hidden / params["multiple_of"])


def dims_of(params: dict, shards: list[dict], names: list[str]) -> Dims:
    """The dimensions params.json states, checked for a model-parallel split that Meta's code can make."""
    n_shards = len(shards)
    dim, n_heads = params["dim"], params["n_heads"]
    n_kv = params["n_kv_heads"] or n_heads
    if dim % n_heads or (dim // n_heads) % 2:
        raise UserInputError(f"params.json: dim {dim} is not {n_heads} heads of an even width; params.json is wrong")
    if n_heads % n_kv:
        raise UserInputError(f"params.json: {n_heads} heads do not group into n_kv_heads {n_kv}; params.json is wrong")
    if n_kv % n_shards:
        raise UserInputError(f"{n_kv} kv heads cannot be split over {n_shards} shards ({', '.join(names)}); "
                             f"a shard is missing or extra")
    emb = shards[0].get("tok_embeddings.weight")
    if emb is None or emb.dim() != 2:
        raise UserInputError(f"{names[0]} has no 2-D tok_embeddings.weight; it is not a Meta Llama shard")
    vocab = emb.shape[0]
    if params["vocab_size"] > 0 and params["vocab_size"] != vocab:
        raise UserInputError(f"params.json says vocab_size {params['vocab_size']} but tok_embeddings.weight has "
                             f"{vocab} rows; params.json belongs to another model")
    return Dims(dim=dim, n_layers=params["n_layers"], n_heads=n_heads, n_kv_heads=n_kv, head_dim=dim // n_heads,
                ffn_dim=ffn_dim(params), vocab=vocab, n_shards=n_shards)


def plan_tensors(params: dict, shards: list[dict], names: list[str]) -> tuple[Dims, list[OutTensor]]:
    """Every output tensor, in Meta's save order, after checking each shard's names, shapes and dtypes."""
    dims = dims_of(params, shards, names)
    rules = expected_rules(dims.n_layers)
    for name, shard in zip(names, shards):
        _check_names(name, set(shard) - IGNORED, rules, dims)
    return dims, [_check_tensor(meta, rule, shards, names, dims) for meta, rule in rules.items()]


def _check_names(shard_name: str, got: set[str], rules: dict[str, Rule], dims: Dims) -> None:
    if missing := [n for n in rules if n not in got]:
        raise UserInputError(f"{shard_name} lacks {missing[0]} ({len(missing)} tensors missing); params.json says "
                             f"n_layers {dims.n_layers}: does it belong to another model?")
    if extra := sorted(got - rules.keys()):
        raise UserInputError(f"{shard_name} holds {extra[0]} ({len(extra)} unexpected tensors), which a "
                             f"{dims.n_layers}-layer Meta Llama checkpoint does not have; params.json belongs to "
                             f"another model?")


def _check_tensor(meta: str, rule: Rule, shards: list[dict], names: list[str], dims: Dims) -> OutTensor:
    full = tuple(getattr(dims, s) for s in rule.shape)
    part = list(full)
    if rule.split_dim is not None:
        part[rule.split_dim] = full[rule.split_dim] / dims.n_shards  # a float where it doesn't split evenly
    for name, shard in zip(names, shards):
        t = shard[meta]
        if t.dtype not in FLOAT_DTYPES:
            raise UserInputError(f"{name}: {meta} has dtype {t.dtype}, expected bfloat16, float16 or float32")
        if tuple(t.shape) != tuple(part):
            raise UserInputError(
                f"{name}: {meta} has shape {tuple(t.shape)}, but params.json (dim {dims.dim}, {dims.n_heads} heads, "
                f"{dims.n_kv_heads} kv heads, ffn {dims.ffn_dim}) split over {dims.n_shards} shard(s) needs "
                f"{_shape(part)}; params.json belongs to another model, or a shard is missing or extra")
    heads = getattr(dims, rule.rope_heads) if rule.rope_heads else None
    return OutTensor(meta_name=meta, hf_name=rule.hf_name, shape=full, split_dim=rule.split_dim, rope_heads=heads)


def _shape(dims: list) -> str:
    return "(" + ", ".join(str(int(d)) if d == int(d) else f"{d:.2f}" for d in dims) + ")"
