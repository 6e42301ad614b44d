"""Each graph pass on a small graph built by hand (no exporter): its structure after the pass, its numbers
against NumPy or against the graph before, its preconditions refusing what it cannot handle before touching
anything, and a truthful `modified`."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
import pytest

from mhe_edge.contract import OP_TYPES
from mhe_edge.errors import RequestError
from mhe_edge.exporters.mhe_function import mhe_attention_function
from mhe_edge.passes._graph import GraphRefused, TargetRefused
from mhe_edge.passes.cleanup import CleanupPass
from mhe_edge.passes.float16 import ConvertToFloat16Pass
from mhe_edge.passes.fold_head_embeddings import FoldHeadEmbeddingsPass
from mhe_edge.passes.lower_to_ort import LowerToGroupQueryAttentionPass
from mhe_edge.passes.quantize_int8 import DynamicQuantizeInt8Pass
from mhe_edge.passes.seqlens_from_mask import SeqlensFromAttentionMaskPass
from mhe_edge.sessions import create_session

F32 = ir.DataType.FLOAT
N, D_HEAD, WIDTH = 4, 8, 16  # heads, head size, output width
RNG = np.random.default_rng(7)


def _value(name, shape, dtype=F32):
    return ir.Value(name=name, shape=ir.Shape(shape), type=ir.TensorType(dtype))


def _const(graph, name, array):
    value = ir.Value(
        name=name,
        shape=ir.Shape(array.shape),
        type=ir.TensorType(ir.DataType.from_numpy(array.dtype)),
        const_value=ir.tensor(array, name=name),
    )
    graph.register_initializer(value)
    return value


def _model(graph, extra_opsets=None):
    graph.opset_imports.update({"": 23, **(extra_opsets or {})})
    return ir.Model(graph, ir_version=10)


def _run(model, feeds, tmp_path, name):
    path = tmp_path / f"{name}.onnx"
    ir.save(model, path)
    session = create_session(path)
    return dict(zip([o.name for o in session.get_outputs()], session.run(None, feeds)))


# --- FoldHeadEmbeddingsPass


def _mhe_graph(mode, e_q, e_k, e_v, w_o, b_o):
    """query/key/value -> mhe_edge.MHEAttentionAdd/Mul -> MatMul W_O -> Add b_O -> y (+ the present cache)."""
    q, k, v = (_value(n, ["B", "T", D_HEAD]) for n in ("q", "k", "v"))
    pk, pv = _value("past_key", ["B", 1, "P", D_HEAD]), _value("past_value", ["B", 1, "P", D_HEAD])
    graph = ir.Graph([q, k, v, pk, pv], [], nodes=[], name="mhe")
    consts = [_const(graph, n, a) for n, a in (("e_q", e_q), ("e_k", e_k), ("e_v", e_v))]
    bias = _const(graph, "zero_bias", np.zeros((), np.float32))
    attention = ir.node(
        OP_TYPES[mode],
        [q, k, v, *consts, pk, pv, bias],
        {"num_heads": N, "is_causal": 1},
        domain="mhe_edge",
        num_outputs=3,
        name="layer0",
    )
    matmul = ir.node("MatMul", [attention.outputs[0], _const(graph, "w_o", w_o)])
    graph.extend([attention, matmul])
    last = matmul
    if b_o is not None:  # without one, ADD's fold must add the bias E_V becomes
        last = ir.node("Add", [matmul.outputs[0], _const(graph, "b_o", b_o)])
        graph.append(last)
    last.outputs[0].name, attention.outputs[1].name, attention.outputs[2].name = (
        "y",
        "present_key",
        "present_value",
    )
    graph.outputs.extend([last.outputs[0], attention.outputs[1], attention.outputs[2]])
    model = _model(graph, {"mhe_edge": 1})
    function = ir.serde.deserialize_function(mhe_attention_function(mode, 23))
    model.functions[function.identifier()] = function
    return model


def _per_head_numpy(mode, feeds, e_q, e_k, e_v, w_o, b_o):
    """MHE exactly as defined: every head built explicitly, in float64."""
    f = {k: v.astype(np.float64) for k, v in feeds.items()}
    keys = np.concatenate([f["past_key"][:, 0], f["k"]], axis=1)  # (B, S, d)
    values = np.concatenate([f["past_value"][:, 0], f["v"]], axis=1)
    T, S = f["q"].shape[1], keys.shape[1]
    combine = (lambda x, e: x + e) if mode == "add" else (lambda x, e: x * e)
    heads = []
    for i in range(N):
        scores = (
            combine(f["q"], e_q[i]) @ combine(keys, e_k[i]).transpose(0, 2, 1) / np.sqrt(D_HEAD)
        )
        scores = np.where(np.arange(S)[None, :] > np.arange(S - T, S)[:, None], -np.inf, scores)
        p = np.exp(scores - scores.max(-1, keepdims=True))
        heads.append((p / p.sum(-1, keepdims=True)) @ combine(values, e_v[i]))
    return np.concatenate(heads, axis=-1) @ w_o + (0 if b_o is None else b_o)


@pytest.mark.parametrize("mode,out_bias", [("add", True), ("mul", True), ("add", False)])
def test_fold_on_a_hand_built_graph(tmp_path, mode, out_bias):
    centre = 1.0 if mode == "mul" else 0.0
    e_q, e_k, e_v = (
        centre + 0.5 * RNG.standard_normal((N, D_HEAD)).astype(np.float32) for _ in range(3)
    )
    w_o = RNG.standard_normal((N * D_HEAD, WIDTH)).astype(np.float32)
    b_o = RNG.standard_normal(WIDTH).astype(np.float32) if out_bias else None
    feeds = {n: RNG.standard_normal((2, 3, D_HEAD)).astype(np.float32) for n in ("q", "k", "v")}
    feeds |= {
        n: RNG.standard_normal((2, 1, 5, D_HEAD)).astype(np.float32)
        for n in ("past_key", "past_value")
    }
    model = _mhe_graph(mode, e_q, e_k, e_v, w_o, b_o)
    before = _run(model, feeds, tmp_path, "before")
    want = _per_head_numpy(mode, feeds, e_q, e_k, e_v, w_o, b_o)
    assert np.abs(before["y"] - want).max() < 1e-4  # the function body is the definition

    assert FoldHeadEmbeddingsPass()(model).modified
    attention = [n for n in model.graph if n.op_type == "Attention"]
    assert len(attention) == 1 and attention[0].attributes["kv_num_heads"].as_int() == 1
    assert not {"e_q", "e_k", "e_v"} & set(model.graph.initializers) and not model.functions
    after = _run(model, feeds, tmp_path, "after")
    assert np.abs(after["y"] - want).max() < 1e-4
    assert np.array_equal(after["present_key"], before["present_key"])
    assert not FoldHeadEmbeddingsPass()(model).modified  # nothing left to fold


def test_fold_refuses_before_touching_anything():
    ones = np.ones((N, D_HEAD), np.float32)
    model = _mhe_graph(
        "add",
        ones,
        ones,
        ones,
        np.ones((N * D_HEAD, WIDTH), np.float32),
        np.zeros(WIDTH, np.float32),
    )
    matmul = next(n for n in model.graph if n.op_type == "MatMul")
    outside = _value("w_o_from_outside", [N * D_HEAD, WIDTH])
    model.graph.inputs.append(outside)
    matmul.replace_input_with(
        1, outside
    )  # E_V cannot fold into an output projection that is not a constant
    with pytest.raises(GraphRefused, match="output projection"):
        FoldHeadEmbeddingsPass()(model)
    assert [n.op_type for n in model.graph] == [
        "MHEAttentionAdd",
        "MatMul",
        "Add",
    ] and "e_v" in model.graph.initializers


# --- LowerToGroupQueryAttentionPass and SeqlensFromAttentionMaskPass


def _attention_graph(head_size=D_HEAD, kv_heads=1):
    q = _value("q", ["B", "T", N * head_size])
    k, v = (_value(n, ["B", "T", kv_heads * head_size]) for n in ("k", "v"))
    pk, pv = (_value(n, ["B", kv_heads, "P", head_size]) for n in ("past_key", "past_value"))
    graph = ir.Graph([q, k, v, pk, pv], [], nodes=[], name="attention")
    node = ir.node(
        "Attention",
        [q, k, v, None, pk, pv],
        {"q_num_heads": N, "kv_num_heads": kv_heads, "is_causal": 1},
        num_outputs=3,
    )
    graph.append(node)
    for out, name in zip(node.outputs, ("y", "present_key", "present_value")):
        out.name = name
        graph.outputs.append(out)
    return _model(graph)


@pytest.mark.parametrize("query_seqlens", [False, True])
def test_lower_on_a_hand_built_graph(tmp_path, query_seqlens):
    model = _attention_graph()
    B = (
        2 if query_seqlens else 1
    )  # without query_seqlens the kernel takes several new tokens with a past at batch 1 only
    feeds = {
        "q": RNG.standard_normal((B, 3, N * D_HEAD)),
        "k": RNG.standard_normal((B, 3, D_HEAD)),
        "v": RNG.standard_normal((B, 3, D_HEAD)),
        "past_key": RNG.standard_normal((B, 1, 4, D_HEAD)),
        "past_value": RNG.standard_normal((B, 1, 4, D_HEAD)),
    }
    feeds = {k: v.astype(np.float32) for k, v in feeds.items()}
    before = _run(model, feeds, tmp_path, "before")
    assert LowerToGroupQueryAttentionPass(query_seqlens=query_seqlens)(model).modified
    assert [n.op_type for n in model.graph if n.domain == "com.microsoft"] == [
        "GroupQueryAttention"
    ]
    assert not [n for n in model.graph if n.op_type == "Attention"]
    after = _run(model, feeds, tmp_path, "after")
    for name in ("y", "present_key", "present_value"):
        assert np.abs(after[name] - before[name]).max() < 1e-5
    assert not LowerToGroupQueryAttentionPass()(model).modified

    assert SeqlensFromAttentionMaskPass()(model).modified
    assert [v.name for v in model.graph.inputs][1] == "attention_mask"
    assert not SeqlensFromAttentionMaskPass()(model).modified  # already there


def test_lower_refuses_a_head_size_the_kernel_cannot_take():
    model = _attention_graph(head_size=12)
    with pytest.raises(TargetRefused, match="multiple of 8"):
        LowerToGroupQueryAttentionPass()(model)
    assert [n.op_type for n in model.graph] == ["Attention"]


def test_lower_and_seqlens_refuse_graphs_they_cannot_handle():
    ones = np.ones((N, D_HEAD), np.float32)
    unfolded = _mhe_graph(
        "mul",
        ones,
        ones,
        ones,
        np.ones((N * D_HEAD, WIDTH), np.float32),
        np.zeros(WIDTH, np.float32),
    )
    with pytest.raises(GraphRefused, match="fold the head embeddings first"):
        LowerToGroupQueryAttentionPass()(unfolded)
    with pytest.raises(GraphRefused, match="needs GroupQueryAttention"):
        SeqlensFromAttentionMaskPass()(_attention_graph())


@pytest.mark.parametrize("kv_heads", [1, 2])
def test_decompose_attention_on_a_hand_built_graph(tmp_path, kv_heads):
    """Attention written out in basic ops equals ONNX Runtime's Attention kernel; KV heads are broadcast."""
    from mhe_edge.passes.decompose_attention import DecomposeAttentionPass

    model = _attention_graph(kv_heads=kv_heads)
    feeds = {
        "q": RNG.standard_normal((2, 3, N * D_HEAD)),
        "k": RNG.standard_normal((2, 3, kv_heads * D_HEAD)),
        "v": RNG.standard_normal((2, 3, kv_heads * D_HEAD)),
        "past_key": RNG.standard_normal((2, kv_heads, 4, D_HEAD)),
        "past_value": RNG.standard_normal((2, kv_heads, 4, D_HEAD)),
    }
    feeds = {k: v.astype(np.float32) for k, v in feeds.items()}
    before = _run(model, feeds, tmp_path, "before")
    assert DecomposeAttentionPass()(model).modified
    ops = [n.op_type for n in model.graph]
    assert (
        "Attention" not in ops and "Softmax" in ops and not {"Tile", "Expand"} & set(ops)
    )  # broadcast, never copied
    after = _run(model, feeds, tmp_path, "after")
    for name in ("y", "present_key", "present_value"):
        assert np.abs(after[name] - before[name]).max() < 1e-5
    assert not DecomposeAttentionPass()(model).modified


