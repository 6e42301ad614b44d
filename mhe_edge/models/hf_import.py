"""Hugging Face checkpoints in: config.json of `llama`, `mistral`, `qwen2`, `gpt2` or `bert` -> ModelConfig,
and their tensor names -> ours. No transformers needed: the folder's files are read as they are.

Each family is a config conversion, a name map and (GPT-2, BERT) a few exact tensor rewrites. A config
field that would change the computation and that we do not implement (rope scaling, a sliding window
shorter than the context, another activation, ...) is refused naming it, never silently ignored.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import torch

from mhe_edge.config import ModelConfig
from mhe_edge.errors import CheckpointError

MODEL_TYPE = "mhe_edge"  # our own folders
IMPORTED = ("llama", "mistral", "qwen2", "gpt2", "bert")

# Our module names <-> the Hugging Face (Llama) layout: our folders and Llama/Mistral/Qwen2 use these names.
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
GPT2_NAMES = [
    (r"^tok_emb\.", "transformer.wte."),
    (r"^pos_emb\.", "transformer.wpe."),
    (r"^blocks\.(\d+)\.ln_attn\.", r"transformer.h.\1.ln_1."),
    (r"^blocks\.(\d+)\.ln_mlp\.", r"transformer.h.\1.ln_2."),
    (r"^blocks\.(\d+)\.attn\.out_proj\.", r"transformer.h.\1.attn.c_proj."),
    (r"^blocks\.(\d+)\.mlp\.fc_in\.", r"transformer.h.\1.mlp.c_fc."),
    (r"^blocks\.(\d+)\.mlp\.fc_out\.", r"transformer.h.\1.mlp.c_proj."),
    (r"^ln_f\.", "transformer.ln_f."),
]
BERT_NAMES = [
    (r"^tok_emb\.", "embeddings.word_embeddings."),
    (r"^pos_emb\.", "embeddings.position_embeddings."),
    (r"^ln_emb\.", "embeddings.LayerNorm."),
    (r"^blocks\.(\d+)\.attn\.q_proj\.", r"encoder.layer.\1.attention.self.query."),
    (r"^blocks\.(\d+)\.attn\.k_proj\.", r"encoder.layer.\1.attention.self.key."),
    (r"^blocks\.(\d+)\.attn\.v_proj\.", r"encoder.layer.\1.attention.self.value."),
    (r"^blocks\.(\d+)\.attn\.out_proj\.", r"encoder.layer.\1.attention.output.dense."),
    (r"^blocks\.(\d+)\.ln_attn\.", r"encoder.layer.\1.attention.output.LayerNorm."),
    (r"^blocks\.(\d+)\.mlp\.fc_in\.", r"encoder.layer.\1.intermediate.dense."),
    (r"^blocks\.(\d+)\.mlp\.fc_out\.", r"encoder.layer.\1.output.dense."),
    (r"^blocks\.(\d+)\.ln_mlp\.", r"encoder.layer.\1.output.LayerNorm."),
]


def rename(name: str, rules: list[tuple[str, str]]) -> str:
    for pattern, replacement in rules:
        renamed, hits = re.subn(pattern, replacement, name)
        if hits:
            return renamed
    return name


def folder_name(ours: str) -> str:
    """Our module's tensor name -> its name in a model folder (the Hugging Face Llama layout)."""
    return rename(ours, LLAMA_NAMES)


def _inverse(rules):
    inverse = []
    for pattern, replacement in rules:
        source = "^" + re.escape(replacement.replace(r"\1", "\0")).replace(
            re.escape("\0"), r"(\d+)"
        )
        inverse.append((source, pattern.lstrip("^").replace(r"(\d+)", r"\1").replace("\\.", ".")))
    return inverse


LLAMA_TO_OURS, GPT2_TO_OURS, BERT_TO_OURS = (
    _inverse(LLAMA_NAMES),
    _inverse(GPT2_NAMES),
    _inverse(BERT_NAMES),
)


def our_name(name: str) -> str:
    """A tensor name in a model folder (Llama layout) -> our module's name."""
    return rename(name, LLAMA_TO_OURS)


# --- config.json -> ModelConfig


def _get(hf: dict, key: str, default: Any = None) -> Any:
    return hf.get(key, default)


def _require(hf: dict, model_type: str, checks: dict[str, Callable[[Any], bool]]) -> None:
    for field, ok in checks.items():
        if field in hf and not ok(hf[field]):
            raise CheckpointError(
                f"{model_type} config field {field}={hf[field]!r} is not supported by mhe-edge"
            )


