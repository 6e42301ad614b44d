"""Pretrained MHA/GQA attention -> MHE (or mean-pooled MQA): the weight math, one layer at a time.

A source layer has, per query head i, projections `W_Q_i, W_K_i, W_V_i` (GQA: K/V heads shared by groups of
query heads; they are first expanded so that every query head has its own). MHE keeps one shared projection
of one head's width and a `[n, d]` embedding table per projection (docs/mhe-algebra.md):

- MHE-MUL, head i sees `X W * E[i]`: for each output column j the heads' columns `W_i[:, j]` are fitted by
  one column times a scale per head, a rank-1 fit across heads. `svd` takes the best one (Eckart-Young: the
  top singular pair); `mean` takes the heads' mean with neutral embeddings (all ones), which is one member of
  the same family, so `svd` is never worse. With RoPE the shared query and key are rotated before the
  embeddings scale them; that commutes only when a rotation pair (j, j + d/2) shares one scale, so Q and K
  are fitted a pair at a time (two columns, one scale per head).
- MHE-ADD, head i sees `X W + E[i]`: every head has the same matrix, so the least-squares fit is the heads'
  mean; the embeddings can only carry the heads' own biases (minus their mean). Without biases, or for a
  rotated Q/K (RoPE turns a bias by position, which a constant embedding cannot follow), `svd` is `mean`.
- MQA (the GQA paper's baseline): queries kept, K/V heads mean-pooled to one.

Biases ride along as one more input row of each projection, so a fit error counts them too. Fit errors are
relative, over all heads: `||fitted - source||_F / ||source||_F`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from mhe_edge import options
from mhe_edge.config import ModelConfig
from mhe_edge.errors import CheckpointError

TARGETS = options.CONVERT_ATTENTION.choices
INITS = options.CONVERT_INIT.choices
SOURCES = ("mha", "gqa", "mqa")
PROJECTIONS = ("q", "k", "v")


@dataclass
class ProjectionFit:
    shared: (
        torch.Tensor
    )  # (d_out, d_model [+ 1 for the bias]): the shared projection, bias as last column
    embeddings: torch.Tensor | None  # (n, d): per-head embedding (None for MQA)
    error: float  # relative Frobenius error of this fit over all heads
    mean_error: float  # the same for the mean-pooling baseline


def converted_config(source: ModelConfig, target: str) -> ModelConfig:
    """The config of the converted model: the source's, attention replaced; refused when it cannot be."""
    options.CONVERT_ATTENTION.check(target)
    if source.is_mhe:
        raise CheckpointError(
            f"the source is already {source.attention}; convert takes MHA, GQA or MQA models"
        )
    if source.attention not in SOURCES:
        raise CheckpointError(f"cannot convert {source.attention} attention")
    if source.n_heads < 2:
        raise CheckpointError(
            "the source has one attention head per layer: there are no heads to share a projection"
        )
    if target == "mqa" and source.attention == "mqa":
        raise CheckpointError("the source is already MQA (one KV head)")
    return ModelConfig(**{**source.to_dict(), "attention": target, "n_kv_heads": None})


def heads_of(weight: torch.Tensor, bias: torch.Tensor | None, heads: int, d: int) -> torch.Tensor:
    """A Linear's (heads*d, D) weight and (heads*d,) bias as (heads, d, D + 1) in float64 (bias last)."""
    per_head = weight.to(torch.float64).reshape(heads, d, -1)
    if bias is None:
        return per_head
    return torch.cat([per_head, bias.to(torch.float64).reshape(heads, d, 1)], dim=-1)