def test_convert_to_opset_on_a_hand_built_graph(tmp_path):
    """Gelu (20) and RMSNormalization (23) written out; the graph loads at opset 17, IR 8, with equal numbers."""
    from mhe_edge.passes.to_opset import ConvertToOpsetPass

    x = _value("x", ["B", WIDTH])
    graph = ir.Graph([x], [], nodes=[], name="norms")
    rms = ir.node(
        "RMSNormalization",
        [x, _const(graph, "scale", RNG.standard_normal(WIDTH).astype(np.float32))],
        {"epsilon": 1e-6},
    )
    gelu = ir.node("Gelu", [rms.outputs[0]], {"approximate": "tanh"})
    gelu_erf = ir.node("Gelu", [gelu.outputs[0]])
    graph.extend([rms, gelu, gelu_erf])
    gelu_erf.outputs[0].name = "y"
    graph.outputs.append(gelu_erf.outputs[0])
    model = _model(graph)
    feeds = {"x": RNG.standard_normal((3, WIDTH)).astype(np.float32)}
    before = _run(model, feeds, tmp_path, "before")
    assert ConvertToOpsetPass(17)(model).modified
    assert model.opset_imports[""] == 17 and model.ir_version == 8
    assert not {"Gelu", "RMSNormalization"} & {n.op_type for n in model.graph}
    assert np.abs(_run(model, feeds, tmp_path, "after")["y"] - before["y"]).max() < 1e-5
    assert not ConvertToOpsetPass(17)(model).modified, "a second run has nothing left to convert"
    unsupported = _attention_graph()
    with pytest.raises(GraphRefused, match="Attention has no form at opset 17"):
        ConvertToOpsetPass(17)(unsupported)


