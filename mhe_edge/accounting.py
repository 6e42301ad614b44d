"""Parameter and KV-cache accounting, computed from the config alone (tests hold it to the real modules)."""
from __future__ import annotations

from mhe_edge.config import ModelConfig


def attention_parameters(config: ModelConfig) -> int:
    """Parameters of one attention layer, biases included."""
    D, n, d, g = config.d_model, config.n_heads, config.head_dim, config.kv_heads
    out = n * d * D + D
    if config.is_mhe:
        return 3 * (D * d + d) + 3 * n * d + out  # shared Q/K/V plus three [n, d] head-embedding tables
    return (D * n * d + n * d) + 2 * (D * g * d + g * d) + out  # MHA is g = n; MQA g = 1


def count_parameters(config: ModelConfig) -> dict[str, int]:
    """Parameters by component: embeddings, attention, mlp, norms, lm_head (decoders), and total."""
    D, L = config.d_model, config.n_layers
    parts = {
        "embeddings": config.vocab_size * D + config.max_seq_len * D,
        "attention": L * attention_parameters(config),
        "mlp": L * (D * config.d_ff + config.d_ff + config.d_ff * D + D),
        "norms": (2 * L + 1) * 2 * D,
        "lm_head": config.vocab_size * D if config.arch == "decoder" else 0,
    }
    parts["total"] = sum(parts.values())
    return parts


def kv_cache_bytes_per_token(config: ModelConfig, bytes_per_element: int = 4) -> int:
    """Bytes the KV cache grows by per token per sequence: keys and values, every layer, kv_heads heads."""
    return 2 * config.n_layers * config.kv_heads * config.head_dim * bytes_per_element


def kv_cache_bytes(config: ModelConfig, batch: int, seq_len: int, bytes_per_element: int = 4) -> int:
    return batch * seq_len * kv_cache_bytes_per_token(config, bytes_per_element)
