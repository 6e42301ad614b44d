"""ConvertToFloat16Pass: weights, compute, KV cache and float outputs in float16.

I/O after the pass: `input_ids` and `attention_mask` stay int64; `past_key_values.*`, `present.*`,
`logits` and `last_hidden_state` become float16 (the cache is where the memory is, so it shrinks too).
LayerNormalization keeps its fp32 statistics (stash_type=1), as ONNX Runtime's kernels do.
Precondition: the graph is not quantized (integer MatMuls have no float16 form here). A graph with no
float32 left is not modified.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
import onnx_ir.passes.common as common

from mhe_edge.passes._graph import GraphRefused

FLOAT, HALF = ir.DataType.FLOAT, ir.DataType.FLOAT16
HALF_MAX = float(np.finfo(np.float16).max)


def to_half(array: np.ndarray) -> np.ndarray:
    """Clip to float16's range first: e.g. a padding bias of float32's min must become -65504, not -inf
    (then 0 * bias is 0, not NaN)."""
    return np.clip(array, -HALF_MAX, HALF_MAX).astype(np.float16)


QUANTIZED_OPS = {
    "DynamicQuantizeLinear",
    "MatMulInteger",
    "MatMulNBits",
    "QuantizeLinear",
    "DequantizeLinear",
}


class ConvertToFloat16Pass(ir.passes.InPlacePass):
    def requires(self, model: ir.Model) -> None:
        quantized = sorted({n.op_type for n in model.graph if n.op_type in QUANTIZED_OPS})
        if quantized:
            raise GraphRefused(
                f"the graph is quantized ({', '.join(quantized)}); convert to float16 before quantizing, not after"
            )

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        graph = model.graph
        changed = 0
        for value in graph.initializers.values():
            if value.const_value is not None and value.const_value.dtype == FLOAT:
                value.const_value = ir.tensor(to_half(value.const_value.numpy()), name=value.name)
                value.type = ir.TensorType(HALF)
                changed += 1
        for value in [*graph.inputs, *graph.outputs]:
            if value.dtype == FLOAT:
                value.type = ir.TensorType(HALF)
                changed += 1
        for node in ir.traversal.RecursiveGraphIterator(graph):
            changed += self._convert_node(node)
        if not changed:
            return ir.passes.PassResult(model, modified=False)
        for node in ir.traversal.RecursiveGraphIterator(graph):
            for (
                output
            ) in node.outputs:  # let shape inference recompute every intermediate type and shape
                if not output.is_graph_output():
                    output.type = None
                    output.shape = (
                        None  # a shape without a type is what onnx_ir warns about on saving
                    )
        common.ShapeInferencePass()(model)
        return ir.passes.PassResult(model, modified=True)

    @staticmethod
    def _convert_node(node: ir.Node) -> bool:
        """Retype one node's float32 constants and casts; whether anything changed."""
        if node.op_type == "Cast" and node.attributes["to"].as_int() == FLOAT:
            node.attributes["to"] = ir.AttrInt64("to", HALF)
            return True
        if node.op_type in ("Constant", "ConstantOfShape"):
            attr = node.attributes.get("value")
            if attr is not None and attr.as_tensor().dtype == FLOAT:
                node.attributes["value"] = ir.AttrTensor(
                    "value", ir.tensor(to_half(attr.as_tensor().numpy()))
                )
                return True
            if node.op_type == "Constant" and node.attributes.get("value_float") is not None:
                scalar = node.attributes.pop("value_float").as_float()
                node.attributes["value"] = ir.AttrTensor(
                    "value", ir.tensor(to_half(np.array(scalar, dtype=np.float32)))
                )
                return True
        return False
