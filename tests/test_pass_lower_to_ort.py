"""LowerToGroupQueryAttentionPass: structure (GroupQueryAttention with kv_num_heads 1 for MHE, no standard
Attention left in decoders) and numbers (within 1e-4, batched chunked prefill with a past included)."""

import onnx_ir as ir
import pytest
from passes_helpers import exported, op_counts, parity

from mhe_edge.passes.fold_head_embeddings import FoldHeadEmbeddingsPass
from mhe_edge.passes.lower_to_ort import LowerToGroupQueryAttentionPass


@pytest.mark.parametrize("query_seqlens", [False, True])
@pytest.mark.parametrize(
    "attention,kv_heads", [("mhe-add", 1), ("mhe-mul", 1), ("mha", 4), ("gqa", 2)]
)
def test_lowering_structure_and_numbers(tmp_path, attention, kv_heads, query_seqlens):
    model, path = exported(
        tmp_path, attention=attention, d_model=64
    )  # GQA kernels need head_dim % 8 == 0
    graph_model = ir.load(path)
    FoldHeadEmbeddingsPass()(graph_model)
    assert LowerToGroupQueryAttentionPass(query_seqlens=query_seqlens)(graph_model).modified
    counts = op_counts(graph_model)
    assert (
        counts["com.microsoft.GroupQueryAttention"] == model.config.n_layers
        and counts["Attention"] == 0
    )
    for node in (n for n in graph_model.graph if n.op_type == "GroupQueryAttention"):
        assert node.attributes["kv_num_heads"].as_int() == kv_heads
        assert (
            len(node.inputs) == 17
        ) == query_seqlens  # the 17th input exists in ONNX Runtime 1.32+ only
    out = tmp_path / "lowered.onnx"
    ir.save(graph_model, out)
    records = parity(model.config, out, path, batched_chunks=query_seqlens)
    assert any("chunked prefill" in r.case for r in records)
    assert all(r.passed for r in records), [r for r in records if not r.passed]


def test_encoders_keep_standard_attention(tmp_path):
    _, path = exported(tmp_path, arch="encoder", attention="mhe-add")
    graph_model = ir.load(path)
    FoldHeadEmbeddingsPass()(graph_model)
    assert not LowerToGroupQueryAttentionPass()(graph_model).modified
    assert op_counts(graph_model)["Attention"] == 2


def test_head_size_the_kernel_cannot_take_is_refused(tmp_path):
    from mhe_edge.errors import RequestError

    _, path = exported(tmp_path, attention="mhe-mul")  # head_dim 12
    graph_model = ir.load(path)
    FoldHeadEmbeddingsPass()(graph_model)
    with pytest.raises(RequestError, match="multiple of 8"):
        LowerToGroupQueryAttentionPass()(graph_model)
