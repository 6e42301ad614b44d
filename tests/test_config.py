import pytest

from mhe_edge.config import ModelConfig, preset_config
from mhe_edge.errors import ConfigError


def test_head_dim_defaults_to_width_over_heads():
    assert ModelConfig(d_model=64, n_heads=4).head_dim == 16


def test_indivisible_width_needs_explicit_head_dim():
    with pytest.raises(ConfigError, match="not divisible by n_heads"):
        ModelConfig(d_model=50, n_heads=4)
    assert ModelConfig(d_model=50, n_heads=4, head_dim=12).head_dim == 12


def test_gqa_heads_must_divide():
    with pytest.raises(ConfigError, match="not divisible by n_kv_heads"):
        ModelConfig(attention="gqa", n_heads=6, n_kv_heads=4, d_model=48)
    with pytest.raises(ConfigError, match="needs n_kv_heads"):
        ModelConfig(attention="gqa")


@pytest.mark.parametrize("attention,kv", [("mha", 4), ("mqa", 1), ("mhe-add", 1), ("mhe-mul", 1)])
def test_kv_heads_follow_the_attention_kind(attention, kv):
    assert ModelConfig(attention=attention, n_heads=4, d_model=64).kv_heads == kv


@pytest.mark.parametrize(
    "field,value",
    [("n_layers", 0), ("d_model", -1), ("vocab_size", 2.5), ("arch", "rnn"), ("attention", "mla")],
)
def test_bad_fields_are_refused(field, value):
    with pytest.raises(ConfigError):
        ModelConfig(**{field: value})


def test_presets():
    tiny = preset_config("tiny")
    assert (tiny.n_layers, tiny.d_model, tiny.n_heads) == (2, 64, 4)
    small = preset_config("small", attention="gqa")
    assert (small.n_layers, small.d_model, small.n_heads, small.d_ff, small.n_kv_heads) == (
        6,
        512,
        8,
        2048,
        2,
    )
    base = preset_config("base", arch="encoder", attention="mha")
    assert (base.n_layers, base.d_model, base.n_heads, base.kv_heads) == (12, 768, 12, 12)
    with pytest.raises(ConfigError, match="unknown preset"):
        preset_config("huge")


def test_config_dict_round_trip_and_unknown_fields():
    cfg = ModelConfig(attention="gqa", n_kv_heads=2)
    assert ModelConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ConfigError, match="unknown config field"):
        ModelConfig.from_dict({**cfg.to_dict(), "rope": True})
