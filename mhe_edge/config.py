"""Model configuration: one dataclass describes every architecture mhe-edge builds."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from mhe_edge.errors import ConfigError

ARCHS = ("encoder", "decoder")
# Sanity bounds, checked before any model is built: far above any model mhe-edge targets, far below what
# would hang or exhaust memory while a crafted config is turned into modules.
LIMITS = {
    "n_layers": 1024,
    "d_model": 65_536,
    "n_heads": 1024,
    "head_dim": 4096,
    "n_kv_heads": 1024,
    "d_ff": 262_144,
    "vocab_size": 4_194_304,
    "max_seq_len": 1_048_576,
}
ATTENTION_KINDS = ("mha", "mqa", "gqa", "mhe-add", "mhe-mul")
MHE_KINDS = ("mhe-add", "mhe-mul")
POSITIONS = ("learned", "rope")
NORMS = ("layernorm", "rmsnorm")
NORM_PLACEMENTS = ("pre", "post")
MLPS = ("gelu", "gelu_tanh", "swiglu")


@dataclass
class ModelConfig:
    arch: str = "decoder"  # "encoder": BERT-style, bidirectional; "decoder": GPT-style causal LM
    attention: str = "mhe-mul"  # one of ATTENTION_KINDS
    n_layers: int = 2  # transformer blocks
    d_model: int = 64  # residual stream width
    n_heads: int = 4  # query heads (MHE: head embeddings per projection)
    # Given as None, these three are derived in __post_init__: after it they are always ints.
    head_dim: int = None  # type: ignore[assignment]  # size of one head; None: d_model // n_heads
    n_kv_heads: int = None  # type: ignore[assignment]  # K/V heads for "gqa"; derived for the rest
    d_ff: int = None  # type: ignore[assignment]  # MLP hidden width; None: 4 * d_model
    vocab_size: int = 1000  # token ids are in [0, vocab_size)
    max_seq_len: int = 128  # positions; a decoder's context (past + new) may not exceed it
    layer_norm_eps: float = 1e-5  # epsilon of every norm (LayerNorm or RMSNorm)
    position: str = "learned"  # "learned": a table of max_seq_len rows; "rope": rotary, on the shared projections
    rope_theta: float = 10_000.0  # RoPE's base (position="rope")
    # MHE-MUL with RoPE: the query and key head embeddings hold one value per rotation pair (dims j and
    # j + d/2), stored (n, d/2) and repeated to (n, d) in forward, so each head's scale commutes with the
    # rotation and the model folds exactly into Llama with one KV head (`mhe-edge fold`)
    rope_pair_tied_embeddings: bool = False
    norm: str = "layernorm"  # "layernorm" or "rmsnorm"
    # "pre": norm before each sublayer, plus a final norm; "post": after each residual add (BERT)
    norm_placement: str = "pre"
    embedding_norm: bool = False  # a norm right after the embeddings (BERT)
    mlp: str = "gelu"  # "gelu" (erf), "gelu_tanh" (GPT-2's approximation), "swiglu" (silu(gate) * up, Llama)
    qkv_bias: bool = True  # biases on the Q, K and V projections
    out_bias: bool = True  # bias on the attention's output projection
    mlp_bias: bool = True  # biases in the MLP
    tie_embeddings: bool = False  # decoders: the output projection reuses the token embedding table
    bos_token_id: int | None = None  # the tokenizer's begin-of-sequence id, if any
    eos_token_id: int | None = None  # the tokenizer's end-of-sequence id, if any

    def __post_init__(self) -> None:
        if self.arch not in ARCHS:
            raise ConfigError(f"arch must be one of {', '.join(ARCHS)}, not {self.arch!r}")
        if self.attention not in ATTENTION_KINDS:
            raise ConfigError(
                f"attention must be one of {', '.join(ATTENTION_KINDS)}, not {self.attention!r}"
            )
        for name in ("n_layers", "d_model", "n_heads", "vocab_size", "max_seq_len"):
            _require_positive_int(name, getattr(self, name))
        if self.head_dim is None:
            if self.d_model % self.n_heads:
                raise ConfigError(
                    f"d_model {self.d_model} is not divisible by n_heads {self.n_heads}; give head_dim explicitly"
                )
            self.head_dim = self.d_model // self.n_heads
        _require_positive_int("head_dim", self.head_dim)
        if self.attention == "gqa":
            if self.n_kv_heads is None:
                raise ConfigError("gqa needs n_kv_heads")
            _require_positive_int("n_kv_heads", self.n_kv_heads)
            if self.n_heads % self.n_kv_heads:
                raise ConfigError(
                    f"n_heads {self.n_heads} is not divisible by n_kv_heads {self.n_kv_heads}"
                )
        else:
            implied = self.n_heads if self.attention == "mha" else 1
            if self.n_kv_heads not in (None, implied):
                raise ConfigError(
                    f"{self.attention} has {implied} KV head(s); n_kv_heads {self.n_kv_heads} does not fit"
                )
            self.n_kv_heads = implied
        if self.d_ff is None:
            self.d_ff = 4 * self.d_model
        _require_positive_int("d_ff", self.d_ff)
        if not isinstance(self.layer_norm_eps, (int, float)) or not 0 < self.layer_norm_eps < 1:
            raise ConfigError(f"layer_norm_eps must be in (0, 1), not {self.layer_norm_eps!r}")
        for name, choices in (
            ("position", POSITIONS),
            ("norm", NORMS),
            ("norm_placement", NORM_PLACEMENTS),
            ("mlp", MLPS),
        ):
            if getattr(self, name) not in choices:
                raise ConfigError(
                    f"{name} must be one of {', '.join(choices)}, not {getattr(self, name)!r}"
                )
        for name in (
            "embedding_norm",
            "qkv_bias",
            "out_bias",
            "mlp_bias",
            "tie_embeddings",
            "rope_pair_tied_embeddings",
        ):
            if not isinstance(getattr(self, name), bool):
                raise ConfigError(f"{name} must be true or false, not {getattr(self, name)!r}")
        if self.position == "rope":
            if self.head_dim % 2:
                raise ConfigError(f"rope needs an even head_dim, not {self.head_dim}")
            if (
                isinstance(self.rope_theta, bool)
                or not isinstance(self.rope_theta, (int, float))
                or not 1 < self.rope_theta < 1e12
            ):
                raise ConfigError(
                    f"rope_theta must be a number in (1, 1e12), not {self.rope_theta!r}"
                )
        if self.rope_pair_tied_embeddings and (
            self.attention != "mhe-mul" or self.position != "rope"
        ):
            raise ConfigError(
                "rope_pair_tied_embeddings ties MHE-MUL's query and key head embeddings within each RoPE"
                f" rotation pair: it needs attention mhe-mul and position rope, not {self.attention} with"
                f" {self.position} positions"
            )
        if self.tie_embeddings and self.arch != "decoder":
            raise ConfigError(
                "tie_embeddings is for decoders (an encoder has no output projection)"
            )
        for name in ("bos_token_id", "eos_token_id"):
            value = getattr(self, name)
            if value is not None and (
                isinstance(value, bool)
                or not isinstance(value, int)
                or not 0 <= value < self.vocab_size
            ):
                raise ConfigError(
                    f"{name} must be a token id in [0, {self.vocab_size}), not {value!r}"
                )

    @property
    def is_mhe(self) -> bool:
        return self.attention in MHE_KINDS

    @property
    def kv_heads(self) -> int:
        """Heads held in the KV cache: n_heads (mha), n_kv_heads (gqa), 1 (mqa and MHE, which caches X W_K, X W_V)."""
        return self.n_kv_heads

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Any) -> ModelConfig:
        if not isinstance(data, dict):
            raise ConfigError(f"a model config must be a mapping, not {type(data).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"unknown config field(s): {', '.join(map(str, unknown))}")
        return cls(**data)


def _require_positive_int(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ConfigError(f"{name} must be a positive integer, not {value!r}")
    if name in LIMITS and value > LIMITS[name]:
        raise ConfigError(f"{name} {value} is beyond mhe-edge's limit of {LIMITS[name]:,}")


PRESETS: dict[str, dict[str, Any]] = {
    # Test-sized: exports and validates in seconds.
    "tiny": dict(n_layers=2, d_model=64, n_heads=4, d_ff=256, vocab_size=1000, max_seq_len=128),
    # The benchmark decoder: a 2048-token context plus decode steps fits.
    "small": dict(n_layers=6, d_model=512, n_heads=8, d_ff=2048, vocab_size=8192, max_seq_len=4096),
    # BERT-base / GPT-2-small widths.
    "base": dict(
        n_layers=12, d_model=768, n_heads=12, d_ff=3072, vocab_size=50257, max_seq_len=4096
    ),
    # Test-sized in the shape small LMs have now: RoPE, RMSNorm, SwiGLU, no biases, tied embeddings.
    "tiny-llama": dict(
        n_layers=2,
        d_model=64,
        n_heads=4,
        d_ff=176,
        vocab_size=1000,
        max_seq_len=256,
        position="rope",
        norm="rmsnorm",
        mlp="swiglu",
        qkv_bias=False,
        out_bias=False,
        mlp_bias=False,
        tie_embeddings=True,
        layer_norm_eps=1e-6,
    ),
}


def preset_config(
    name: str, arch: str = "decoder", attention: str = "mhe-mul", **overrides: Any
) -> ModelConfig:
    """A named preset, with `overrides` (None values ignored) applied on top."""
    if name not in PRESETS:
        raise ConfigError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}")
    fields = dict(PRESETS[name], arch=arch, attention=attention)
    fields.update({k: v for k, v in overrides.items() if v is not None})
    if attention == "gqa" and fields.get("n_kv_heads") is None:
        fields["n_kv_heads"] = _default_kv_groups(fields["n_heads"])
    return ModelConfig(**fields)


def _default_kv_groups(n_heads: int) -> int:
    """GQA's customary grouping: the largest divisor of n_heads up to n_heads / 4 (n_heads / 2 for few heads)."""
    limit = n_heads // 4 if n_heads >= 8 else max(1, n_heads // 2)
    return max(g for g in range(1, limit + 1) if n_heads % g == 0)
