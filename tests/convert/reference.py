"""An independent truth for the converter: Meta's Llama forward pass and Transformers' conversion math.

Written from Meta's architecture (facebookresearch/llama, codellama `model.py`), not from this package:
RoPE as a complex multiply on interleaved pairs, RMSNorm in float32, causal attention with
grouped-query heads, SwiGLU feed-forward. It runs on the Meta-named weights.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from tests.fixtures_convert import split_dim


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    xf = x.float()
    return (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)).type_as(x) * weight


def rope_complex(x: torch.Tensor, theta: float) -> torch.Tensor:
    """x: (batch, seq, heads, head_dim); pairs (2i, 2i+1) are one complex number, turned by position * freq_i."""
    _, seq, _, head_dim = x.shape
    freqs = 1.0 / theta ** (torch.arange(0, head_dim, 2)[: head_dim // 2].double() / head_dim)
    angles = torch.outer(torch.arange(seq).double(), freqs)
    cis = torch.polar(torch.ones_like(angles), angles).to(torch.complex64)  # (seq, head_dim/2)
    xc = torch.view_as_complex(x.float().reshape(*x.shape[:-1], -1, 2))
    return torch.view_as_real(xc * cis[None, :, None, :]).flatten(3).type_as(x)


def meta_forward(w: dict, params: dict, tokens: torch.Tensor) -> torch.Tensor:
    """Logits (float32) of Meta's Llama for `tokens` (batch, seq), from full Meta-named weights."""
    w = {k: v.float() for k, v in w.items()}
    dim, n_heads = params["dim"], params["n_heads"]
    n_kv = params.get("n_kv_heads") or n_heads
    hd, eps, theta = dim // n_heads, params["norm_eps"], params["rope_theta"]
    bsz, seq = tokens.shape
    mask = torch.full((seq, seq), float("-inf")).triu(1)
    h = w["tok_embeddings.weight"][tokens]
    for i in range(params["n_layers"]):
        p = f"layers.{i}."
        x = rms_norm(h, w[p + "attention_norm.weight"], eps)
        q = (x @ w[p + "attention.wq.weight"].T).view(bsz, seq, n_heads, hd)
        k = (x @ w[p + "attention.wk.weight"].T).view(bsz, seq, n_kv, hd)
        v = (x @ w[p + "attention.wv.weight"].T).view(bsz, seq, n_kv, hd)
        q, k = rope_complex(q, theta), rope_complex(k, theta)
        k = k.repeat_interleave(n_heads // n_kv, dim=2)  # each kv head serves a group of query heads
        v = v.repeat_interleave(n_heads // n_kv, dim=2)
        q, k, v = (t.transpose(1, 2) for t in (q, k, v))
        scores = q @ k.transpose(2, 3) / math.sqrt(hd) + mask
        att = F.softmax(scores.float(), dim=-1) @ v
        h = h + att.transpose(1, 2).reshape(bsz, seq, dim) @ w[p + "attention.wo.weight"].T
        x = rms_norm(h, w[p + "ffn_norm.weight"], eps)
        gate = F.silu(x @ w[p + "feed_forward.w1.weight"].T) * (x @ w[p + "feed_forward.w3.weight"].T)
        h = h + gate @ w[p + "feed_forward.w2.weight"].T
    return rms_norm(h, w["norm.weight"], eps) @ w["output.weight"].T


def transformers_conversion(shards: list[dict], params: dict) -> dict:
    """HF-named tensors as Transformers' convert_llama_weights_to_hf.py computes them: torch.cat of the
    shards, then q/k rows permuted with w.view(heads, dim1 // heads // 2, 2, dim2).transpose(1, 2)."""
    dim, n_heads = params["dim"], params["n_heads"]
    n_kv = params.get("n_kv_heads") or n_heads

    def cat(name):
        d = split_dim(name)
        return shards[0][name] if d is None else torch.cat([s[name] for s in shards], dim=d)

    def permute(w, heads):
        dim1, dim2 = w.shape
        return w.view(heads, dim1 // heads // 2, 2, dim2).transpose(1, 2).reshape(dim1, dim2)

    out = {"model.embed_tokens.weight": cat("tok_embeddings.weight"), "model.norm.weight": cat("norm.weight"),
           "lm_head.weight": cat("output.weight")}
    for i in range(params["n_layers"]):
        m, p = f"model.layers.{i}.", f"layers.{i}."
        out.update({
            m + "self_attn.q_proj.weight": permute(cat(p + "attention.wq.weight"), n_heads),
            m + "self_attn.k_proj.weight": permute(cat(p + "attention.wk.weight"), n_kv),
            m + "self_attn.v_proj.weight": cat(p + "attention.wv.weight"),
            m + "self_attn.o_proj.weight": cat(p + "attention.wo.weight"),
            m + "mlp.gate_proj.weight": cat(p + "feed_forward.w1.weight"),
            m + "mlp.down_proj.weight": cat(p + "feed_forward.w2.weight"),
            m + "mlp.up_proj.weight": cat(p + "feed_forward.w3.weight"),
            m + "input_layernorm.weight": cat(p + "attention_norm.weight"),
            m + "post_attention_layernorm.weight": cat(p + "ffn_norm.weight"),
        })
    assert dim == out["model.embed_tokens.weight"].shape[1]
    return out
