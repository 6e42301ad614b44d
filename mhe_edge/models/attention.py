"""Self-attention for every kind mhe-edge knows: MHA, MQA, GQA, MHE-ADD and MHE-MUL.

The module projects (and, with RoPE, rotates the projections: for MHE the *shared* query and key, before
any head embedding, which keeps MHE exactly foldable) and then hands the projections to an *attention
core*, which concatenates the cache, forms the heads and applies softmax attention. The reference
core below computes MHE per head,
exactly as the paper defines it (no folding). The exporter swaps in a core that emits ONNX ops instead
(see `use_attention_core`), so the projections, shapes and cache handling exist once.
"""

from __future__ import annotations

import contextlib
import contextvars
import math
from collections.abc import Callable, Iterator

import torch
import torch.nn.functional as F
from torch import nn

from mhe_edge.config import ModelConfig

KVCache = tuple[torch.Tensor, torch.Tensor]  # keys, values: (B, kv_heads, T_total, head_dim) each


class SelfAttention(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.attention = config.attention
        self.n_heads = config.n_heads
        self.kv_heads = config.kv_heads
        self.head_dim = config.head_dim
        self.is_mhe = config.is_mhe
        # MHE-MUL with RoPE may tie E_Q and E_K within each rotation pair (j, j + d/2): stored (n, d/2)
        self.pair_tied = config.rope_pair_tied_embeddings
        n, g, d = self.n_heads, self.kv_heads, self.head_dim
        q_width = d if self.is_mhe else n * d  # MHE shares one projection among all heads
        self.q_heads = 1 if self.is_mhe else n  # heads in q_proj's output (what RoPE rotates)
        self.q_proj = nn.Linear(config.d_model, q_width, bias=config.qkv_bias)
        self.k_proj = nn.Linear(config.d_model, g * d, bias=config.qkv_bias)
        self.v_proj = nn.Linear(config.d_model, g * d, bias=config.qkv_bias)
        self.out_proj = nn.Linear(n * d, config.d_model, bias=config.out_bias)
        if self.is_mhe:
            # MUL: 1 + N(0, 0.5^2), so heads weight the shared dimensions differently from the first step; near
            # 1 +- 0.02 they stay near-identical through training (measured: docs/mhe-algebra.md, "Initialisation").
            # ADD: N(0, 0.02^2); its query embeddings grow and part the heads by themselves.
            centre, spread = (1.0, 0.5) if self.attention == "mhe-mul" else (0.0, 0.02)
            for name in ("q_head_embeddings", "k_head_embeddings", "v_head_embeddings"):
                width = d // 2 if self.pair_tied and name != "v_head_embeddings" else d
                self.register_parameter(name, nn.Parameter(centre + spread * torch.randn(n, width)))

    def head_embeddings(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """E_Q, E_K, E_V: (n, d) each. Pair-tied E_Q and E_K are repeated onto both halves of every rotation
        pair: new tensors, so code that edits the embeddings writes to the parameters themselves."""
        assert self.is_mhe
        e_q: torch.Tensor = self.q_head_embeddings  # type: ignore[assignment]
        e_k: torch.Tensor = self.k_head_embeddings  # type: ignore[assignment]
        e_v: torch.Tensor = self.v_head_embeddings  # type: ignore[assignment]
        if self.pair_tied:  # (n, d/2) -> (n, d): the rotate-half layout pairs dim j with j + d/2
            e_q, e_k = torch.cat([e_q, e_q], dim=-1), torch.cat([e_k, e_k], dim=-1)
        return e_q, e_k, e_v

    def forward(
        self,
        x: torch.Tensor,  # (B, T, d_model)
        past: KVCache | None = None,
        attn_bias: torch.Tensor | None = None,  # additive, broadcastable to (B, n_heads, T, S)
        causal: bool = False,
        rope: tuple[torch.Tensor, torch.Tensor]
        | None = None,  # cos, sin: (T, d) or (B, T, d), for these positions
    ) -> tuple[torch.Tensor, KVCache]:
        q = self.q_proj(x)  # (B, T, n*d), or (B, T, d) for MHE
        k = self.k_proj(x)  # (B, T, g*d)
        v = self.v_proj(x)  # (B, T, g*d)
        if rope is not None:  # before the cache and before any head embedding
            q = rotate(q, self.q_heads, *rope)
            k = rotate(k, self.kv_heads, *rope)
        y, present = _CORE.get()(self, q, k, v, past, attn_bias, causal)  # (B, T, n*d)
        return self.out_proj(y), present


AttentionCore = Callable[
    [
        SelfAttention,
        torch.Tensor,
        torch.Tensor,
        torch.Tensor,
        "KVCache | None",
        "torch.Tensor | None",
        bool,
    ],
    tuple[torch.Tensor, KVCache],
]


def rope_tables(
    positions: torch.Tensor, head_dim: int, theta: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin, (..., head_dim) each, for integer `positions` (T,) or (B, T): the rotate-half layout Llama uses."""
    inv_freq = 1.0 / (
        theta ** (torch.arange(0, head_dim, 2, dtype=torch.int64).float() / head_dim)
    )  # (d/2,)
    freqs = positions.float()[..., None] * inv_freq  # (..., T, d/2)
    angles = torch.cat([freqs, freqs], dim=-1)  # (..., T, d)
    return angles.cos(), angles.sin()


def rotate(x: torch.Tensor, heads: int, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """RoPE on (B, T, heads*d): each head's vector turned by its position's angles (cos, sin: (T, d) or (B, T, d))."""
    B, T, _ = x.shape
    xh = x.view(B, T, heads, -1)  # (B, T, heads, d)
    half = xh.shape[-1] // 2
    rotated = torch.cat([-xh[..., half:], xh[..., :half]], dim=-1)
    cos, sin = (
        (cos[:, :, None, :], sin[:, :, None, :])
        if cos.dim() == 3
        else (cos[None, :, None, :], sin[None, :, None, :])
    )
    return (xh * cos + rotated * sin).reshape(B, T, -1)


def split_heads(x: torch.Tensor, heads: int, head_dim: int) -> torch.Tensor:
    B, T, _ = x.shape
    return x.view(B, T, heads, head_dim).transpose(1, 2)  # (B, heads, T, head_dim)


def apply_head_embeddings(
    shared: torch.Tensor, embeddings: torch.Tensor, mode: str
) -> torch.Tensor:
    """MHE's per-head step: head i sees `shared + E[i]` (ADD) or `shared * E[i]` (MUL).

    shared: (B, 1, T, d); embeddings: (n, d); returns (B, n, T, d).
    """
    per_head = embeddings[None, :, None, :]  # (1, n, 1, d)
    return shared + per_head if mode == "mhe-add" else shared * per_head


def append_to_cache(
    k: torch.Tensor, v: torch.Tensor, past: KVCache | None, heads: int, head_dim: int
) -> KVCache:
    """The new keys and values (B, T, heads*d) as heads, after the past's: (B, heads, P + T, d) each."""
    k, v = split_heads(k, heads, head_dim), split_heads(v, heads, head_dim)  # (B, heads, T, d)
    if past is None:
        return k, v
    return torch.cat([past[0], k], dim=2), torch.cat([past[1], v], dim=2)


def causal_mask(q_len: int, kv_len: int, device: torch.device) -> torch.Tensor:
    """True where query i (at absolute position kv_len - q_len + i) may see key j: bottom-right aligned."""
    return torch.ones(q_len, kv_len, dtype=torch.bool, device=device).tril(diagonal=kv_len - q_len)


def reference_attention(
    attn: SelfAttention,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    past: KVCache | None,
    attn_bias: torch.Tensor | None,
    causal: bool,
) -> tuple[torch.Tensor, KVCache]:
    n, g, d = attn.n_heads, attn.kv_heads, attn.head_dim
    B, T, _ = q.shape
    k, v = present = append_to_cache(k, v, past, g, d)  # (B, g, S, d) each
    if attn.is_mhe:
        e_q, e_k, e_v = attn.head_embeddings()
        qh = apply_head_embeddings(split_heads(q, 1, d), e_q, attn.attention)  # (B, n, T, d)
        kh = apply_head_embeddings(k, e_k, attn.attention)  # (B, n, S, d)
        vh = apply_head_embeddings(v, e_v, attn.attention)  # (B, n, S, d)
    else:
        qh = split_heads(q, n, d)  # (B, n, T, d)
        kh = k.repeat_interleave(
            n // g, dim=1
        )  # (B, n, S, d): query head i reads KV head i // (n/g)
        vh = v.repeat_interleave(n // g, dim=1)
    scores = qh @ kh.transpose(-2, -1) / math.sqrt(d)  # (B, n, T, S)
    if attn_bias is not None:
        scores = scores + attn_bias
    if causal:
        scores = scores.masked_fill(~causal_mask(T, kh.shape[2], q.device), float("-inf"))
    y = F.softmax(scores, dim=-1) @ vh  # (B, n, T, d)
    return y.transpose(1, 2).reshape(B, T, n * d), present


def fast_attention(
    attn: SelfAttention,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    past: KVCache | None,
    attn_bias: torch.Tensor | None,
    causal: bool,
) -> tuple[torch.Tensor, KVCache]:
    """The training core: PyTorch's fused `scaled_dot_product_attention`, with MHE folded (exact, docs/mhe-algebra.md).

    MHE is never expanded to n key/value heads here: MUL's scores are (q * e_q_i * e_k_i) . k and ADD's are
    (q + e_q_i) . k plus a term that is the same for every key (softmax drops it); the value embedding
    comes out of the softmax-weighted sum unchanged (rows sum to 1). So every head reads the one shared
    key/value head, as single-KV-head attention does, and the backward pass is as cheap.
    """
    n, g, d = attn.n_heads, attn.kv_heads, attn.head_dim
    B, T, _ = q.shape
    k, v = present = append_to_cache(k, v, past, g, d)  # (B, g, S, d) each
    S = k.shape[2]
    if attn.is_mhe:
        e_q, e_k, e_v = attn.head_embeddings()
        shared = split_heads(q, 1, d)  # (B, 1, T, d)
        qh = (
            shared * (e_q * e_k)[None, :, None, :]
            if attn.attention == "mhe-mul"
            else shared + e_q[None, :, None, :]
        )
    else:
        qh = split_heads(q, n, d)  # (B, n, T, d)
    mask, plain_causal = attn_bias, causal and attn_bias is None and T == S
    if causal and not plain_causal:
        allowed = causal_mask(T, S, q.device)  # (T, S)
        mask = torch.zeros((), dtype=q.dtype, device=q.device) if mask is None else mask
        mask = mask.masked_fill(~allowed, float("-inf"))
    y = F.scaled_dot_product_attention(
        qh, k, v, attn_mask=mask, is_causal=plain_causal, enable_gqa=g != n
    )  # (B, n, T, d)
    if attn.is_mhe:
        y = y * e_v[None, :, None, :] if attn.attention == "mhe-mul" else y + e_v[None, :, None, :]
    return y.transpose(1, 2).reshape(B, T, n * d), present


_CORE: contextvars.ContextVar[AttentionCore] = contextvars.ContextVar(
    "attention_core", default=reference_attention
)


@contextlib.contextmanager
def use_attention_core(core: AttentionCore) -> Iterator[None]:
    """Run attention through `core` inside the block (the exporter uses this to emit fused ONNX ops)."""
    token = _CORE.set(core)
    try:
        yield
    finally:
        _CORE.reset(token)
