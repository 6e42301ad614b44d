"""One weight at a time: a MatMul's or a Gather's weight quantized to 4 bits by ONNX Runtime's own
per-node quantizers, and the nodes and initializers they write spliced into an onnx_ir graph. The pass
never holds more than the 4-bit results and the one float32 weight in hand."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from mhe_edge.contract import MS_DOMAIN
from mhe_edge.passes._graph import GraphRefused, register_tensor


def quantize_node(graph: ir.Graph, node: ir.Node, quantizer) -> None:
    """Quantize one MatMul's or Gather's weight with the quantizer's per-node `quantize`, given a graph of
    that weight alone, and splice the nodes and initializers it returns into `graph`."""
    import onnx

    index = 0 if node.op_type == "Gather" else 1
    weight = node.inputs[index]
    tensor = None if weight is None else weight.const_value
    if weight is None or tensor is None:
        return
    if node.op_type == "MatMul" and hasattr(quantizer, "qbits_block_quant"):
        quantize_matmul_rtn(graph, node, weight, tensor, quantizer)
        return
    scratch = onnx.GraphProto()
    # the bytes themselves: a proto of an external tensor would name its file, which the quantizer
    # would resolve against the current directory rather than the model's folder
    scratch.initializer.append(
        ir.serde.serialize_tensor(ir.tensor(tensor.numpy(), name=weight.name))
    )
    attributes = {a.name: a.value for a in node.attributes.values() if a.name == "axis"}
    proto = onnx.helper.make_node(
        node.op_type,
        [(v.name or "") if v is not None else "" for v in node.inputs],
        [v.name or "" for v in node.outputs],
        name=node.name or "",
        **attributes,
    )
    replacement = quantizer.quantize(proto, [scratch])
    if replacement == [proto]:  # the quantizer skipped it
        return
    values: dict[str, ir.Value | None] = {v.name or "": v for v in node.inputs if v is not None}
    values[""] = None
    for initializer in scratch.initializer[1:]:
        # a message of its own: a tensor made from `initializer` would keep its proto, and protobuf keeps
        # every message of `scratch` (the float32 weight too) for as long as any one of them lives
        alone = onnx.TensorProto.FromString(initializer.SerializeToString())
        values[initializer.name] = register_tensor(graph, ir.serde.deserialize_tensor(alone))
    new_nodes = []
    for made in replacement:
        new = ir.Node(
            made.domain,
            made.op_type,
            [values[name] for name in made.input],
            [ir.serde.deserialize_attribute(a) for a in made.attribute],
            num_outputs=len(made.output),
            name=made.name or None,
        )
        for output, name in zip(new.outputs, made.output):
            output.name = name
            values[name] = output
        new_nodes.append(new)
    outputs = [values[o.name or ""] for o in node.outputs]
    if any(o is None for o in outputs):
        raise GraphRefused(f"the quantizer lost {node.name or node.op_type}'s output")
    ir.convenience.replace_nodes_and_values(
        graph, node, [node], new_nodes, node.outputs, [o for o in outputs if o is not None]
    )
    if isinstance(tensor, ir.ExternalTensor):
        tensor.release()  # its pages were mapped to read it; the process keeps none of them


def quantize_matmul_rtn(
    graph: ir.Graph, node: ir.Node, weight: ir.Value, tensor, quantizer
) -> None:
    """Round-to-nearest of one MatMul by the quantizer's own kernel (`qbits_block_quant`), fed the
    weight's array directly: through a proto, a weight the size of a large vocabulary's head would be
    copied three more times. The node is the one the quantizer's `quantize` writes (a unit test holds
    the two equal)."""
    config = quantizer.config
    array = np.ascontiguousarray(tensor.numpy())  # (K, N); a transposed tied table is computed here
    k, n = array.shape
    packed, scales, zero_points = quantizer.qbits_block_quant(array)
    del array
    if isinstance(tensor, ir.ExternalTensor):
        tensor.release()
    inputs = [
        node.inputs[0],
        register_tensor(graph, ir.tensor(packed, name=f"{weight.name}_Q4")),
        register_tensor(graph, ir.tensor(scales, name=f"{weight.name}_scales")),
    ]
    if not config.is_symmetric:
        inputs.append(
            register_tensor(graph, ir.tensor(zero_points, name=f"{weight.name}_zero_points"))
        )
    attributes = {"K": k, "N": n, "bits": 4, "block_size": config.block_size}
    if config.accuracy_level:
        attributes["accuracy_level"] = config.accuracy_level
    quantized = ir.node(
        "MatMulNBits",
        inputs,
        attributes,
        domain=MS_DOMAIN,
        name=f"{node.name}_Q4" if node.name else None,
    )
    ir.convenience.replace_nodes_and_values(
        graph, node, [node], [quantized], node.outputs, quantized.outputs
    )
