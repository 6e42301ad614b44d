"""The registry of model families: one description per model_type, found by import alone."""

import json
import re

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mhe_edge.config import ModelConfig
from mhe_edge.errors import CheckpointError
from mhe_edge.models import families
from mhe_edge.models.transformer import build_model


def test_every_family_registers_itself():
    assert families.known() == [
        "mhe_edge",
        "bert",
        "gpt2",
        "gpt_bigcode",
        "llama",
        "mistral",
        "qwen2",
    ]
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


LLAMA = {
    "model_type": "llama",
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "num_hidden_layers": 2,
    "hidden_size": 64,
    "intermediate_size": 128,
    "vocab_size": 100,
    "max_position_embeddings": 64,
}


@pytest.mark.parametrize(
    "field,value,message",
    [
        ("num_attention_heads", 0, "num_attention_heads=0 is not a positive integer"),
        ("rope_theta", "abc", "rope_theta='abc' is not a positive finite number"),
        ("rope_parameters", [1], "rope_parameters=[1] is not an object"),
        ("tie_word_embeddings", "yes", "tie_word_embeddings='yes' is not true or false"),
        ("head_dim", 0, "head_dim=0 is not a positive integer"),
        ("hidden_size", None, "llama config has no hidden_size"),
    ],
)
def test_a_config_field_of_the_wrong_kind_is_named(tmp_path, field, value, message):
    from mhe_edge.models.folder import read_folder

    (tmp_path / "config.json").write_text(json.dumps({**LLAMA, field: value}))
    with pytest.raises(CheckpointError, match=re.escape(message)):
        read_folder(tmp_path)


def test_our_folders_carry_pair_tied_head_embeddings_and_refuse_a_mismatch(tmp_path):
    """rope_pair_tied_embeddings is written as mhe_edge_rope_pair_tied_embeddings (only when set) and read
    back with its (n, d/2) tensors; the key on a folder with (n, d) tensors, or of the wrong kind, is refused."""
    from conftest import tiny_model

    from mhe_edge.models.folder import read_folder, save_folder

    tied = tiny_model(position="rope", rope_pair_tied_embeddings=True)
    folder = save_folder(tied, tmp_path / "tied")
    assert json.loads((folder / "config.json").read_text())["mhe_edge_rope_pair_tied_embeddings"]
    config, state = read_folder(folder)
    assert config == tied.config
    assert state["blocks.0.attn.q_head_embeddings"].shape == (4, 6)  # d = 12
    untied = save_folder(tiny_model(position="rope"), tmp_path / "untied")
    hf = json.loads((untied / "config.json").read_text())
    assert "mhe_edge_rope_pair_tied_embeddings" not in hf
    for value, message in ((True, "shape"), ("yes", "is not true or false")):
        (untied / "config.json").write_text(
            json.dumps({**hf, "mhe_edge_rope_pair_tied_embeddings": value})
        )
        with pytest.raises(CheckpointError, match=message):
            read_folder(untied)


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats() | st.text(max_size=8),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=4), children, max_size=3)
    ),
    max_leaves=6,
)


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(model_type=st.sampled_from(["llama", "qwen2", "gpt2", "bert", "mhe_edge"]), data=st.data())
def test_any_config_value_gives_a_checkpoint_error_never_a_crash(tmp_path, model_type, data):
    """Whatever a config.json field holds, reading the folder ends in one CheckpointError (there are no
    weights here, so no config can succeed)."""
    from mhe_edge.models.folder import read_folder

    family = families.get(model_type)
    names = sorted(family.schema) or ["hidden_size"]
    field = data.draw(st.sampled_from(names))
    value = data.draw(JSON_VALUES)
    (tmp_path / "config.json").write_text(
        json.dumps({**LLAMA, "model_type": model_type, field: value})
    )
    with pytest.raises(CheckpointError):
        read_folder(tmp_path)
