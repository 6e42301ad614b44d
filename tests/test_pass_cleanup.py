"""CleanupPass: dead initializers, identities and unused functions go; numbers stay exactly the same."""

import numpy as np
import onnx_ir as ir
from passes_helpers import exported, op_counts, parity

from mhe_edge.passes.cleanup import CleanupPass
from mhe_edge.passes.fold_head_embeddings import FoldHeadEmbeddingsPass


def test_cleanup_removes_dead_weight_and_keeps_numbers(tmp_path):
    model, path = exported(tmp_path, attention="mhe-add")
    graph_model = ir.load(path)
    FoldHeadEmbeddingsPass()(graph_model)
    dead = ir.Value(name="dead_weight", const_value=ir.tensor(np.ones((64, 64), np.float32)))
    graph_model.graph.register_initializer(dead)
    first_add = next(n for n in graph_model.graph if n.op_type == "Add")
    identity = ir.node("Identity", [first_add.outputs[0]])
    graph_model.graph.insert_after(first_add, identity)
    for use in list(first_add.outputs[0].uses()):
        if use.node is not identity:
            use.node.replace_input_with(use.idx, identity.outputs[0])
    assert op_counts(graph_model)["Identity"] == 1
    CleanupPass()(graph_model)
    assert (
        "dead_weight" not in graph_model.graph.initializers
        and op_counts(graph_model)["Identity"] == 0
    )
    out = tmp_path / "clean.onnx"
    ir.save(graph_model, out)
    records = parity(model.config, out, path, atol=1e-5)
    assert all(r.passed for r in records)


def test_cleanup_keeps_a_fused_mhe_node_fused(tmp_path):
    _, path = exported(tmp_path, attention="mhe-mul")
    graph_model = ir.load(path)
    CleanupPass()(graph_model)
    assert op_counts(graph_model)["mhe_edge.MHEAttentionMul"] == 2 and graph_model.functions
