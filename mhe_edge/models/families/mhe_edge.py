"""Our own folders: Hugging Face's names for the standard config fields, `mhe_edge_*` keys for what is
ours, and the Llama tensor layout with `*_head_embeddings` tensors (docs/model-format.md)."""

from __future__ import annotations

from typing import Any

from mhe_edge.config import ModelConfig
from mhe_edge.errors import ConfigError
from mhe_edge.models.families import OURS as MODEL_TYPE
from mhe_edge.models.families import family
from mhe_edge.models.families.llama import LLAMA_NAMES

# ModelConfig fields that Hugging Face names one way in every model family.
HF_FIELDS = {
    "n_layers": "num_hidden_layers",
    "d_model": "hidden_size",
    "n_heads": "num_attention_heads",
    "n_kv_heads": "num_key_value_heads",
    "head_dim": "head_dim",
    "d_ff": "intermediate_size",
    "vocab_size": "vocab_size",
    "max_seq_len": "max_position_embeddings",
    "tie_embeddings": "tie_word_embeddings",
    "bos_token_id": "bos_token_id",
    "eos_token_id": "eos_token_id",
}
OUR_FIELDS = (
    "arch",
    "attention",
    "position",
    "norm",
    "norm_placement",
    "embedding_norm",
    "mlp",
    "qkv_bias",
    "out_bias",
    "mlp_bias",
)

# MHE-MUL with RoPE whose query and key head embeddings hold one value per rotation pair
PAIR_TIED_KEY = "mhe_edge_rope_pair_tied_embeddings"


def hf_config(config: ModelConfig) -> dict[str, Any]:
    """config.json for one of our models."""
    from mhe_edge import __version__

    hf: dict[str, Any] = {
        "model_type": MODEL_TYPE,
        "architectures": ["MheEdgeDecoder" if config.arch == "decoder" else "MheEdgeEncoder"],
        **{hf_name: getattr(config, ours) for ours, hf_name in HF_FIELDS.items()},
        "rms_norm_eps" if config.norm == "rmsnorm" else "layer_norm_epsilon": config.layer_norm_eps,
        "torch_dtype": "float32",
        **{f"mhe_edge_{name}": getattr(config, name) for name in OUR_FIELDS},
        "mhe_edge_mhe_mode": config.attention.removeprefix("mhe-") if config.is_mhe else None,
        "mhe_edge_version": __version__,
    }
    if config.position == "rope":
        hf["rope_theta"] = config.rope_theta
    if config.rope_pair_tied_embeddings:  # written when set: (n, d/2) query and key head embeddings
        hf[PAIR_TIED_KEY] = True
    return hf


@family(
    MODEL_TYPE,
    LLAMA_NAMES,
    schema={
        **{hf_name: "positive int" for ours, hf_name in HF_FIELDS.items() if "token" not in ours},
        "tie_word_embeddings": "bool",
        "rms_norm_eps": "positive number",
        "layer_norm_epsilon": "positive number",
        "rope_theta": "positive number",
        PAIR_TIED_KEY: "bool",
        "bos_token_id": "token ids",
        "eos_token_id": "token ids",
    },
)
def config_from_ours(hf: dict[str, Any]) -> ModelConfig:
    fields = {ours: hf[hf_name] for ours, hf_name in HF_FIELDS.items() if hf_name in hf}
    fields.update({name: hf[f"mhe_edge_{name}"] for name in OUR_FIELDS if f"mhe_edge_{name}" in hf})
    fields["layer_norm_eps"] = hf.get("rms_norm_eps", hf.get("layer_norm_epsilon", 1e-5))
    if "rope_theta" in hf:
        fields["rope_theta"] = hf["rope_theta"]
    if PAIR_TIED_KEY in hf:
        fields["rope_pair_tied_embeddings"] = hf[PAIR_TIED_KEY]
    if fields.get("attention") not in ("gqa", None):
        fields.pop("n_kv_heads", None)  # derived for every kind but gqa
    mode = hf.get("mhe_edge_mhe_mode")
    if mode is not None and f"mhe-{mode}" != fields.get("attention"):
        raise ConfigError(
            f"mhe_edge_mhe_mode {mode!r} contradicts mhe_edge_attention {fields.get('attention')!r}"
        )
    return ModelConfig(**fields)