def _token_id(value: Any, vocab: int) -> int | None:
    if isinstance(value, list):  # several end-of-sequence ids: the first is the canonical one
        value = value[0] if value else None
    return (
        value
        if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < vocab
        else None
    )


def _rope_theta(hf: dict, model_type: str) -> float:
    parameters = hf.get("rope_parameters") or {}
    if (
        hf.get("rope_scaling") not in (None, {})
        or parameters.get("rope_type", "default") != "default"
    ):
        scaling = hf.get("rope_scaling") or parameters
        raise CheckpointError(
            f"{model_type} config field rope_scaling={scaling!r} is not supported by mhe-edge"
        )
    return float(parameters.get("rope_theta", hf.get("rope_theta", 10_000.0)))


def _attention_kind(n_heads: int, kv_heads: int) -> dict[str, Any]:
    if kv_heads == n_heads:
        return {"attention": "mha"}
    if kv_heads == 1:
        return {"attention": "mqa"}
    return {"attention": "gqa", "n_kv_heads": kv_heads}


def config_from_hf(hf: dict) -> ModelConfig:
    """A Hugging Face config.json (already parsed) as a ModelConfig; unsupported fields refused by name."""
    model_type = hf.get("model_type")
    if model_type not in IMPORTED:
        raise CheckpointError(
            f"model_type {model_type!r} is not supported; mhe-edge imports {', '.join(IMPORTED)}"
        )
    if model_type in ("llama", "mistral", "qwen2"):
        fields = _llama_like(hf, model_type)
    elif model_type == "gpt2":
        fields = _gpt2(hf)
    else:
        fields = _bert(hf)
    vocab = fields["vocab_size"]
    fields.update(
        bos_token_id=_token_id(hf.get("bos_token_id"), vocab),
        eos_token_id=_token_id(hf.get("eos_token_id"), vocab),
    )
    return ModelConfig(**fields)


def _llama_like(hf: dict, model_type: str) -> dict[str, Any]:
    checks = {
        "hidden_act": lambda v: v == "silu",
        "pretraining_tp": lambda v: v == 1,
        "use_sliding_window": lambda v: not v,
    }
    _require(hf, model_type, checks)
    window = hf.get("sliding_window")
    if model_type == "mistral" and window is not None and window < hf["max_position_embeddings"]:
        raise CheckpointError(
            f"{model_type} config field sliding_window={window!r} is not supported by mhe-edge"
        )
    n_heads = hf["num_attention_heads"]
    qkv_bias = model_type == "qwen2" or bool(hf.get("attention_bias", False))
    return dict(
        arch="decoder",
        **_attention_kind(n_heads, hf.get("num_key_value_heads") or n_heads),
        n_layers=hf["num_hidden_layers"],
        d_model=hf["hidden_size"],
        n_heads=n_heads,
        head_dim=hf.get("head_dim") or hf["hidden_size"] // n_heads,
        d_ff=hf["intermediate_size"],
        vocab_size=hf["vocab_size"],
        max_seq_len=hf["max_position_embeddings"],
        layer_norm_eps=hf.get("rms_norm_eps", 1e-6),
        position="rope",
        rope_theta=_rope_theta(hf, model_type),
        norm="rmsnorm",
        mlp="swiglu",
        qkv_bias=qkv_bias,
        out_bias=model_type != "qwen2" and bool(hf.get("attention_bias", False)),
        mlp_bias=bool(hf.get("mlp_bias", False)),
        tie_embeddings=bool(hf.get("tie_word_embeddings", False)),
    )


def _gpt2(hf: dict) -> dict[str, Any]:
    activations = {"gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh", "gelu": "gelu"}
    _require(
        hf,
        "gpt2",
        {
            "activation_function": lambda v: v in activations,
            "scale_attn_weights": lambda v: v is True,
            "scale_attn_by_inverse_layer_idx": lambda v: not v,
            "add_cross_attention": lambda v: not v,
        },
    )
    D = hf["n_embd"]
    return dict(
        arch="decoder",
        attention="mha",
        n_layers=hf["n_layer"],
        d_model=D,
        n_heads=hf["n_head"],
        d_ff=hf.get("n_inner") or 4 * D,
        vocab_size=hf["vocab_size"],
        max_seq_len=hf["n_positions"],
        layer_norm_eps=hf.get("layer_norm_epsilon", 1e-5),
        mlp=activations[hf.get("activation_function", "gelu_new")],
        tie_embeddings=bool(hf.get("tie_word_embeddings", True)),
    )


