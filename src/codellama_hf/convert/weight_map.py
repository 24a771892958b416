"""Meta's tensor names, their HF Llama names, their full shapes and how Meta's model parallelism split them.

Data, not code: one row per tensor. Rows are in the order Meta's `state_dict()` saves them, so the
converter reads each consolidated.NN.pth front to back.

Split dims come from fairscale's layers in Meta's model: ColumnParallelLinear (wq, wk, wv, w1, w3,
output) splits the output rows, dim 0; RowParallelLinear (wo, w2) splits the input columns, dim 1;
ParallelEmbedding (tok_embeddings) splits the embedding dimension, dim 1. Norms are replicated.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Rule:
    hf_name: str  # "{}" is the layer index
    shape: tuple[str, ...]  # full (unsplit) shape, in the symbols of layout.Dims
    split_dim: int | None  # the dim shards are concatenated on; None: replicated, every shard holds all of it
    rope_heads: str | None = None  # Dims field: heads whose rows go from Meta's interleaved RoPE pairs to HF's halves


TOP_BEFORE = {
    "tok_embeddings.weight": Rule("model.embed_tokens.weight", ("vocab", "dim"), 1),
}
LAYER = {  # "layers.{}." + key
    "attention.wq.weight": Rule("model.layers.{}.self_attn.q_proj.weight", ("q_dim", "dim"), 0, "n_heads"),
    "attention.wk.weight": Rule("model.layers.{}.self_attn.k_proj.weight", ("kv_dim", "dim"), 0, "n_kv_heads"),
    "attention.wv.weight": Rule("model.layers.{}.self_attn.v_proj.weight", ("kv_dim", "dim"), 0),
    "attention.wo.weight": Rule("model.layers.{}.self_attn.o_proj.weight", ("dim", "q_dim"), 1),
    "feed_forward.w1.weight": Rule("model.layers.{}.mlp.gate_proj.weight", ("ffn_dim", "dim"), 0),
    "feed_forward.w2.weight": Rule("model.layers.{}.mlp.down_proj.weight", ("dim", "ffn_dim"), 1),
    "feed_forward.w3.weight": Rule("model.layers.{}.mlp.up_proj.weight", ("ffn_dim", "dim"), 0),
    "attention_norm.weight": Rule("model.layers.{}.input_layernorm.weight", ("dim",), None),
    "ffn_norm.weight": Rule("model.layers.{}.post_attention_layernorm.weight", ("dim",), None),
}
TOP_AFTER = {
    "norm.weight": Rule("model.norm.weight", ("dim",), None),
    "output.weight": Rule("lm_head.weight", ("vocab", "dim"), 0),
}

# Older checkpoints carry RoPE's precomputed frequencies; HF recomputes them from rope_theta.
IGNORED = frozenset({"rope.freqs"})


def expected_rules(n_layers: int) -> dict[str, Rule]:
    """Every tensor a Meta checkpoint of `n_layers` layers holds, Meta name -> rule, in Meta's save order."""
    layers = {f"layers.{i}.{key}": Rule(r.hf_name.format(i), r.shape, r.split_dim, r.rope_heads)
              for i in range(n_layers) for key, r in LAYER.items()}
    return {**TOP_BEFORE, **layers, **TOP_AFTER}
