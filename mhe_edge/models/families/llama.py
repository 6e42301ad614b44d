"""Llama, Mistral and Qwen2 folders (transformers' layout): RoPE, RMSNorm, SwiGLU, MHA or GQA."""

from __future__ import annotations

from typing import Any

from mhe_edge.config import ModelConfig
from mhe_edge.errors import CheckpointError
from mhe_edge.models.families import family
from mhe_edge.models.families.naming import attention_kind, require, rope_theta, with_special_tokens

# Our module names -> the Llama layout (our own folders use it too).
LLAMA_NAMES = [
    (r"^tok_emb\.", "model.embed_tokens."),
    (r"^pos_emb\.", "model.embed_positions."),
    (r"^ln_emb\.", "model.embed_norm."),
    (r"^blocks\.(\d+)\.ln_attn\.", r"model.layers.\1.input_layernorm."),
    (r"^blocks\.(\d+)\.ln_mlp\.", r"model.layers.\1.post_attention_layernorm."),
    (r"^blocks\.(\d+)\.attn\.out_proj\.", r"model.layers.\1.self_attn.o_proj."),
    (r"^blocks\.(\d+)\.attn\.", r"model.layers.\1.self_attn."),
    (r"^blocks\.(\d+)\.mlp\.gate\.", r"model.layers.\1.mlp.gate_proj."),
    (r"^blocks\.(\d+)\.mlp\.fc_in\.", r"model.layers.\1.mlp.up_proj."),
    (r"^blocks\.(\d+)\.mlp\.fc_out\.", r"model.layers.\1.mlp.down_proj."),
    (r"^ln_f\.", "model.norm."),
]


def _llama_like(hf: dict, model_type: str) -> ModelConfig:
    require(
        hf,
        model_type,
        {
            "hidden_act": lambda v: v == "silu",
            "pretraining_tp": lambda v: v == 1,
            "use_sliding_window": lambda v: not v,
        },
    )
    window = hf.get("sliding_window")
    if model_type == "mistral" and window is not None and window < hf["max_position_embeddings"]:
        raise CheckpointError(
            f"{model_type} config field sliding_window={window!r} is not supported by mhe-edge"
        )
    n_heads = hf["num_attention_heads"]
    fields: dict[str, Any] = dict(
        arch="decoder",
        **attention_kind(n_heads, hf.get("num_key_value_heads") or n_heads),
        n_layers=hf["num_hidden_layers"],
        d_model=hf["hidden_size"],
        n_heads=n_heads,
        head_dim=hf.get("head_dim") or hf["hidden_size"] // n_heads,
        d_ff=hf["intermediate_size"],
        vocab_size=hf["vocab_size"],
        max_seq_len=hf["max_position_embeddings"],
        layer_norm_eps=hf.get("rms_norm_eps", 1e-6),
        position="rope",
        rope_theta=rope_theta(hf, model_type),
        norm="rmsnorm",
        mlp="swiglu",
        qkv_bias=model_type == "qwen2" or bool(hf.get("attention_bias", False)),
        out_bias=model_type != "qwen2" and bool(hf.get("attention_bias", False)),
        mlp_bias=bool(hf.get("mlp_bias", False)),
        tie_embeddings=bool(hf.get("tie_word_embeddings", False)),
    )
    return ModelConfig(**with_special_tokens(hf, fields))


SCHEMA = {
    **{
        name: "positive int, required"
        for name in (
            "num_attention_heads",
            "num_hidden_layers",
            "hidden_size",
            "intermediate_size",
            "vocab_size",
            "max_position_embeddings",
        )
    },
    "num_key_value_heads": "positive int",
    "head_dim": "positive int",
    "sliding_window": "positive int",
    "rms_norm_eps": "positive number",
    "rope_theta": "positive number",
    "rope_parameters": "mapping",
    "rope_scaling": "mapping",
    "hidden_act": "text",
    "pretraining_tp": "int",
    **{name: "bool" for name in ("tie_word_embeddings", "attention_bias", "mlp_bias")},
    "use_sliding_window": "bool",
    "bos_token_id": "token ids",
    "eos_token_id": "token ids",
}


@family("llama", LLAMA_NAMES, tied_head="lm_head.weight", schema=SCHEMA)
def llama(hf: dict) -> ModelConfig:
    return _llama_like(hf, "llama")


@family("mistral", LLAMA_NAMES, tied_head="lm_head.weight", schema=SCHEMA)
def mistral(hf: dict) -> ModelConfig:
    return _llama_like(hf, "mistral")


@family("qwen2", LLAMA_NAMES, tied_head="lm_head.weight", schema=SCHEMA)
def qwen2(hf: dict) -> ModelConfig:
    """Qwen2: biases on the Q/K/V projections, none on the output projection."""
    return _llama_like(hf, "qwen2")