# --- CleanupPass, ConvertToFloat16Pass, DynamicQuantizeInt8Pass


def _matmul_graph():
    """x -> Identity -> MatMul W -> y, plus an initializer nobody reads."""
    x = _value("x", ["B", WIDTH])
    graph = ir.Graph([x], [], nodes=[], name="matmul")
    identity = ir.node("Identity", [x])
    matmul = ir.node(
        "MatMul",
        [
            identity.outputs[0],
            _const(graph, "w", RNG.standard_normal((WIDTH, WIDTH)).astype(np.float32)),
        ],
    )
    graph.extend([identity, matmul])
    matmul.outputs[0].name = "y"
    graph.outputs.append(matmul.outputs[0])
    _const(graph, "dead", np.ones((64, 64), np.float32))
    return _model(graph)


def test_cleanup_on_a_hand_built_graph(tmp_path):
    model = _matmul_graph()
    feeds = {"x": RNG.standard_normal((3, WIDTH)).astype(np.float32)}
    before = _run(model, feeds, tmp_path, "before")
    assert CleanupPass()(model).modified
    assert [n.op_type for n in model.graph] == ["MatMul"] and "dead" not in model.graph.initializers
    assert np.array_equal(_run(model, feeds, tmp_path, "after")["y"], before["y"])
    assert not CleanupPass()(model).modified  # a clean graph stays as it is


