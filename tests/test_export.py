"""Export: every kind and arch, odd sizes, the fused node and its function, parity, the cache contract."""

import json

import numpy as np
import onnx
import pytest
import torch
from conftest import ALL_KINDS, tiny_model
from passes_helpers import independent_logits_diff

from mhe_edge.contract import KEY_CONFIG, KEY_IO, input_names, output_names
from mhe_edge.exporters import export
from mhe_edge.runtime import create_session

SIZES = {
    "default": dict(),
    # head counts that are not powers of two, d_model not a multiple of 64, head_dim given explicitly
    "odd": dict(
        n_layers=3, d_model=42, n_heads=3, head_dim=14, d_ff=70, vocab_size=61, max_seq_len=40
    ),
}


def _size(attention, name):
    size = dict(SIZES[name])
    if attention == "gqa" and name == "odd":
        size.update(n_heads=6, head_dim=7, n_kv_heads=3)
    return size


@pytest.fixture(scope="module")
def exports(tmp_path_factory):
    """Export each (arch, attention, size) once per module; tests share the files."""
    cache = {}
    folder = tmp_path_factory.mktemp("exports")

    def get(arch, attention, size="default"):
        key = (arch, attention, size)
        if key not in cache:
            model = tiny_model(arch=arch, attention=attention, seed=11, **_size(attention, size))
            report = export(model, folder / f"{arch}-{attention}-{size}.onnx")
            cache[key] = (model, report)
        return cache[key]

    return get


# odd sizes for every decoder and for the MHE encoders: an MHA-family encoder at odd sizes exercises
# nothing an odd decoder and a default encoder do not (and each export costs ~5 s of the suite's budget)
CASES = [
    (attention, arch, size)
    for attention in ALL_KINDS
    for arch in ("decoder", "encoder")
    for size in SIZES
    if size == "default" or arch == "decoder" or attention.startswith("mhe")
]


@pytest.mark.parametrize("attention,arch,size", CASES)
def test_export_structure_and_parity(exports, arch, attention, size):
    model, report = exports(arch, attention, size)
    cfg = model.config
    proto = onnx.load(report.path)
    onnx.checker.check_model(proto, full_check=True)
    assert [i.name for i in proto.graph.input] == input_names(cfg)
    assert [o.name for o in proto.graph.output] == output_names(cfg)
    fused = [
        n
        for n in proto.graph.node
        if n.op_type in ("MHEAttentionAdd", "MHEAttentionMul", "Attention")
    ]
    assert len(fused) == cfg.n_layers
    if cfg.is_mhe:
        assert all(n.domain == "mhe_edge" for n in fused)
        op_type = "MHEAttentionAdd" if attention == "mhe-add" else "MHEAttentionMul"
        assert [(f.domain, f.name) for f in proto.functions] == [("mhe_edge", op_type)] and fused[
            0
        ].op_type == op_type
        assert not [
            n for f in proto.functions for n in f.node if n.op_type == "If"
        ]  # no branching on the mode
        assert {a.name: a.i for a in fused[0].attribute} == {
            "num_heads": cfg.n_heads,
            "is_causal": int(arch == "decoder"),
        }
        assert {imp.domain: imp.version for imp in proto.functions[0].opset_import}[
            ""
        ] == report.opset
    else:
        assert all(n.domain == "" for n in fused) and not proto.functions
    # export measured parity itself; check it again here, independently, on the test's own inputs
    assert independent_logits_diff(cfg, create_session(report.path), model) <= 1e-4
    assert report.parity and report.max_abs_diff <= 1e-4
    if cfg.arch == "decoder":
        assert any("cached" in r.case for r in report.parity)
    if cfg.arch == "decoder":  # the cache is declared with kv_heads heads and dynamic axes
        mask, past = (proto.graph.input[i].type.tensor_type.shape.dim for i in (1, 2))
        assert [d.dim_param for d in mask] == ["batch", "past_sequence + sequence"]
        assert [d.dim_param or d.dim_value for d in past] == [
            "batch",
            cfg.kv_heads,
            "past_sequence",
            cfg.head_dim,
        ]


