"""The targets for older and other runtimes: `portable` (opset 17-22, IR 8, basic ops only, one shared KV
head broadcast, never expanded per head) and `ort` at opset 21 without the 1.32-only input. Structure
checked here, numbers on the installed ONNX Runtime and on onnx.reference (the spec's own evaluator);
benchmarks/compat.py runs them on older ONNX Runtime releases, OpenVINO and onnxruntime-node."""

import numpy as np
import onnx
import pytest
from passes_helpers import exported

from mhe_edge import describe, optimize
from mhe_edge.errors import MheEdgeError


def _reference_logits(path, ids):
    from onnx.reference import ReferenceEvaluator

    model = onnx.load(path)
    feeds = {"input_ids": ids, "attention_mask": np.ones_like(ids)}
    for value in model.graph.input[2:]:
        dims = [d.dim_value for d in value.type.tensor_type.shape.dim]
        feeds[value.name] = np.zeros((ids.shape[0], dims[1], 0, dims[3]), np.float32)
    return ReferenceEvaluator(model).run(["logits"], feeds)[0]


@pytest.mark.parametrize("attention", ["mhe-mul", "mhe-add", "mha", "gqa"])
def test_portable_structure_numbers_and_one_kv_head(tmp_path, attention):
    model, path = exported(tmp_path, attention=attention, d_model=64)
    report = optimize(path, tmp_path / "p.onnx", target="portable")
    assert (
        report.max_abs_diff <= 1e-4
    )  # through prefill, cached steps and chunked prefill, vs the export on ORT
    proto = onnx.load(tmp_path / "p.onnx")
    assert proto.ir_version == 8 and {o.domain or "": o.version for o in proto.opset_import} == {
        "": 17
    }
    assert not proto.functions and all(n.domain == "" for n in proto.graph.node)
    ops = {n.op_type for n in proto.graph.node}
    # attention, Gelu and both norms written out in basic ops (so NNAPI and CoreML take the norms)
    assert not {"Attention", "Gelu", "RMSNormalization", "LayerNormalization"} & ops, ops
    cfg = model.config
    past = proto.graph.input[2].type.tensor_type.shape.dim
    assert (
        past[1].dim_value == cfg.kv_heads
    )  # MHE and MQA keep one cache head; nothing is repeated per head
    assert not [
        n
        for n in proto.graph.node
        if n.op_type in ("Tile", "Expand") and "past" in "".join(n.input)
    ]
    # per layer: attention written out (~17 ops, the padding mask included), two LayerNorms (~9
    # each, so NNAPI/CoreML take them), Gelu (~5)
    per_layer = (len(proto.graph.node) - len(onnx.load(path).graph.node)) / cfg.n_layers
    assert per_layer <= 56, per_layer
    matmuls = lambda p: sum(n.op_type == "MatMul" for n in onnx.load(p).graph.node)  # noqa: E731
    assert (
        matmuls(tmp_path / "p.onnx") == matmuls(path) + 2 * cfg.n_layers
    )  # scores and values: two per layer, no more
    meta = {p.key: p.value for p in proto.metadata_props}
    assert meta["mhe_edge.min_onnxruntime"] == "1.16" and meta["mhe_edge.opset"] == "17"
    ids = np.random.default_rng(0).integers(0, cfg.vocab_size, (2, 5))
    want = _reference_logits(path, ids)  # the unoptimized export on the reference evaluator
    assert np.abs(_reference_logits(tmp_path / "p.onnx", ids) - want).max() <= 1e-4


@pytest.mark.parametrize("target,opset", [("portable", 22), ("ort", 21), ("ort", 17)])
def test_other_opsets_and_the_ort_target_for_older_runtimes(tmp_path, target, opset):
    model, path = exported(tmp_path, attention="mhe-mul", d_model=64)
    report = optimize(path, tmp_path / "o.onnx", target=target, opset=opset)
    assert report.max_abs_diff <= 1e-4
    proto = onnx.load(tmp_path / "o.onnx")
    assert {o.domain or "": o.version for o in proto.opset_import}[""] == opset
    if target == "ort":
        gqa = [n for n in proto.graph.node if n.op_type == "GroupQueryAttention"]
        assert len(gqa) == model.config.n_layers and all(
            len(n.input) == 7 for n in gqa
        )  # no query_seqlens
        assert describe(tmp_path / "o.onnx").to_dict()["target"] == "ort"
        assert {p.key: p.value for p in proto.metadata_props}["mhe_edge.min_onnxruntime"] == "1.20"


def test_encoders_and_fp16_go_portable(tmp_path):
    _, path = exported(tmp_path, arch="encoder", attention="mhe-add", d_model=64)
    assert optimize(path, tmp_path / "e.onnx", target="portable").max_abs_diff <= 1e-4
    _, path = exported(tmp_path, attention="mhe-mul", d_model=64)
    report = optimize(path, tmp_path / "h.onnx", target="portable", fp16=True)
    assert (
        report.precision == "fp16"
        and min(r.argmax_agreement for r in report.parity if r.argmax_agreement is not None) >= 0.99
    )


def test_target_refusals(tmp_path, cli):
    _, path = exported(tmp_path, attention="mhe-mul", d_model=64)
    for args, fragment in [
        (["--target", "portable", "--opset", "23"], "--target portable takes --opset 17 to 22"),
        (["--target", "std", "--opset", "17"], "--target std takes --opset 23"),
        (
            ["--target", "portable", "--ort-query-seqlens"],
            "--ort-query-seqlens is for --target ort",
        ),
    ]:
        result = cli("optimize", path, "-o", tmp_path / "x.onnx", *args)
        assert result.code == 2 and fragment in result.stderr, result.stderr


def test_a_file_needing_a_newer_runtime_says_what_to_upgrade(tmp_path, cli):
    _, path = exported(tmp_path, attention="mhe-mul")
    proto = onnx.load(path)
    next(p for p in proto.metadata_props if p.key == "mhe_edge.min_onnxruntime").value = "99.0"
    onnx.save(proto, tmp_path / "future.onnx")
    result = cli("generate", tmp_path / "future.onnx", "--prompt", "1")
    assert (
        result.code == 4
        and "needs ONNX Runtime >= 99.0" in result.stderr
        and "upgrade onnxruntime" in result.stderr
    )
    with pytest.raises(MheEdgeError):
        from mhe_edge.runtime import ExportedModel

        ExportedModel(tmp_path / "future.onnx")