def expand_kv(heads: torch.Tensor, n_heads: int) -> torch.Tensor:
    """(g, d, D') KV heads -> (n, d, D'): query head i reads KV head i // (n / g), as attention does."""
    return heads.repeat_interleave(n_heads // heads.shape[0], dim=0)


def _relative(fitted: torch.Tensor, source: torch.Tensor) -> float:
    norm = float(source.norm())
    return float((fitted - source).norm()) / norm if norm > 0 else 0.0


def _columns(heads: torch.Tensor, paired: bool) -> torch.Tensor:
    """(n, d, D') -> (G, n, L): the groups of columns that share one scale per head (a RoPE pair, or one)."""
    n, d, width = heads.shape
    if not paired:
        return heads.permute(1, 0, 2)  # (d, n, D')
    pairs = heads.reshape(n, 2, d // 2, width).permute(2, 0, 1, 3)  # (d/2, n, 2, D')
    return pairs.reshape(d // 2, n, 2 * width)


def _uncolumns(groups: torch.Tensor, scales: torch.Tensor, d: int, paired: bool):
    """Inverse of `_columns` for a rank-1 fit: (G, L) shared columns, (G, n) scales -> (d, D'), (n, d)."""
    if not paired:
        return groups, scales.t()
    half = d // 2
    shared = groups.reshape(half, 2, -1).permute(1, 0, 2).reshape(d, -1)
    return shared, torch.cat([scales.t(), scales.t()], dim=1)


def fit_mul(heads: torch.Tensor, init: str, paired: bool) -> ProjectionFit:
    """MHE-MUL: per column group, heads[i] ~ E[i] * shared (heads: (n, d, D'))."""
    n, d, _ = heads.shape
    groups = _columns(heads, paired)  # (G, n, L)
    pooled = groups.mean(dim=1)  # (G, L)
    mean_error = _relative(pooled[:, None, :].expand_as(groups), groups)
    if init == "mean":
        shared, embeddings = _uncolumns(
            pooled, torch.ones(pooled.shape[0], n, dtype=heads.dtype), d, paired
        )
        return ProjectionFit(shared, embeddings, mean_error, mean_error)
    u, s, vh = torch.linalg.svd(groups, full_matrices=False)  # (G, n, k), (G, k), (G, k, L)
    # Scale so that each column's embeddings have RMS 1 (as the neutral init), signs so they sum >= 0.
    scales = u[:, :, 0] * n**0.5  # (G, n)
    columns = s[:, :1] * vh[:, 0, :] / n**0.5  # (G, L)
    flip = torch.where(scales.sum(dim=1, keepdim=True) < 0, -1.0, 1.0).to(heads.dtype)
    scales, columns = scales * flip, columns * flip
    error = _relative(scales[:, :, None] * columns[:, None, :], groups)
    shared, embeddings = _uncolumns(columns, scales, d, paired)
    return ProjectionFit(shared, embeddings, error, mean_error)


def fit_add(heads: torch.Tensor, init: str, biased: bool, rotated: bool) -> ProjectionFit:
    """MHE-ADD: heads[i] ~ shared + E[i] on the bias column only (heads: (n, d, D'), bias last if `biased`)."""
    n, d, _ = heads.shape
    pooled = heads.mean(dim=0)  # (d, D'): the least-squares common matrix
    mean_error = _relative(pooled.expand_as(heads), heads)
    embeddings = torch.zeros(n, d, dtype=heads.dtype)
    if init == "mean" or not biased or rotated:
        return ProjectionFit(pooled, embeddings, mean_error, mean_error)
    embeddings = heads[:, :, -1] - pooled[None, :, -1]  # each head's bias, exactly
    fitted = pooled.expand_as(heads).clone()
    fitted[:, :, -1] += embeddings
    return ProjectionFit(pooled, embeddings, _relative(fitted, heads), mean_error)


def fit_mqa(heads: torch.Tensor) -> ProjectionFit:
    """Mean-pooled single KV head (heads: (n, d, D'), already expanded)."""
    pooled = heads.mean(dim=0)
    error = _relative(pooled.expand_as(heads), heads)
    return ProjectionFit(pooled, None, error, error)


def convert_attention(
    source: ModelConfig, target: ModelConfig, state: dict[str, torch.Tensor], prefix: str, init: str
) -> tuple[dict[str, torch.Tensor], dict[str, float], dict[str, float]]:
    """One layer's attention tensors (our names under `prefix`, e.g. "blocks.3.attn.") -> the target's, with
    the fit error and the mean baseline's error per projection. `state` loses the tensors it converts."""
    n, d, g = source.n_heads, source.head_dim, source.kv_heads
    biased, rotated = source.qkv_bias, source.position == "rope"
    out: dict[str, torch.Tensor] = {}
    errors: dict[str, float] = {}
    baseline: dict[str, float] = {}
    for name in PROJECTIONS:
        weight = state.pop(f"{prefix}{name}_proj.weight")
        bias = state.pop(f"{prefix}{name}_proj.bias") if biased else None
        source_heads = n if name == "q" else g
        if target.attention == "mqa" and name == "q":
            out[f"{prefix}q_proj.weight"] = weight
            if bias is not None:
                out[f"{prefix}q_proj.bias"] = bias
            errors[name] = baseline[name] = 0.0
            continue
        heads = heads_of(weight, bias, source_heads, d)
        if source_heads != n:
            heads = expand_kv(heads, n)
        if target.attention == "mqa":
            fit = fit_mqa(heads)
        elif target.attention == "mhe-mul":
            fit = fit_mul(heads, init, paired=rotated and name in ("q", "k"))
        else:
            fit = fit_add(heads, init, biased, rotated=rotated and name in ("q", "k"))
        shared = fit.shared.to(torch.float32)
        out[f"{prefix}{name}_proj.weight"] = (shared[:, :-1] if biased else shared).contiguous()
        if biased:
            out[f"{prefix}{name}_proj.bias"] = shared[:, -1].contiguous()
        if fit.embeddings is not None:
            out[f"{prefix}{name}_head_embeddings"] = fit.embeddings.to(torch.float32).contiguous()
        errors[name], baseline[name] = fit.error, fit.mean_error
    return out, errors, baseline
