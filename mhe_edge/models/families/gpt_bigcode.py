"""GPTBigCode folders with `multi_query=True` (StarCoder's layout): learned positions, LayerNorm, GELU,
one fused Linear for Q (every head) and the single shared K and V. What `mhe-edge fold` writes for a
learned-position MHE model, so a folded folder reads back as the multi-query model it is."""

from __future__ import annotations

import re

import torch

from mhe_edge.config import ModelConfig
from mhe_edge.models.families import family
from mhe_edge.models.families.gpt2 import ACTIVATIONS, gpt2_like_config
from mhe_edge.models.families.naming import inverse, rename, require

BIGCODE_NAMES = [
    (r"^tok_emb\.", "transformer.wte."),
    (r"^pos_emb\.", "transformer.wpe."),
    (r"^blocks\.(\d+)\.ln_attn\.", r"transformer.h.\1.ln_1."),
    (r"^blocks\.(\d+)\.ln_mlp\.", r"transformer.h.\1.ln_2."),
    (r"^blocks\.(\d+)\.attn\.out_proj\.", r"transformer.h.\1.attn.c_proj."),
    (r"^blocks\.(\d+)\.mlp\.fc_in\.", r"transformer.h.\1.mlp.c_fc."),
    (r"^blocks\.(\d+)\.mlp\.fc_out\.", r"transformer.h.\1.mlp.c_proj."),
    (r"^ln_f\.", "transformer.ln_f."),
]
BIGCODE_TO_OURS = inverse(BIGCODE_NAMES)
FUSED = re.compile(r"transformer\.h\.(\d+)\.attn\.c_attn\.(weight|bias)$")


def _expected(ours: dict[str, torch.Size]) -> set[str]:
    names = {rename(k, BIGCODE_NAMES) for k in ours if not re.search(r"\.attn\.[qkv]_proj\.", k)}
    for i in {int(m.group(1)) for k in ours if (m := re.match(r"blocks\.(\d+)\.", k))}:
        names |= {f"transformer.h.{i}.attn.c_attn.weight", f"transformer.h.{i}.attn.c_attn.bias"}
    return names


def _shapes(ours: dict[str, torch.Size]) -> dict[str, tuple[int | None, ...]]:
    """Linear layers as ours, but Q, K and V fused into one: (n*d + 2*d, d_model) and its bias."""
    shapes: dict[str, tuple[int | None, ...]] = {}
    for name, shape in ours.items():
        qkv = re.match(r"blocks\.(\d+)\.attn\.q_proj\.(weight|bias)$", name)
        if qkv:
            i, kind = qkv.groups()
            rows = shape[0] + 2 * ours[name.replace("q_proj", "k_proj")][0]
            shapes[f"transformer.h.{i}.attn.c_attn.{kind}"] = (
                (rows, shape[1]) if kind == "weight" else (rows,)
            )
        elif not re.search(r"\.attn\.[kv]_proj\.", name):
            shapes[rename(name, BIGCODE_NAMES)] = tuple(shape)
    return shapes


def _to_ours(source: dict[str, torch.Tensor], config: ModelConfig) -> dict[str, torch.Tensor]:
    state = {}
    sizes = (config.n_heads * config.head_dim, config.head_dim, config.head_dim)
    for name, tensor in source.items():
        fused = FUSED.match(name)
        if fused:  # rows: every query head, then the one key head, then the one value head
            i, kind = fused.groups()
            for proj, part in zip(("q_proj", "k_proj", "v_proj"), tensor.split(sizes, dim=0)):
                state[f"blocks.{i}.attn.{proj}.{kind}"] = part.clone()
            continue
        state[rename(name, BIGCODE_TO_OURS)] = tensor
    return state


@family(
    "gpt_bigcode",
    BIGCODE_NAMES,
    ignored=re.compile(r"^transformer\.h\.\d+\.attn\.masked_bias$"),
    stores_our_shapes=False,
    shapes=_shapes,
    tied_head="lm_head.weight",
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
                "multi_query",
                "tie_word_embeddings",
                "scale_attn_weights",
                "add_cross_attention",
            )
        },
        "bos_token_id": "token ids",
        "eos_token_id": "token ids",
    },
)
def gpt_bigcode(hf: dict) -> ModelConfig:
    require(
        hf,
        "gpt_bigcode",
        {
            "multi_query": lambda v: v is True,  # the per-head interleaved layout is not read
            "activation_function": lambda v: v in ACTIVATIONS,
            "scale_attn_weights": lambda v: v is True,
            "add_cross_attention": lambda v: not v,
        },
    )
    return gpt2_like_config(hf, attention="mqa", default_activation="gelu_pytorch_tanh")
