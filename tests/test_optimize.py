"""`mhe-edge optimize`: the pipeline on every kind, precision variants, the report, and refusals."""

import json

import numpy as np
import onnx
import pytest
from passes_helpers import exported, independent_logits_diff

from mhe_edge.passes import optimize
from mhe_edge.runtime import create_session


@pytest.mark.parametrize("target", ["std", "ort"])
@pytest.mark.parametrize("attention", ["mha", "mqa", "gqa", "mhe-add", "mhe-mul"])
def test_optimize_every_kind_is_exact_and_never_larger(tmp_path, attention, target):
    model, path = exported(tmp_path, attention=attention, d_model=64)
    report = optimize(path, tmp_path / "opt.onnx", target=target)
    assert report.bytes_after <= report.bytes_before
    assert report.max_abs_diff <= 1e-4
    assert (
        independent_logits_diff(
            model.config, create_session(tmp_path / "opt.onnx"), create_session(path)
        )
        <= 1e-4
    )
    after = report.op_counts_after
    assert not [op for op in after if op.startswith("mhe_edge.")]
    fused = "com.microsoft.GroupQueryAttention" if target == "ort" else "Attention"
    assert after.get(fused) == model.config.n_layers
    onnx.checker.check_model(str(tmp_path / "opt.onnx"), full_check=True)


@pytest.mark.parametrize("attention", ["mhe-add", "mhe-mul", "mha"])
def test_fp16_is_close_and_agrees_on_argmax(tmp_path, attention):
    model, path = exported(tmp_path, attention=attention, d_model=64)
    report = optimize(path, tmp_path / "fp16.onnx", fp16=True)
    assert report.precision == "fp16" and report.max_abs_diff <= 1e-2
    agreement = [r.argmax_agreement for r in report.parity if r.argmax_agreement is not None]
    assert agreement and min(agreement) >= 0.99
    assert report.bytes_after < 0.6 * report.bytes_before
    session = create_session(tmp_path / "fp16.onnx")
    types = {i.name: i.type for i in [*session.get_inputs(), *session.get_outputs()]}
    assert types["input_ids"] == "tensor(int64)"
    assert (
        types["past_key_values.0.key"]
        == types["present.0.key"]
        == types["logits"]
        == "tensor(float16)"
    )
    assert not [
        t
        for t in onnx.load(tmp_path / "fp16.onnx").graph.initializer
        if t.data_type == onnx.TensorProto.FLOAT and len(t.dims)
    ]


def test_fp16_encoder(tmp_path):
    _, path = exported(tmp_path, arch="encoder", attention="mhe-mul", d_model=64)
    report = optimize(path, tmp_path / "fp16.onnx", fp16=True)
    assert report.max_abs_diff <= 1e-2


def test_int8_reports_agreement(tmp_path, cli):
    _, path = exported(tmp_path, attention="mhe-add", d_model=64)
    result = cli("optimize", path, "-o", tmp_path / "int8.onnx", "--int8", "--json")
    assert result.code == 0, result.stderr
    report = json.loads(result.stdout)
    assert (
        report["precision"] == "int8" and report["op_counts"]["after"].get("MatMulInteger", 0) > 0
    )
    assert (
        0.0 <= report["argmax_agreement"] <= 1.0
        and report["bytes"]["after"] < report["bytes"]["before"]
    )
    assert np.isfinite(report["max_abs_diff"])


def test_optimize_json_report(tmp_path, cli):
    _, path = exported(tmp_path, attention="mhe-mul")
    result = cli("optimize", path, "--json")
    assert result.code == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["output"] == str(tmp_path / "decoder-mhe-mul.opt.onnx")
    assert set(report) >= {"bytes", "nodes", "op_counts", "max_abs_diff", "parity", "passes"}
    assert (
        report["op_counts"]["before"]["mhe_edge.MHEAttentionMul"] == 2
        and report["op_counts"]["after"]["Attention"] == 2
    )
    assert report["passes"] == ["FoldHeadEmbeddingsPass", "CleanupPass"]


def test_export_optimize_chains(tmp_path, cli):
    from conftest import tiny_model

    from mhe_edge import save_checkpoint

    save_checkpoint(tiny_model(attention="mhe-add", d_model=64), tmp_path / "m.pt")
    result = cli("export", tmp_path / "m.pt", "--optimize", "--target", "ort", "--json")
    assert result.code == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["optimized"]["op_counts"]["after"]["com.microsoft.GroupQueryAttention"] == 2
    assert (tmp_path / "m.onnx").is_file() and (tmp_path / "m.opt.onnx").is_file()


def _plain_onnx(path):
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])],
    )
    onnx.save(helper.make_model(graph), path)


@pytest.mark.parametrize(
    "setup,args,code,fragment",
    [
        (
            lambda d, p: _plain_onnx(d / "plain.onnx"),
            lambda d, p: [d / "plain.onnx"],
            4,
            "not an mhe-edge export",
        ),
        (
            lambda d, p: (d / "cut.onnx").write_bytes(p.read_bytes()[:3000]),
            lambda d, p: [d / "cut.onnx"],
            4,
            "not a readable ONNX file",
        ),
        (lambda d, p: None, lambda d, p: [p, "--fp16", "--int8"], 2, "choose one of"),
        (lambda d, p: None, lambda d, p: [p, "--target", "tensorrt"], 2, "target must be one of"),
        (lambda d, p: None, lambda d, p: [p, "--target", "ort"], 2, "multiple of 8"),
        (lambda d, p: None, lambda d, p: [p, "-o", p], 2, "would overwrite an input"),
        (lambda d, p: None, lambda d, p: [d / "nothing.onnx"], 4, "is not a file"),
        (
            lambda d, p: None,
            lambda d, p: [p, "--atol", "1e-12", "--rtol", "0"],
            6,
            "the optimized model disagrees with its input",
        ),
        (lambda d, p: None, lambda d, p: [p, "--rtol", "2"], 2, "--rtol must be 0 to 1, not 2.0"),
    ],
)
def test_optimize_refusals(tmp_path, cli, setup, args, code, fragment):
    _, path = exported(tmp_path, attention="mhe-mul")
    setup(tmp_path, path)
    before = sorted(p.name for p in tmp_path.iterdir())
    result = cli("optimize", *args(tmp_path, path))
    assert result.code == code, result
    assert fragment in result.stderr and "Traceback" not in result.stderr
    assert len([line for line in result.stderr.splitlines() if line.startswith("error:")]) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == before
