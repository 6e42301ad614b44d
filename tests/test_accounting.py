import pytest
from conftest import ALL_KINDS, tiny_config

from mhe_edge import count_parameters, kv_cache_bytes_per_token
from mhe_edge.accounting import attention_parameters
from mhe_edge.config import ModelConfig, preset_config
from mhe_edge.models import build_model


@pytest.mark.parametrize("arch", ["encoder", "decoder"])
@pytest.mark.parametrize("attention", ALL_KINDS)
@pytest.mark.parametrize(
    "shape", [dict(), dict(d_model=50, n_heads=5, head_dim=12), dict(n_heads=6, d_model=48)]
)
def test_formulas_equal_real_counts(arch, attention, shape):
    if attention == "gqa" and shape.get("n_heads") == 5:
        shape = dict(shape, n_heads=6, d_model=48, head_dim=None)
    cfg = tiny_config(arch, attention, **shape)
    model = build_model(cfg)
    counted = count_parameters(cfg)
    assert counted["total"] == sum(p.numel() for p in model.parameters())
    assert counted["attention"] == sum(p.numel() for b in model.blocks for p in b.attn.parameters())


def test_mhe_qkv_is_single_head_attention_plus_3nd_at_base_size():
    mhe = preset_config("base", attention="mhe-mul")
    n, d, D = mhe.n_heads, mhe.head_dim, mhe.d_model
    out_proj = n * d * D + D
    single_head_qkv = 3 * (D * d + d)  # one head's Q, K, V projections with biases
    assert attention_parameters(mhe) - out_proj == single_head_qkv + 3 * n * d
    mha = preset_config("base", attention="mha")
    assert attention_parameters(mha) - out_proj == 3 * (D * n * d + n * d)
    # The paper's point: MHE's Q/K/V is about n times smaller than MHA's.
    assert (attention_parameters(mha) - out_proj) / (
        attention_parameters(mhe) - out_proj
    ) > n * 0.95  # 11.8x at base size


def test_kv_cache_bytes_per_token():
    cfg = ModelConfig(attention="mha", n_layers=6, d_model=512, n_heads=8)
    assert kv_cache_bytes_per_token(cfg) == 2 * 6 * 8 * 64 * 4
    mhe = ModelConfig(attention="mhe-add", n_layers=6, d_model=512, n_heads=8)
    assert kv_cache_bytes_per_token(mhe) * 8 == kv_cache_bytes_per_token(cfg)
    assert kv_cache_bytes_per_token(mhe, bytes_per_element=2) == 2 * 6 * 64 * 2