def test_float16_on_a_hand_built_graph(tmp_path):
    model = _matmul_graph()
    CleanupPass()(model)
    feeds = {"x": RNG.standard_normal((3, WIDTH)).astype(np.float32)}
    before = _run(model, feeds, tmp_path, "before")
    assert ConvertToFloat16Pass()(model).modified
    assert (
        model.graph.inputs[0].dtype == ir.DataType.FLOAT16
        and model.graph.initializers["w"].const_value.dtype == ir.DataType.FLOAT16
    )
    after = _run(model, {"x": feeds["x"].astype(np.float16)}, tmp_path, "after")
    assert after["y"].dtype == np.float16 and np.abs(after["y"] - before["y"]).max() < 0.05
    assert not ConvertToFloat16Pass()(model).modified  # no float32 left
    with pytest.raises(GraphRefused, match="float32 weight"):
        DynamicQuantizeInt8Pass()(model)


def test_int8_on_a_hand_built_graph(tmp_path):
    model = _matmul_graph()
    CleanupPass()(model)
    feeds = {"x": RNG.standard_normal((3, WIDTH)).astype(np.float32)}
    before = _run(model, feeds, tmp_path, "before")
    result = DynamicQuantizeInt8Pass()(model)
    assert result.modified and "MatMulInteger" in {n.op_type for n in result.model.graph}
    after = _run(result.model, feeds, tmp_path, "after")
    assert np.abs(after["y"] - before["y"]).max() < 0.1 * np.abs(before["y"]).max()
    with pytest.raises(GraphRefused, match="quantized"):
        ConvertToFloat16Pass()(result.model)