def _bert(hf: dict) -> dict[str, Any]:
    _require(
        hf,
        "bert",
        {
            "hidden_act": lambda v: v == "gelu",
            "position_embedding_type": lambda v: v == "absolute",
            "is_decoder": lambda v: not v,
            "add_cross_attention": lambda v: not v,
        },
    )
    return dict(
        arch="encoder",
        attention="mha",
        n_layers=hf["num_hidden_layers"],
        d_model=hf["hidden_size"],
        n_heads=hf["num_attention_heads"],
        d_ff=hf["intermediate_size"],
        vocab_size=hf["vocab_size"],
        max_seq_len=hf["max_position_embeddings"],
        layer_norm_eps=hf.get("layer_norm_eps", 1e-12),
        norm_placement="post",
        embedding_norm=True,
    )


# --- tensors -> ours


IGNORED = {
    "gpt2": re.compile(
        r"^(lm_head\.weight|transformer\.h\.\d+\.attn\.(masked_)?bias)$"
    ),  # tied head; old causal-mask buffers
    "bert": re.compile(
        r"^(pooler\..*|embeddings\.position_ids)$"
    ),  # the pooler is not part of last_hidden_state
}


def expected_source_names(model_type: str, ours: dict[str, torch.Size]) -> set[str]:
    """The tensor names a folder of `model_type` must hold for a model whose state has `ours` names."""
    if model_type in ("llama", "mistral", "qwen2", MODEL_TYPE):
        return {folder_name(k) for k in ours}
    if model_type == "gpt2":
        names = {
            rename(k, GPT2_NAMES)
            for k in ours
            if ".attn.q_proj" not in k and ".attn.k_proj" not in k and ".attn.v_proj" not in k
        }
        for i in {int(m.group(1)) for k in ours if (m := re.match(r"blocks\.(\d+)\.", k))}:
            names |= {
                f"transformer.h.{i}.attn.c_attn.weight",
                f"transformer.h.{i}.attn.c_attn.bias",
            }
        return names
    names = {rename(k, BERT_NAMES) for k in ours}
    return names | {"embeddings.token_type_embeddings.weight"}


def source_namer(model_type: str) -> Callable[[str], str]:
    """Our tensor name -> the name the folder's own layout gives it (for messages)."""
    rules = {"gpt2": GPT2_NAMES, "bert": BERT_NAMES}.get(model_type, LLAMA_NAMES)
    return lambda ours: rename(ours, rules)


def is_ignored(model_type: str, name: str) -> bool:
    pattern = IGNORED.get(model_type)
    return bool(pattern and pattern.match(name))


def to_our_state(
    model_type: str, source: dict[str, torch.Tensor], config: ModelConfig
) -> dict[str, torch.Tensor]:
    """The folder's tensors (float32) under our names, rewritten exactly where the layouts differ."""
    if model_type in ("llama", "mistral", "qwen2", MODEL_TYPE):
        return {our_name(k): v for k, v in source.items()}
    if model_type == "gpt2":
        state = {}
        for name, tensor in source.items():
            block = re.match(r"transformer\.h\.(\d+)\.attn\.c_attn\.(weight|bias)$", name)
            if block:  # one fused (in, 3*out) Conv1D -> three (out, in) Linear layers
                i, kind = block.groups()
                parts = tensor.split(config.d_model, dim=-1)
                for proj, part in zip(("q_proj", "k_proj", "v_proj"), parts):
                    state[f"blocks.{i}.attn.{proj}.{kind}"] = (
                        part.t() if kind == "weight" else part
                    ).clone(memory_format=torch.contiguous_format)
                continue
            ours = rename(name, GPT2_TO_OURS)
            conv1d = re.search(
                r"\.(c_proj|c_fc)\.weight$", name
            )  # Conv1D stores (in, out): Linear wants (out, in)
            state[ours] = tensor.t().contiguous() if conv1d else tensor
        return state
    state = {
        rename(k, BERT_TO_OURS): v
        for k, v in source.items()
        if k != "embeddings.token_type_embeddings.weight"
    }
    # Only input_ids come in, so every token is of type 0: its embedding is a constant added at every position.
    state["pos_emb.weight"] = (
        state["pos_emb.weight"] + source["embeddings.token_type_embeddings.weight"][0]
    )
    return state
