"""The --target ort fusions. FuseGqaInputsPass: Q/K/V packed into one MatMul and rotary moved inside
GroupQueryAttention, on a hand-built layer (numbers against the graph before, prefill and a decode step;
what it leaves alone), then end to end on an MHE-MUL rope model, which keeps its rotation outside
(tests/test_hf_interop.py has the transformers-written Qwen2 folder that fuses)."""

from __future__ import annotations

import json

import numpy as np
import onnx_ir as ir
from passes_helpers import exported, op_counts

from mhe_edge.contract import KEY_CONFIG
from mhe_edge.passes import optimize
from mhe_edge.passes.fuse_gqa_inputs import FuseGqaInputsPass
from mhe_edge.sessions import create_session

F32, I64 = ir.DataType.FLOAT, ir.DataType.INT64
H, G, D, WIDTH, MAX_POS = 4, 2, 16, 24, 32
RNG = np.random.default_rng(3)


def _value(name, shape, dtype=F32):
    return ir.Value(name=name, shape=ir.Shape(shape), type=ir.TensorType(dtype))


def _layer(scale_query: bool = False) -> ir.Model:
    """x -> q/k/v projections (biased) -> rotate-half rope on q and k (the export's pattern) ->
    GroupQueryAttention. `scale_query`: a per-head constant after the rotation, as a folded MHE-MUL has."""
    x, positions = _value("x", ["B", "T", WIDTH]), _value("positions", ["B", "T"], I64)
    past = [_value(n, ["B", G, "P", D]) for n in ("past_key", "past_value")]
    seqlens, total = (
        _value("seqlens_k", ["B"], ir.DataType.INT32),
        _value("total", [], ir.DataType.INT32),
    )
    graph = ir.Graph([x, positions, *past, seqlens, total], [], nodes=[], name="layer")
    consts = {}

    def const(name, array):
        consts[name] = ir.Value(
            name=name,
            shape=ir.Shape(array.shape),
            type=ir.TensorType(ir.DataType.from_numpy(array.dtype)),
            const_value=ir.tensor(array, name=name),
        )
        graph.register_initializer(consts[name])
        return consts[name]

    def emit(op, inputs, attributes=None, shape=None):
        node = ir.node(op, inputs, attributes)
        graph.append(node)
        if shape is not None:
            node.outputs[0].shape, node.outputs[0].type = ir.Shape(shape), ir.TensorType(F32)
        return node.outputs[0]

    inv_freq = (1.0 / 10000 ** (np.arange(0, D, 2) / D)).astype(np.float32)
    f = emit(
        "Mul",
        [
            emit(
                "Unsqueeze", [emit("Cast", [positions], {"to": F32}), const("m1", np.array([-1]))]
            ),
            const("inv", inv_freq),
        ],
        shape=["B", "T", D // 2],
    )
    angles = emit("Concat", [f, f], {"axis": -1})
    cos, sin = (
        emit("Unsqueeze", [emit(op, [angles]), const(f"a{op}", np.array([2]))])
        for op in ("Cos", "Sin")
    )
    half, big, last = (
        const("half", np.array([D // 2])),
        const("big", np.array([2**62])),
        const("last", np.array([-1])),
    )
    zero = const("zero", np.array([0]))

    def project(name, heads, rope):
        w = const(f"w{name}", RNG.standard_normal((WIDTH, heads * D)).astype(np.float32))
        b = const(f"b{name}", RNG.standard_normal(heads * D).astype(np.float32))
        y = emit("Add", [emit("MatMul", [x, w]), b], shape=["B", "T", heads * D])
        if not rope:
            return y
        view = emit(
            "Reshape",
            [y, const(f"s{name}", np.array([0, 0, heads, D]))],
            shape=["B", "T", heads, D],
        )
        rotated = emit(
            "Concat",
            [
                emit("Neg", [emit("Slice", [view, half, big, last])]),
                emit("Slice", [view, zero, half, last]),
            ],
            {"axis": -1},
        )
        turned = emit(
            "Add",
            [emit("Mul", [view, cos]), emit("Mul", [rotated, sin])],
            shape=["B", "T", heads, D],
        )
        return emit(
            "Reshape",
            [turned, const(f"back{name}", np.array([0, 0, heads * D]))],
            shape=["B", "T", heads * D],
        )

    if (
        scale_query
    ):  # one shared query head, turned, then scaled per head (B, T, H, D) -> (B, T, H * D)
        shared = emit(
            "Unsqueeze",
            [project("q", 1, True), const("axis2", np.array([2]))],
            shape=["B", "T", 1, D],
        )
        c = const("c", RNG.standard_normal((H, D)).astype(np.float32))
        q = emit(
            "Reshape",
            [emit("Mul", [shared, c]), const("flat", np.array([0, 0, H * D]))],
            shape=["B", "T", H * D],
        )
    else:
        q = project("q", H, True)
    k, v = project("k", G, True), project("v", G, False)
    gqa = ir.node(
        "GroupQueryAttention",
        [q, k, v, *past, seqlens, total],
        {"num_heads": H, "kv_num_heads": G},
        domain="com.microsoft",
        num_outputs=3,
    )
    graph.append(gqa)
    for out, name in zip(gqa.outputs, ("y", "present_key", "present_value")):
        out.name = name
        graph.outputs.append(out)
    graph.opset_imports.update({"": 21, "com.microsoft": 1})
    model = ir.Model(graph, ir_version=10)
    model.metadata_props[KEY_CONFIG] = json.dumps({"max_seq_len": MAX_POS})
    return model


def _run(model, feeds, path):
    ir.save(model, path)
    session = create_session(path)
    return session.run(None, feeds)


def _feeds(batch, past, new):
    return {
        "x": RNG.standard_normal((batch, new, WIDTH)).astype(np.float32),
        "positions": np.broadcast_to(np.arange(past, past + new), (batch, new)).astype(np.int64),
        "past_key": RNG.standard_normal((batch, G, past, D)).astype(np.float32),
        "past_value": RNG.standard_normal((batch, G, past, D)).astype(np.float32),
        "seqlens_k": np.full(batch, past + new - 1, np.int32),
        "total": np.array(past + new, np.int32),
    }


def test_fuse_on_a_hand_built_layer(tmp_path):
    model = _layer()
    cases = [_feeds(2, 0, 5), _feeds(2, 5, 1), _feeds(1, 4, 3)]  # prefill, a decode step, a chunk
    before = [_run(model, feeds, tmp_path / "before.onnx") for feeds in cases]
    assert FuseGqaInputsPass()(model).modified
    counts = op_counts(model)
    assert counts["MatMul"] == 1 and counts["Add"] == 1 and not counts["Cos"] and not counts["Neg"]
    (gqa,) = [n for n in model.graph if n.op_type == "GroupQueryAttention"]
    assert (
        gqa.inputs[1] is None
        and gqa.inputs[2] is None
        and gqa.attributes["do_rotary"].as_int() == 1
    )
    assert gqa.inputs[7].shape == ir.Shape([MAX_POS, D // 2])
    for feeds, reference in zip(cases, before):
        feeds = {**feeds, "positions": np.zeros_like(feeds["positions"])}  # unread now
        after = _run(model, feeds, tmp_path / "after.onnx")
        for a, b in zip(after, reference):
            assert np.abs(a - b).max() < 1e-5 * max(1.0, np.abs(b).max())  # float32 rounding
    assert not FuseGqaInputsPass()(model).modified  # nothing left to fuse


def test_a_query_scaled_after_the_rotation_keeps_its_rotation_outside(tmp_path):
    """A per-head constant after the rotation (a folded MHE-MUL) cannot move inside the kernel: q and k
    are each turned by one RotaryEmbedding on the graph's own positions, the projections stay apart."""
    model = _layer(scale_query=True)
    cases = [_feeds(2, 0, 5), _feeds(2, 5, 1)]
    before = [_run(model, feeds, tmp_path / "before.onnx") for feeds in cases]
    assert FuseGqaInputsPass()(model).modified
    counts = op_counts(model)
    assert counts["MatMul"] == 3 and counts["com.microsoft.RotaryEmbedding"] == 2
    assert not counts["Cos"] and not counts["Neg"]
    (gqa,) = [n for n in model.graph if n.op_type == "GroupQueryAttention"]
    assert "do_rotary" not in gqa.attributes
    for feeds, reference in zip(cases, before):
        for a, b in zip(_run(model, feeds, tmp_path / "after.onnx"), reference):
            assert np.abs(a - b).max() < 1e-5 * max(1.0, np.abs(b).max())  # float32 rounding
    assert not FuseGqaInputsPass()(model).modified


def _nodes_per_layer(path, n_layers) -> float:
    return len(ir.load(path).graph) / n_layers


def test_mhe_mul_rope_keeps_rotary_outside_and_its_numbers(tmp_path):
    model, path = exported(tmp_path, attention="mhe-mul", d_model=64, position="rope")
    report = optimize(path, tmp_path / "ort.onnx", target="ort")  # optimize checks parity itself
    assert report.max_abs_diff <= 1e-4
    graph = ir.load(report.output).graph
    assert op_counts(ir.load(report.output))["com.microsoft.RotaryEmbedding"] == 4
    assert len(graph) <= 64  # 106 with the rotation written out
    for node in graph:
        if node.op_type == "GroupQueryAttention":
            assert (
                node.attributes["kv_num_heads"].as_int() == 1 and "do_rotary" not in node.attributes
            )
