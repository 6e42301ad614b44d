"""BERT folders: an encoder with post-norm blocks, an embedding norm and token-type embeddings."""

from __future__ import annotations

import re

import torch

from mhe_edge.config import ModelConfig
from mhe_edge.models.families import family
from mhe_edge.models.families.naming import inverse, rename, require, with_special_tokens

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
BERT_TO_OURS = inverse(BERT_NAMES)
TOKEN_TYPES = "embeddings.token_type_embeddings.weight"


def _to_ours(source: dict[str, torch.Tensor], config: ModelConfig) -> dict[str, torch.Tensor]:
    state = {rename(k, BERT_TO_OURS): v for k, v in source.items() if k != TOKEN_TYPES}
    # Only input_ids come in, so every token is of type 0: its embedding is a constant added at every position.
    state["pos_emb.weight"] = state["pos_emb.weight"] + source[TOKEN_TYPES][0]
    return state


@family(
    "bert",
    BERT_NAMES,
    ignored=re.compile(r"^(pooler\..*|embeddings\.position_ids)$"),  # not part of last_hidden_state
    stores_our_shapes=False,
    # our tensors as they are, and the token-type table: any number of types, of the model's width
    shapes=lambda ours: {
        **{rename(k, BERT_NAMES): tuple(v) for k, v in ours.items()},
        TOKEN_TYPES: (None, ours["tok_emb.weight"][1]),
    },
    expected=lambda ours: {rename(k, BERT_NAMES) for k in ours} | {TOKEN_TYPES},
    to_ours=_to_ours,
    schema={
        **{
            name: "positive int, required"
            for name in (
                "num_hidden_layers",
                "hidden_size",
                "num_attention_heads",
                "intermediate_size",
                "vocab_size",
                "max_position_embeddings",
            )
        },
        "layer_norm_eps": "positive number",
        "hidden_act": "text",
        "position_embedding_type": "text",
        **{name: "bool" for name in ("is_decoder", "add_cross_attention")},
        "bos_token_id": "token ids",
        "eos_token_id": "token ids",
    },
)
def bert(hf: dict) -> ModelConfig:
    require(
        hf,
        "bert",
        {
            "hidden_act": lambda v: v == "gelu",
            "position_embedding_type": lambda v: v == "absolute",
            "is_decoder": lambda v: not v,
            "add_cross_attention": lambda v: not v,
        },
    )
    fields = dict(
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
    return ModelConfig(**with_special_tokens(hf, fields))
