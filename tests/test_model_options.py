"""Today's architecture options with every attention kind: RoPE (on the shared projections for MHE),
RMSNorm, SwiGLU and tanh-GELU, biases off, tied embeddings, post-LN encoders. Each model is saved as a
folder, exported (parity against PyTorch inside), and optimized to one fused attention per layer, with a
single KV head for MHE, equal to the export within 1e-4."""

import pytest
import torch
from conftest import ALL_KINDS

from mhe_edge import count_parameters, export, init_model, load_model, optimize
from mhe_edge.models.attention import reference_attention, use_attention_core

OPTION_SETS = {
    "llama-shaped": dict(
        position="rope",
        norm="rmsnorm",
        mlp="swiglu",
        tie_embeddings=True,
        qkv_bias=False,
        out_bias=False,
        mlp_bias=False,
    ),
    "gpt2-shaped": dict(position="learned", norm="layernorm", mlp="gelu_tanh"),
    "bert-shaped": dict(
        arch="encoder", position="rope", norm_placement="post", embedding_norm=True, mlp="gelu"
    ),
}


def _init(tmp_path, attention, options):
    options = dict(options)
    arch = options.pop("arch", "decoder")
    extra = {"n_kv_heads": 2} if attention == "gqa" else {}
    return init_model(
        tmp_path / "model",
        arch=arch,
        attention=attention,
        preset="tiny",
        n_layers=2,
        d_model=64,
        n_heads=4,
        d_ff=96,
        vocab_size=97,
        max_seq_len=64,
        seed=5,
        **extra,
        **options,
    )


# MHE with every option set; MHA, MQA and GQA with the Llama-shaped one (their GPT-2- and BERT-shaped
# exports are covered by test_export.py's kinds and archs, and each costs ~5 s of the suite's budget)
KIND_OPTIONS = [
    (attention, options)
    for attention in ALL_KINDS
    for options in OPTION_SETS
    if attention.startswith("mhe") or options == "llama-shaped"
]


@pytest.mark.parametrize("attention,options", KIND_OPTIONS)
def test_every_kind_with_every_option_exports_and_folds(tmp_path, attention, options):
    init = _init(tmp_path, attention, OPTION_SETS[options])
    model = load_model(init.path)
    assert count_parameters(model.config)["total"] == sum(p.numel() for p in model.parameters())
    exported = export(init.path, tmp_path / "model.onnx")
    assert exported.max_abs_diff <= 1e-4
    targets = ["std", "ort"] if model.config.arch == "decoder" else ["std"]
    for target in targets:
        report = optimize(tmp_path / "model.onnx", tmp_path / f"{target}.onnx", target=target)
        assert report.max_abs_diff <= 1e-4
        fused = "com.microsoft.GroupQueryAttention" if target == "ort" else "Attention"
        assert report.op_counts_after.get(fused) == 2 and not [
            op for op in report.op_counts_after if op.startswith("mhe_edge.")
        ]
        if model.config.is_mhe:
            import onnx

            nodes = [
                n for n in onnx.load(report.output).graph.node if n.op_type == fused.split(".")[-1]
            ]
            assert all({a.name: a.i for a in n.attribute}["kv_num_heads"] == 1 for n in nodes)


@pytest.mark.parametrize("attention", ["mhe-add", "mhe-mul", "gqa"])
def test_rope_cached_decoding_equals_a_full_pass(tmp_path, attention):
    model = load_model(_init(tmp_path, attention, OPTION_SETS["llama-shaped"]).path)
    ids = torch.randint(0, 97, (2, 9), generator=torch.Generator().manual_seed(0))
    with torch.no_grad(), use_attention_core(reference_attention):
        full, _ = model(ids)
        _, cache = model(ids[:, :5])
        stepped = []
        for t in range(5, 9):
            logits, cache = model(ids[:, t : t + 1], cache)
            stepped.append(logits)
    assert torch.allclose(torch.cat(stepped, dim=1), full[:, 5:], atol=1e-5)


def test_rope_is_applied_before_the_head_embeddings():
    """MHE-ADD's key embedding has no effect only if RoPE rotates the shared key before E_K is added."""
    from mhe_edge.config import preset_config
    from mhe_edge.models import build_model

    model = build_model(preset_config("tiny-llama", attention="mhe-add"), seed=1)
    ids = torch.randint(0, 1000, (1, 12), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        before = model(ids)[0]
        for block in model.blocks:
            block.attn.k_head_embeddings.add_(torch.randn_like(block.attn.k_head_embeddings))
        assert torch.allclose(model(ids)[0], before, atol=1e-4)
        for block in model.blocks:
            block.attn.v_head_embeddings.add_(torch.randn_like(block.attn.v_head_embeddings))
        assert not torch.allclose(model(ids)[0], before, atol=1e-2)


def test_pair_tied_head_embeddings_through_init_checkpoints_and_folders(tmp_path, cli):
    """`init --rope-pair-tied-embeddings`: (n, d/2) query and key head embeddings in every format it writes,
    read back as the same model; the parameter count knows the tables are half as wide."""
    shape = ["--preset", "tiny-llama", "--layers", "1", "--vocab-size", "97", "--seed", "2"]
    models = {}
    for name in ("m.pt", "m.safetensors", "m"):
        result = cli("init", tmp_path / name, *shape, "--rope-pair-tied-embeddings", "--json")
        assert result.code == 0, result.stderr
        models[name] = load_model(tmp_path / name)
    plain = load_model(init_model(tmp_path / "plain", preset="tiny-llama", n_layers=1).path)
    for model in models.values():
        attn, config = model.blocks[0].attn, model.config
        assert config.rope_pair_tied_embeddings and attn.q_head_embeddings.shape == (4, 8)
        assert count_parameters(config)["total"] == sum(p.numel() for p in model.parameters())
        assert torch.equal(attn.k_head_embeddings, models["m"].blocks[0].attn.k_head_embeddings)
    n, d = 4, 16  # E_Q and E_K lose n * d / 2 values each
    assert (
        count_parameters(plain.config)["attention"] - count_parameters(config)["attention"] == n * d
    )
