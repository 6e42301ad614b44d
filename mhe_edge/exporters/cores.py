"""Attention cores used while tracing: they emit fused ONNX ops instead of computing in PyTorch.

`mhe_core` emits one `mhe_edge.MHEAttentionAdd` or `MHEAttentionMul` node per layer;
`standard_core` emits the standard ONNX
`Attention` (opset 23) for MHA, MQA and GQA, in its 3-D form so no head transposes surround it.
"""

from __future__ import annotations

import math

import torch

from mhe_edge.contract import DOMAIN, DOMAIN_VERSION, OP_TYPES
from mhe_edge.models.attention import KVCache, SelfAttention, split_heads


def mhe_core(attn: SelfAttention, q, k, v, past: KVCache | None, attn_bias, causal: bool):
    B, T, d = q.shape  # shared projections: (B, T, d) each
    n = attn.n_heads
    if past is None:  # encoders: an empty single-head cache keeps one operator signature
        past = (split_heads(k, 1, d)[:, :, :0], split_heads(v, 1, d)[:, :, :0])  # (B, 1, 0, d)
    past_key, past_value = past
    if attn_bias is None:
        attn_bias = torch.zeros((), dtype=q.dtype)
    S = past_key.shape[2] + T
    e_q, e_k, e_v = attn.head_embeddings()
    output, present_key, present_value = torch.onnx.ops.symbolic_multi_out(
        f"{DOMAIN}::{OP_TYPES[attn.attention.removeprefix('mhe-')]}",
        [q, k, v, e_q, e_k, e_v, past_key, past_value, attn_bias],
        {"num_heads": n, "is_causal": int(causal)},
        dtypes=[q.dtype] * 3,
        shapes=[(B, T, n * d), (B, 1, S, d), (B, 1, S, d)],
        version=DOMAIN_VERSION,
    )
    return output, (present_key, present_value)


def standard_core(attn: SelfAttention, q, k, v, past: KVCache | None, attn_bias, causal: bool):
    past_key, past_value = past if past is not None else (None, None)
    if attn_bias is not None:
        # ONNX Runtime's CPU kernel wants the mask's query dimension spelled out, not broadcast.
        attn_bias = attn_bias.expand(-1, -1, q.shape[1], -1)  # (B, 1, T, S)
    output, present_key, present_value, _ = torch.onnx.ops.attention(
        q,
        k,
        v,  # (B, T, n*d), (B, T, g*d), (B, T, g*d)
        attn_mask=attn_bias,
        past_key=past_key,
        past_value=past_value,
        is_causal=causal,
        q_num_heads=attn.n_heads,
        kv_num_heads=attn.kv_heads,
        scale=1.0 / math.sqrt(attn.head_dim),
    )
    return output, (present_key, present_value)


def export_core(attn: SelfAttention, q, k, v, past, attn_bias, causal):
    core = mhe_core if attn.is_mhe else standard_core
    return core(attn, q, k, v, past, attn_bias, causal)
