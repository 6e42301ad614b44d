"""Parameter and KV-cache accounting, computed from the config alone (tests hold it to the real modules)."""

from __future__ import annotations

from mhe_edge.config import ModelConfig


def attention_parameters(config: ModelConfig) -> int:
    """Parameters of one attention layer, biases included."""
    D, n, d, g = config.d_model, config.n_heads, config.head_dim, config.kv_heads
    q_width = d if config.is_mhe else n * d  # MHE shares one projection among all heads
    qkv = D * q_width + 2 * D * g * d + (q_width + 2 * g * d if config.qkv_bias else 0)
    embeddings = 3 * n * d if config.is_mhe else 0  # three [n, d] head-embedding tables
    if config.rope_pair_tied_embeddings:  # E_Q and E_K: one value per rotation pair, [n, d/2]
        embeddings -= n * d
    out = n * d * D + (D if config.out_bias else 0)
    return qkv + embeddings + out


def mlp_parameters(config: ModelConfig) -> int:
    D, F = config.d_model, config.d_ff
    if config.mlp == "swiglu":  # gate, up, down
        return 3 * D * F + (2 * F + D if config.mlp_bias else 0)
    return 2 * D * F + (F + D if config.mlp_bias else 0)


def count_parameters(config: ModelConfig) -> dict[str, int]:
    """Parameters by component: embeddings, attention, mlp, norms, lm_head (decoders), and total."""
    D, L = config.d_model, config.n_layers
    per_norm = D if config.norm == "rmsnorm" else 2 * D
    norms = 2 * L + (config.norm_placement == "pre") + config.embedding_norm
    parts = {
        "embeddings": config.vocab_size * D
        + (config.max_seq_len * D if config.position == "learned" else 0),
        "attention": L * attention_parameters(config),
        "mlp": L * mlp_parameters(config),
        "norms": norms * per_norm,
        "lm_head": config.vocab_size * D
        if config.arch == "decoder" and not config.tie_embeddings
        else 0,
    }
    parts["total"] = sum(parts.values())
    return parts


def kv_cache_bytes_per_token(config: ModelConfig, bytes_per_element: int = 4) -> int:
    """Bytes the KV cache grows by per token per sequence: keys and values, every layer, kv_heads heads."""
    return 2 * config.n_layers * config.kv_heads * config.head_dim * bytes_per_element


def kv_cache_bytes(
    config: ModelConfig, batch: int, seq_len: int, bytes_per_element: int = 4
) -> int:
    return batch * seq_len * kv_cache_bytes_per_token(config, bytes_per_element)