def test_int4_on_a_hand_built_graph(tmp_path):
    from mhe_edge.passes.quantize_int4 import QuantizeInt4Pass

    x = _value("x", ["B", 64])
    graph = ir.Graph([x], [], nodes=[], name="int4")
    weight = RNG.standard_normal((64, WIDTH)).astype(np.float32)
    matmul = ir.node("MatMul", [x, _const(graph, "w", weight)])
    graph.append(matmul)
    matmul.outputs[0].name = "y"
    graph.outputs.append(matmul.outputs[0])
    model = _model(graph)
    feeds = {"x": RNG.standard_normal((3, 64)).astype(np.float32)}
    before = _run(model, feeds, tmp_path, "before")
    result = QuantizeInt4Pass(block_size=32)(model)
    nodes = [n for n in result.model.graph]
    assert result.modified and [(n.domain, n.op_type) for n in nodes] == [
        ("com.microsoft", "MatMulNBits")
    ]
    assert (
        nodes[0].attributes["block_size"].as_int() == 32
        and nodes[0].attributes["bits"].as_int() == 4
    )
    after = _run(result.model, feeds, tmp_path, "after")
    # numbers: the kernel equals x @ dequantize(W) computed here from the stored 4-bit blocks and scales
    packed = (
        next(v for v in nodes[0].inputs[1:2]).const_value.numpy().reshape(WIDTH, 2, 16)
    )  # (N, blocks, 32 nibbles)
    scales = nodes[0].inputs[2].const_value.numpy().reshape(WIDTH, 2)
    nibbles = (
        np.stack([packed & 0x0F, packed >> 4], axis=-1).reshape(WIDTH, 2, 32).astype(np.float32)
    )
    dequantized = ((nibbles - 8) * scales[..., None]).reshape(WIDTH, 64).T  # (K, N)
    assert np.abs(after["y"] - feeds["x"] @ dequantized).max() < 2e-2 * np.abs(after["y"]).max()
    assert (
        np.abs(after["y"] - before["y"]).max() < 0.2 * np.abs(before["y"]).max()
    )  # 4 bits cost a little
    with pytest.raises(GraphRefused, match="block size"):
        QuantizeInt4Pass(block_size=48)


