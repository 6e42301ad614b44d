"""Numerical checks (NumPy, float64) of the identities in docs/mhe-algebra.md: MHE-ADD and MHE-MUL
attention equal single-KV-head attention with the head embeddings folded into constants, also under
RoPE applied to the shared projections; applying RoPE after the head embeddings does not fold."""

import numpy as np
import pytest

B, T, D_MODEL, N, D = 2, 5, 24, 4, 6
CAUSAL = np.triu(np.full((T, T), -np.inf), 1)
NO_MASK = np.zeros((T, T))


def make_params(seed=0):
    rng = np.random.default_rng(seed)
    return dict(
        X=rng.normal(size=(B, T, D_MODEL)),
        W_Q=rng.normal(size=(D_MODEL, D)) / np.sqrt(D_MODEL),
        W_K=rng.normal(size=(D_MODEL, D)) / np.sqrt(D_MODEL),
        W_V=rng.normal(size=(D_MODEL, D)) / np.sqrt(D_MODEL),
        E_Q=rng.normal(size=(N, D)),
        E_K=rng.normal(size=(N, D)),
        E_V=rng.normal(size=(N, D)),
        W_O=rng.normal(size=(N * D, D_MODEL)) / np.sqrt(N * D),
        b_O=rng.normal(size=D_MODEL),
    )


def softmax(s):
    e = np.exp(s - s.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def rope(x):
    """Rotate channel pairs (2j, 2j+1) of x [..., T, D] by angle position * 10000^(-2j/D)."""
    angles = np.arange(T)[:, None] / 10000 ** (np.arange(0, D, 2) / D)[None]
    cos, sin = np.cos(angles), np.sin(angles)
    out = np.empty_like(x)
    out[..., 0::2] = x[..., 0::2] * cos - x[..., 1::2] * sin
    out[..., 1::2] = x[..., 0::2] * sin + x[..., 1::2] * cos
    return out


def embed(x, e, mode):
    return x + e if mode == "add" else x * e


def per_head(p, mode, mask=NO_MASK, rope_at=None):
    """Reference MHE: materialise every head's q, k, v. rope_at: None, "shared" (rotate, then embed)
    or "head" (embed, then rotate)."""
    q, k, v = p["X"] @ p["W_Q"], p["X"] @ p["W_K"], p["X"] @ p["W_V"]
    if rope_at == "shared":
        q, k = rope(q), rope(k)
    outs = []
    for i in range(N):
        qi, ki, vi = (
            embed(q, p["E_Q"][i], mode),
            embed(k, p["E_K"][i], mode),
            embed(v, p["E_V"][i], mode),
        )
        if rope_at == "head":
            qi, ki = rope(qi), rope(ki)
        outs.append(softmax(qi @ ki.transpose(0, 2, 1) / np.sqrt(D) + mask) @ vi)
    return np.concatenate(outs, -1) @ p["W_O"] + p["b_O"]


def folded(p, mode, mask=NO_MASK, rotate=None):
    """Single-KV-head attention: n query heads, one shared k and v; embeddings folded into constants."""
    q, k, v = p["X"] @ p["W_Q"], p["X"] @ p["W_K"], p["X"] @ p["W_V"]
    if rotate is not None:
        q, k = rotate(q), rotate(k)
    W_O_heads = p["W_O"].reshape(N, D, D_MODEL)
    if mode == "mul":
        C = p["E_Q"] * p["E_K"] / np.sqrt(D)
        queries = q[:, None] * C[None, :, None, :]  # [B, N, T, D]; scale already in C
        W_O_f = (p["E_V"][:, :, None] * W_O_heads).reshape(N * D, D_MODEL)  # rows scaled by E_V
        b_f = p["b_O"]
    else:
        queries = (q[:, None] + p["E_Q"][None, :, None, :]) / np.sqrt(D)  # E_K never used
        W_O_f = p["W_O"]
        b_f = p["b_O"] + p["E_V"].reshape(N * D) @ p["W_O"]
    P = softmax(queries @ k[:, None].transpose(0, 1, 3, 2) + mask)  # [B, N, T, T]
    heads = P @ v[:, None]  # [B, N, T, D]
    return heads.transpose(0, 2, 1, 3).reshape(B, T, N * D) @ W_O_f + b_f


def max_diff(a, b):
    return np.abs(a - b).max()


def test_mul_folds_into_query_constant_and_output_rows():
    p = make_params(1)
    assert max_diff(per_head(p, "mul"), folded(p, "mul")) < 1e-12
    assert max_diff(per_head(p, "mul", CAUSAL), folded(p, "mul", CAUSAL)) < 1e-12


@pytest.mark.parametrize("mask", [NO_MASK, CAUSAL], ids=["no-mask", "causal"])
def test_add_folds_into_query_offset_and_output_bias(mask):
    p = make_params(2)
    assert max_diff(per_head(p, "add", mask), folded(p, "add", mask)) < 1e-12


def test_add_output_ignores_e_k_but_not_e_v():
    p = make_params(3)
    base = per_head(p, "add", CAUSAL)
    rng = np.random.default_rng(30)
    other_k = dict(p, E_K=p["E_K"] + rng.normal(size=(N, D)))
    other_v = dict(p, E_V=p["E_V"] + rng.normal(size=(N, D)))
    assert max_diff(base, per_head(other_k, "add", CAUSAL)) < 1e-12
    assert max_diff(base, per_head(other_v, "add", CAUSAL)) > 1e-3


@pytest.mark.parametrize("mode", ["add", "mul"])
def test_rope_on_shared_projections_keeps_the_fold_exact(mode):
    p = make_params(4)
    assert (
        max_diff(per_head(p, mode, CAUSAL, rope_at="shared"), folded(p, mode, CAUSAL, rotate=rope))
        < 1e-12
    )


@pytest.mark.parametrize("mode", ["add", "mul"])
def test_rope_after_head_embeddings_does_not_fold(mode):
    p = make_params(5)
    assert (
        max_diff(per_head(p, mode, CAUSAL, rope_at="head"), folded(p, mode, CAUSAL, rotate=rope))
        > 1e-3
    )
