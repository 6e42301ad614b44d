"""Parameter, KV-cache and memory accounting, computed from the config alone (tests hold it to the real
modules), and the refusal of a run whose estimate exceeds the memory the machine has available."""

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


# -- memory, estimated from the config before anything is allocated -------------------------------------
# float32 values a layer keeps per token for the backward pass (roughly: q, k, v, attention output, two
# norms and residuals of width d_model; the MLP's hidden width twice); attention weights come on top
ACTIVATIONS_PER_TOKEN_D, ACTIVATIONS_PER_TOKEN_FF = 12, 2


def activation_bytes(config: ModelConfig, batch: int, seq_len: int, training: bool) -> int:
    """Activations of one forward pass over `batch` rows of `seq_len` tokens (kept for the backward pass
    when `training`, else one layer's at a time), float32."""
    per_token = ACTIVATIONS_PER_TOKEN_D * config.d_model + ACTIVATIONS_PER_TOKEN_FF * config.d_ff
    scores = config.n_heads * seq_len  # one row of attention weights per head
    per_layer = batch * seq_len * (per_token + scores) * 4
    return per_layer * (config.n_layers if training else 2)


def training_memory(config: ModelConfig, batch: int, seq_len: int) -> dict[str, int]:
    """Bytes a training step needs (name -> bytes): float32 weights, their gradients, AdamW's two moments,
    activations and the logits (with their gradient) of a micro-batch."""
    weights = count_parameters(config)["total"] * 4
    return {
        "weights": weights,
        "gradients": weights,
        "optimizer state": 2 * weights,
        "activations": activation_bytes(config, batch, seq_len, training=True),
        "logits": 2 * batch * seq_len * config.vocab_size * 4,
    }


def inference_memory(config: ModelConfig, batch: int, seq_len: int) -> dict[str, int]:
    """Bytes a forward pass over `batch` rows of `seq_len` tokens needs: float32 weights, one layer's
    activations at a time and the logits."""
    return {
        "weights": count_parameters(config)["total"] * 4,
        "activations": activation_bytes(config, batch, seq_len, training=False),
        "logits": batch * seq_len * config.vocab_size * 4,
    }


def available_memory_bytes() -> int | None:
    """What the machine can still give this process (Linux MemAvailable), or None where it cannot tell."""
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def check_fits(
    parts: dict[str, int], what: str, advice: str = "use a smaller batch or length"
) -> None:
    """Refuse (RequestError, exit 2), before allocating, a run whose estimated buffers (name -> bytes)
    exceed the memory available, naming the estimate, its largest part and what the machine has."""
    from mhe_edge.errors import RequestError

    available = available_memory_bytes()
    needed = sum(parts.values())
    if available is not None and needed > available:
        largest = max(parts, key=parts.__getitem__)
        raise RequestError(
            f"{what} needs about {_gib(needed)} GiB ({largest} {_gib(parts[largest])} GiB), more than"
            f" the {_gib(available)} GiB this machine has available; {advice}"
        )


def _gib(n: int) -> str:
    return f"{n / 2**30:,.1f}"