def _tied_model(head: bool = True) -> ir.Model:
    """ids -> Gather(E) -> MatMul(., Transpose(E)), the gathered rows an output too (without `head`,
    the Gather alone)."""
    ids = _value("input_ids", ["B", "T"], ir.DataType.INT64)
    graph = ir.Graph([ids], [], nodes=[], name="tied")
    table = _const(
        graph, "E", np.random.default_rng(7).standard_normal((WIDTH, 64)).astype(np.float32)
    )
    gather = ir.node("Gather", [table, ids])
    graph.append(gather)
    gather.outputs[0].name = "rows"
    if head:
        transpose = ir.node("Transpose", [table], {"perm": [1, 0]})
        matmul = ir.node("MatMul", [gather.outputs[0], transpose.outputs[0]])
        graph.extend([transpose, matmul])
        matmul.outputs[0].name = "logits"
        graph.outputs.append(matmul.outputs[0])
    graph.outputs.append(gather.outputs[0])
    return _model(graph)


@pytest.mark.parametrize(
    "algorithm,share",
    [("rtn", False), ("rtn", True), ("hqq", True), ("k-quant", False), ("gptq", False)],
)
def test_int4_quantizes_a_tied_head_and_its_table(tmp_path, algorithm, share):
    """The tied head becomes a MatMulNBits, the table a GatherBlockQuantized, and no float32 copy of E
    is left. Where the head has no zero points (not HQQ's), the table is given the head's 4-bit bytes,
    which are exactly those of the table's own round-to-nearest; with `share_tied_table` it reads the
    head's initializers themselves, one copy in the file."""
    from mhe_edge.passes.quantize_int4 import QuantizeInt4Pass

    model = _tied_model()
    feeds = {"input_ids": np.array([[0, 5, 7], [WIDTH - 1, 1, 2]], dtype=np.int64)}
    before = _run(model, feeds, tmp_path, "before")
    calibration = (
        [RNG.integers(0, WIDTH, (1, 8)) for _ in range(3)] if algorithm == "gptq" else None
    )
    result = QuantizeInt4Pass(
        block_size=32, algorithm=algorithm, calibration_ids=calibration, share_tied_table=share
    )(model)
    ops = sorted(f"{n.domain}.{n.op_type}" for n in result.model.graph)
    assert result.modified
    head = next(n for n in result.model.graph if n.op_type == "MatMulNBits")
    gather = next(n for n in result.model.graph if n.op_type == "GatherBlockQuantized")
    served = len(head.inputs) == 3  # the head has no zero points
    assert served or algorithm not in ("rtn", "gptq")
    assert ops == [
        *([".Reshape"] * (2 * (share and served))),
        "com.microsoft.GatherBlockQuantized",
        "com.microsoft.MatMulNBits",
    ]
    assert (gather.inputs[0] is head.inputs[1]) == (share and served)
    floats = [
        v.name
        for v in result.model.graph.initializers.values()
        if v.dtype == F32 and v.const_value is not None and v.const_value.size >= WIDTH * 64
    ]
    assert not floats, f"a float32 copy of the table is left: {floats}"
    after = _run(result.model, feeds, tmp_path, "after")
    assert np.abs(after["logits"] - before["logits"]).max() < 0.2 * np.abs(before["logits"]).max()
    if (
        algorithm == "rtn"
    ):  # the rows of the table's own round-to-nearest (an untied table), exactly
        own = QuantizeInt4Pass(block_size=32)(_tied_model(head=False)).model
        assert "MatMulNBits" not in {n.op_type for n in own.graph}
        np.testing.assert_array_equal(after["rows"], _run(own, feeds, tmp_path, "own")["rows"])
    with pytest.raises(RequestError, match="algorithm"):
        QuantizeInt4Pass(algorithm="gptq-without-text")
    with pytest.raises(RequestError, match="calibration"):
        QuantizeInt4Pass(algorithm="gptq")