@pytest.mark.parametrize("attention", ALL_KINDS)
def test_exported_cache_decoding_equals_a_full_pytorch_pass(exports, attention):
    model, report = exports("decoder", attention)
    cfg = model.config
    session = create_session(report.path)
    ids = torch.randint(0, cfg.vocab_size, (2, 12), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        full = model(ids)[0].numpy()
    past = {
        n: np.zeros((2, cfg.kv_heads, 0, cfg.head_dim), np.float32) for n in input_names(cfg)[2:]
    }
    chunks, start = [6, 1, 3, 1, 1], 0
    logits = []
    for T in chunks:
        mask = np.ones((2, start + T), np.int64)
        outputs = dict(
            zip(
                output_names(cfg),
                session.run(
                    None,
                    {
                        "input_ids": ids[:, start : start + T].numpy(),
                        "attention_mask": mask,
                        **past,
                    },
                ),
            )
        )
        past = {n: outputs[n.replace("past_key_values", "present")] for n in past}
        logits.append(outputs["logits"])
        start += T
    assert past["past_key_values.0.key"].shape == (2, cfg.kv_heads, 12, cfg.head_dim)
    assert np.abs(np.concatenate(logits, 1) - full).max() < 1e-4


@pytest.mark.parametrize("attention", ["mhe-add", "mhe-mul", "gqa"])
def test_reference_evaluator_agrees_with_onnx_runtime(exports, attention):
    """onnx.reference is an independent ONNX implementation: it runs the MHE function body itself."""
    from onnx.reference import ReferenceEvaluator

    model, report = exports("decoder", attention)
    cfg = model.config
    rng = np.random.default_rng(0)
    feeds = {
        "input_ids": rng.integers(0, cfg.vocab_size, (2, 3)),
        "attention_mask": np.array([[0] + [1] * 6, [1] * 7]),
    }
    for name in input_names(cfg)[2:]:
        feeds[name] = rng.standard_normal((2, cfg.kv_heads, 4, cfg.head_dim)).astype(np.float32)
    ort_out = create_session(report.path).run(None, feeds)
    ref_out = ReferenceEvaluator(report.path).run(None, feeds)
    for a, b in zip(ort_out, ref_out):
        assert a.shape == b.shape and np.abs(a - b).max() < 1e-4


def test_pair_tied_rope_mhe_mul_exports_full_head_embeddings_with_parity(tmp_path):
    """rope_pair_tied_embeddings stores E_Q and E_K as (n, d/2): the export carries them as (n, d) constants,
    equal on both halves of every rotation pair, and matches PyTorch (fresh and cached), before and after
    the fold to one standard Attention per layer."""
    from onnx import numpy_helper

    from mhe_edge.passes import optimize

    model = tiny_model(seed=12, n_layers=1, position="rope", rope_pair_tied_embeddings=True)
    with (
        torch.no_grad()
    ):  # every stored value its own, far from 1: a fold that mixed pairs up fails
        for block in model.blocks:
            for name in ("q_head_embeddings", "k_head_embeddings", "v_head_embeddings"):
                getattr(block.attn, name).add_(0.5 * torch.randn_like(getattr(block.attn, name)))
    report = export(model, tmp_path / "tied.onnx")
    assert report.max_abs_diff <= 1e-4 and any("cached" in r.case for r in report.parity)
    proto = onnx.load(report.path)
    constants = {t.name: numpy_helper.to_array(t) for t in proto.graph.initializer}
    n, d = model.config.n_heads, model.config.head_dim
    for node, block in zip(
        [n for n in proto.graph.node if n.op_type == "MHEAttentionMul"], model.blocks, strict=True
    ):
        e_q, e_k = constants[node.input[3]], constants[node.input[4]]
        assert e_q.shape == e_k.shape == (n, d)
        assert np.array_equal(e_q[:, : d // 2], e_q[:, d // 2 :])
        assert np.array_equal(e_k[:, d // 2 :], block.attn.k_head_embeddings.detach().numpy())
    assert independent_logits_diff(model.config, create_session(report.path), model) <= 1e-4
    folded = optimize(report.path, tmp_path / "folded.onnx")
    assert folded.max_abs_diff <= 1e-4 and folded.op_counts_after.get("Attention") == 1


def test_metadata_lets_an_app_drive_the_file(exports, cli):
    model, report = exports("decoder", "mhe-mul")
    props = {p.key: p.value for p in onnx.load(report.path).metadata_props}
    assert json.loads(props[KEY_CONFIG]) == model.config.to_dict()
    io = json.loads(props[KEY_IO])
    assert (
        io["kv_cache"]["kv_heads"] == 1 and io["kv_cache"]["past_key"] == "past_key_values.{i}.key"
    )
    result = cli("inspect", report.path, "--json")
    described = json.loads(result.stdout)
    assert described["op_counts"]["mhe_edge.MHEAttentionMul"] == model.config.n_layers
    assert described["functions"] == ["mhe_edge.MHEAttentionMul"]
    assert described["file_bytes"] == report.file_bytes
    assert described["parameter_bytes"] > 0.9 * 4 * described["parameters"]["total"]


def test_external_data_end_to_end_at_the_newest_opset(tmp_path, cli):
    """Export with external data at MAX_EXPORT_OPSET; then optimize and package it through the CLI."""
    from mhe_edge.contract import MAX_EXPORT_OPSET

    model = tiny_model(attention="mhe-add", d_model=64)
    report = export(model, tmp_path / "m.onnx", external_data=True, opset=MAX_EXPORT_OPSET)
    assert report.external_data and (tmp_path / "m.onnx.data").is_file()
    assert (
        report.max_abs_diff <= 1e-4
        and report.file_bytes > (tmp_path / "m.onnx.data").stat().st_size
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx", "m.onnx.data"]
    again = cli(
        "export",
        tmp_path / "m.onnx",
        "-o",
        tmp_path / "m.onnx",
        "--opset",
        str(MAX_EXPORT_OPSET + 1),
    )
    assert again.code == 2 and "--opset" in again.stderr
    optimized = cli("optimize", tmp_path / "m.onnx", "--target", "ort", "--json")
    assert optimized.code == 0, optimized.stderr
    assert json.loads(optimized.stdout)["max_abs_diff"] <= 1e-4
    packaged = cli("package", tmp_path / "m.onnx", "-o", tmp_path / "pkg", "--json")
    assert packaged.code == 0, packaged.stderr
    assert json.loads(packaged.stdout)["check"]["status"] in (
        "passed",
        "skipped: onnxruntime-genai is not installed (pip install 'mhe-edge[genai]')",
    )


def test_cli_export_json(tmp_path, cli):
    from mhe_edge import save_checkpoint

    save_checkpoint(tiny_model(attention="mhe-mul"), tmp_path / "m.safetensors")
    result = cli("export", tmp_path / "m.safetensors", "--json")
    assert result.code == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["path"] == str(tmp_path / "m.onnx") and report["max_abs_diff"] <= 1e-4
    assert {"load", "trace", "attach functions", "check", "validate"} == set(report["seconds"])


@pytest.mark.parametrize(
    "make_args,code,fragment",
    [
        (lambda d: [d / "notes.pt"], 3, "not an mhe-edge checkpoint"),
        (lambda d: [d / "m.pt", "--opset", "18"], 2, "--opset must be 23 to 25, not 18"),
        (lambda d: [d / "m.pt", "-o", d / "missing" / "m.onnx"], 2, "does not exist"),
        (lambda d: [d / "m.pt", "-o", d / "m.txt"], 2, "must end in .onnx"),
        (
            lambda d: [d / "m.pt", "--atol", "1e-12", "--rtol", "0"],
            6,
            "ONNX Runtime disagrees with PyTorch",
        ),
        (lambda d: [d / "m.pt", "--atol", "0"], 2, "--atol must be 1e-12 to 1, not 0.0"),
        (lambda d: [d / "m.pt", "--rtol", "-1"], 2, "--rtol must be 0 to 1, not -1.0"),
    ],
)
def test_bad_export_requests(tmp_path, cli, make_args, code, fragment):
    from mhe_edge import save_checkpoint

    save_checkpoint(tiny_model(attention="mhe-add"), tmp_path / "m.pt")
    (tmp_path / "notes.pt").write_text("not a model")
    before = sorted(p.name for p in tmp_path.iterdir())
    result = cli("export", *make_args(tmp_path))
    assert result.code == code, result
    assert fragment in result.stderr and "Traceback" not in result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == before, "a file was left behind"


def test_existing_output_needs_force(tmp_path, cli):
    from mhe_edge import save_checkpoint

    save_checkpoint(tiny_model(attention="mqa"), tmp_path / "m.pt")
    (tmp_path / "m.onnx").write_bytes(b"precious")
    result = cli("export", tmp_path / "m.pt")
    assert result.code == 2 and "--force" in result.stderr
    assert (tmp_path / "m.onnx").read_bytes() == b"precious"
    assert cli("export", tmp_path / "m.pt", "--force").code == 0
    assert onnx.load(tmp_path / "m.onnx").graph.node
