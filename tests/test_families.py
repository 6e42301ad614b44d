"""The registry of model families: one description per model_type, found by import alone."""

import pytest
import torch

from mhe_edge.config import ModelConfig
from mhe_edge.errors import CheckpointError
from mhe_edge.models import families
from mhe_edge.models.transformer import build_model


def test_every_family_registers_itself():
    assert families.known() == ["mhe_edge", "bert", "gpt2", "llama", "mistral", "qwen2"]
    with pytest.raises(
        CheckpointError, match="model_type 'mamba' is not supported; mhe-edge reads"
    ):
        families.get("mamba")
    with pytest.raises(CheckpointError, match="model_type None"):
        families.get(None)
    with pytest.raises(ValueError, match="registered twice"):
        families.family("llama", [])(lambda hf: None)


@pytest.mark.parametrize("model_type", ["mhe_edge", "llama", "qwen2"])
def test_names_round_trip_for_the_layouts_that_store_our_tensors(model_type):
    family = families.get(model_type)
    config = ModelConfig(
        attention="gqa", n_kv_heads=2, position="rope", norm="rmsnorm", mlp="swiglu"
    )
    with torch.device("meta"):
        ours = build_model(config).state_dict()
    source = {family.source_name(k): v for k, v in ours.items()}
    assert set(source) == family.expected_names({k: v.shape for k, v in ours.items()})
    assert set(family.to_our_state(source, config)) == set(ours)
    assert family.stores_our_shapes


def test_gpt2_fuses_qkv_and_bert_drops_its_pooler():
    gpt2, bert = families.get("gpt2"), families.get("bert")
    config = ModelConfig(attention="mha", tie_embeddings=True)
    with torch.device("meta"):
        ours = {k: v.shape for k, v in build_model(config).state_dict().items()}
    expected = gpt2.expected_names(ours)
    assert "transformer.h.0.attn.c_attn.weight" in expected
    assert not any("q_proj" in name for name in expected)
    assert gpt2.is_ignored("lm_head.weight") and not gpt2.stores_our_shapes
    assert bert.is_ignored("pooler.dense.weight") and not bert.is_ignored(
        "embeddings.LayerNorm.weight"
    )
