"""FuseGateUpPass (`--target ort`): a SwiGLU MLP's gate and up projections become one MatMul.

`silu(x Wg) * (x Wu)` reads x twice with two weights of the same shape; here it becomes `gu = x [Wg | Wu]`
then `g, u = Split(gu)` and the same `g * Sigmoid(g) * u`: one weight matrix per layer (one MatMulNBits
after --int4) and the same node count. Each candidate must hold: both MatMuls read the same input, each a
float32 2-D constant weight of one shape, read by nothing but the SiLU product. `modified` says whether any
pair was packed.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
import onnx_ir.passes.common as common

from mhe_edge.passes._graph import add_initializer, ints, sole_consumer


def _weight(node: ir.Node | None) -> np.ndarray | None:
    if node is None or node.op_type != "MatMul" or node.domain != "":
        return None
    tensor = ir.convenience.get_const_tensor(node.inputs[1]) if node.inputs[1] is not None else None
    if tensor is None or len(tensor.shape) != 2 or tensor.dtype != ir.DataType.FLOAT:
        return None
    return tensor.numpy()


def _swiglu(mul: ir.Node) -> tuple[ir.Node, ir.Node, np.ndarray, np.ndarray] | None:
    """(gate MatMul, up MatMul, their weights) when `mul` is `(g * Sigmoid(g)) * u` with g, u MatMul outputs."""
    if mul.op_type != "Mul" or mul.domain != "":
        return None
    for silu_out, up_out in (mul.inputs, mul.inputs[::-1]):
        silu = None if silu_out is None else silu_out.producer()
        if silu is None or silu.op_type != "Mul" or silu.domain != "" or up_out is None:
            continue
        for gate_out, sig_out in (silu.inputs, silu.inputs[::-1]):
            sigmoid = None if sig_out is None else sig_out.producer()
            if gate_out is None or sigmoid is None or sigmoid.op_type != "Sigmoid":
                continue
            gate, up = gate_out.producer(), up_out.producer()
            w_gate, w_up = _weight(gate), _weight(up)
            if gate is None or up is None or w_gate is None or w_up is None:
                continue
            if sigmoid.inputs[0] is not gate_out or w_gate.shape != w_up.shape:
                continue
            if gate.inputs[0] is not up.inputs[0] or sole_consumer(up_out, "Mul") is not mul:
                continue
            if {use.node for use in gate_out.uses()} != {
                silu,
                sigmoid,
            } or gate_out.is_graph_output():
                continue
            return gate, up, w_gate, w_up
    return None


class FuseGateUpPass(ir.passes.InPlacePass):
    def requires(self, model: ir.Model) -> None:
        pass  # any graph: MLPs that do not fit are left as they are

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        graph = model.graph
        packed = 0
        for mul in list(graph):
            found = _swiglu(mul)
            if found is None:
                continue
            gate, up, w_gate, w_up = found
            weight = add_initializer(
                graph, "gate_up_weight", np.concatenate([w_gate, w_up], axis=1)
            )
            matmul = ir.node(
                "MatMul", [gate.inputs[0], weight], name=f"{gate.name or 'mlp'}_gate_up"
            )
            sizes = ints(graph, "gate_up_sizes", [w_gate.shape[1], w_up.shape[1]])
            split = ir.node("Split", [matmul.outputs[0], sizes], {"axis": -1}, num_outputs=2)
            for new, old in zip(split.outputs, (gate.outputs[0], up.outputs[0])):
                new.type, new.shape = old.type, old.shape
            graph.insert_before(gate, [matmul, split])
            gate.outputs[0].replace_all_uses_with(split.outputs[0])
            up.outputs[0].replace_all_uses_with(split.outputs[1])
            graph.remove([gate, up], safe=True)
            packed += 1
        if packed:
            common.RemoveUnusedNodesPass()(model)  # the two weights each pair no longer reads
        return ir.passes.PassResult(model, modified=bool(packed))
