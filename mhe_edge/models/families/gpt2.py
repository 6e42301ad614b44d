"""GPT-2 folders: learned positions, LayerNorm, GELU (tanh), one fused Conv1D for Q/K/V."""

from __future__ import annotations

import re

import torch

from mhe_edge.config import ModelConfig
from mhe_edge.models.families import family
from mhe_edge.models.families.naming import inverse, rename, require, with_special_tokens

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
GPT2_TO_OURS = inverse(GPT2_NAMES)
ACTIVATIONS = {"gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh", "gelu": "gelu"}


def _expected(ours: dict[str, torch.Size]) -> set[str]:
    names = {
        rename(k, GPT2_NAMES)
        for k in ours
        if ".attn.q_proj" not in k and ".attn.k_proj" not in k and ".attn.v_proj" not in k
    }
    for i in {int(m.group(1)) for k in ours if (m := re.match(r"blocks\.(\d+)\.", k))}:
        names |= {f"transformer.h.{i}.attn.c_attn.weight", f"transformer.h.{i}.attn.c_attn.bias"}
    return names


def _shapes(ours: dict[str, torch.Size]) -> dict[str, tuple[int | None, ...]]:
    """Conv1D weights are stored (in, out), and Q/K/V fused into one (in, 3 * out) Conv1D."""
    shapes: dict[str, tuple[int | None, ...]] = {}
    for name, shape in ours.items():
        qkv = re.match(r"blocks\.(\d+)\.attn\.q_proj\.(weight|bias)$", name)
        if qkv:
            i, kind = qkv.groups()
            fused = (shape[1], 3 * shape[0]) if kind == "weight" else (3 * shape[0],)
            shapes[f"transformer.h.{i}.attn.c_attn.{kind}"] = fused
        elif not re.search(r"\.attn\.[kv]_proj\.", name):
            stored = rename(name, GPT2_NAMES)
            conv1d = re.search(r"\.(c_proj|c_fc)\.weight$", stored)
            shapes[stored] = (shape[1], shape[0]) if conv1d else tuple(shape)
    return shapes


def _to_ours(source: dict[str, torch.Tensor], config: ModelConfig) -> dict[str, torch.Tensor]:
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
        # Conv1D stores (in, out): Linear wants (out, in)
        conv1d = re.search(r"\.(c_proj|c_fc)\.weight$", name)
        state[rename(name, GPT2_TO_OURS)] = tensor.t().contiguous() if conv1d else tensor
    return state


@family(
    "gpt2",
    GPT2_NAMES,
    # the tied head, and old causal-mask buffers
    ignored=re.compile(r"^(lm_head\.weight|transformer\.h\.\d+\.attn\.(masked_)?bias)$"),
    stores_our_shapes=False,
    shapes=_shapes,
    expected=_expected,
    to_ours=_to_ours,
    schema={
        **{
            name: "positive int, required"
            for name in ("n_embd", "n_layer", "n_head", "vocab_size", "n_positions")
        },
        "n_inner": "positive int",
        "layer_norm_epsilon": "positive number",
        "activation_function": "text",
        **{
            name: "bool"
            for name in (
                "tie_word_embeddings",
                "scale_attn_weights",
                "scale_attn_by_inverse_layer_idx",
                "add_cross_attention",
            )
        },
        "bos_token_id": "token ids",
        "eos_token_id": "token ids",
    },
)
def gpt2(hf: dict) -> ModelConfig:
    require(
        hf,
        "gpt2",
        {
            "activation_function": lambda v: v in ACTIVATIONS,
            "scale_attn_weights": lambda v: v is True,
            "scale_attn_by_inverse_layer_idx": lambda v: not v,
            "add_cross_attention": lambda v: not v,
        },
    )
    return gpt2_like_config(hf, attention="mha", default_activation="gelu_new")


def gpt2_like_config(hf: dict, attention: str, default_activation: str) -> ModelConfig:
    """The config fields GPT-2 and GPTBigCode name alike (n_embd, n_layer, ...), once checked."""
    width = hf["n_embd"]
    fields = dict(
        arch="decoder",
        attention=attention,
        n_layers=hf["n_layer"],
        d_model=width,
        n_heads=hf["n_head"],
        d_ff=hf.get("n_inner") or 4 * width,
        vocab_size=hf["vocab_size"],
        max_seq_len=hf["n_positions"],
        layer_norm_eps=hf.get("layer_norm_epsilon", 1e-5),
        mlp=ACTIVATIONS[hf.get("activation_function", default_activation)],
        tie_embeddings=bool(hf.get("tie_word_embeddings", True)),
    )
    return ModelConfig(**with_special_tokens(hf, fields))
