"""FoldHeadEmbeddingsPass: structure (no mhe_edge node, one single-KV-head Attention per layer, no head
embeddings) and numbers (ONNX Runtime, folded vs unfolded, within 1e-4 with and without a past)."""

import onnx
import onnx_ir as ir
import pytest
from passes_helpers import exported, op_counts, parity

from mhe_edge.errors import ModelFileError
from mhe_edge.passes.fold_head_embeddings import FoldHeadEmbeddingsPass


@pytest.mark.parametrize("arch", ["decoder", "encoder"])
@pytest.mark.parametrize("attention", ["mhe-add", "mhe-mul"])
def test_fold_structure_and_numbers(tmp_path, arch, attention):
    model, path = exported(tmp_path, arch, attention)
    cfg = model.config
    graph_model = ir.load(path)
    result = FoldHeadEmbeddingsPass()(graph_model)
    assert result.modified
    counts = op_counts(graph_model)
    assert (
        not [op for op in counts if op.startswith("mhe_edge.")]
        and counts["Attention"] == cfg.n_layers
    )
    for node in (n for n in graph_model.graph if n.op_type == "Attention"):
        assert node.attributes["kv_num_heads"].as_int() == 1
        assert node.attributes["q_num_heads"].as_int() == cfg.n_heads
        assert (
            node.inputs[1].shape is None or node.inputs[1].shape[-1] == cfg.head_dim
        )  # one K head, never n
    assert not [name for name in graph_model.graph.initializers if "head_embeddings" in name]
    assert not graph_model.functions and "mhe_edge" not in graph_model.opset_imports
    out = tmp_path / "folded.onnx"
    ir.save(graph_model, out)
    onnx.checker.check_model(str(out), full_check=True)
    records = parity(cfg, out, path)
    assert all(r.passed for r in records), [r for r in records if not r.passed]
    if arch == "decoder":
        assert {"empty past", "cached steps", "chunked prefill"} <= {
            w
            for r in records
            for w in ("empty past", "cached steps", "chunked prefill")
            if w in r.case
        }


def test_fold_is_a_no_op_on_mha(tmp_path):
    _, path = exported(tmp_path, attention="mha")
    graph_model = ir.load(path)
    assert not FoldHeadEmbeddingsPass()(graph_model).modified


def test_fold_refuses_non_constant_embeddings(tmp_path):
    _, path = exported(tmp_path, attention="mhe-mul")
    graph_model = ir.load(path)
    node = next(n for n in graph_model.graph if n.op_type == "MHEAttentionMul")
    graph_model.graph.inputs.append(
        fake := ir.Value(name="e_q_from_outside", type=ir.TensorType(ir.DataType.FLOAT))
    )
    node.replace_input_with(3, fake)
    with pytest.raises(ModelFileError, match="not a constant"):
        FoldHeadEmbeddingsPass()(graph_model)