@pytest.mark.parametrize("symmetric", [True, False])
def test_int4_round_to_nearest_writes_the_quantizers_own_node(symmetric):
    """The pass feeds each MatMul's weight to the quantizer's kernel itself; the node and initializers
    equal those of ONNX Runtime's MatMulNBitsQuantizer on the same graph."""
    from mhe_edge.passes.quantize_int4 import QuantizeInt4Pass, _import_quantizer

    def graph_with_matmul():
        x = _value("x", ["B", 64])
        graph = ir.Graph([x], [], nodes=[], name="int4")
        weight = np.random.default_rng(3).standard_normal((64, WIDTH)).astype(np.float32)
        matmul = ir.node("MatMul", [x, _const(graph, "w", weight)], name="mm")
        graph.append(matmul)
        matmul.outputs[0].name = "y"
        graph.outputs.append(matmul.outputs[0])
        return _model(graph)

    ours = QuantizeInt4Pass(block_size=32, symmetric=symmetric)(graph_with_matmul()).model
    theirs = _import_quantizer()(
        ir.to_proto(graph_with_matmul()),
        bits=4,
        block_size=32,
        is_symmetric=symmetric,
        accuracy_level=4,
        op_types_to_quantize=("MatMul",),
    )
    theirs.process()
    library = ir.serde.deserialize_model(theirs.model.model)
    (a,), (b,) = list(ours.graph), list(library.graph)
    assert (a.domain, a.op_type, a.name) == (b.domain, b.op_type, b.name)
    assert {k: v.value for k, v in a.attributes.items()} == {
        k: v.value for k, v in b.attributes.items()
    }
    assert [v.name for v in a.inputs] == [v.name for v in b.inputs]
    for mine, library_value in zip(a.inputs[1:], b.inputs[1:]):
        np.testing.assert_array_equal(mine.const_value.numpy(), library_value.const_value.numpy())


# --- FuseSkipRmsNormPass


def test_skip_rms_norm_fuses_a_residual_add_and_keeps_the_sum(tmp_path):
    from mhe_edge.passes.fuse_skip_norm import FuseSkipRmsNormPass

    a, b = _value("a", ["B", "T", 8]), _value("b", ["B", "T", 8])
    graph = ir.Graph([a, b], [], nodes=[], name="skip")
    scale = _const(graph, "scale", RNG.standard_normal(8).astype(np.float32))
    add = ir.node("Add", [a, b])
    norm = ir.node("RMSNormalization", [add.outputs[0], scale], {"axis": -1, "epsilon": 1e-6})
    later = ir.node("Mul", [add.outputs[0], _const(graph, "two", np.float32(2.0))])  # the stream
    biased = ir.node("Add", [norm.outputs[0], _const(graph, "bias", np.ones(8, np.float32))])
    for node in (add, norm, later, biased):
        graph.append(node)
    for node, name in ((biased, "y"), (later, "z")):
        node.outputs[0].name = name
        node.outputs[0].shape, node.outputs[0].type = ir.Shape(["B", "T", 8]), ir.TensorType(F32)
        graph.outputs.append(node.outputs[0])
    add.outputs[0].shape, add.outputs[0].type = ir.Shape(["B", "T", 8]), ir.TensorType(F32)
    model = _model(graph)
    feeds = {n: RNG.standard_normal((2, 3, 8)).astype(np.float32) for n in ("a", "b")}
    before = _run(model, feeds, tmp_path, "before")
    result = FuseSkipRmsNormPass()(model)
    ops = [f"{n.domain}.{n.op_type}" if n.domain else n.op_type for n in result.model.graph]
    assert result.modified and sorted(ops) == [
        "Add",  # the bias: a constant input, not a residual
        "Mul",
        "com.microsoft.SkipSimplifiedLayerNormalization",
    ]
    (skip,) = [n for n in result.model.graph if n.op_type == "SkipSimplifiedLayerNormalization"]
    assert [v.name for v in skip.outputs[1:3]] == ["", ""]  # statistics nobody reads: not written
    after = _run(result.model, feeds, tmp_path, "after")
    for name in ("y", "z"):
        assert np.abs(after[name] - before[name]).max() < 1e-5
    assert not FuseSkipRmsNormPass()(result.model).modified  # nothing left to fuse
