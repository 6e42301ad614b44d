"""ConvertToFloat16Pass: weights, compute, KV cache and float outputs in float16.

I/O after the pass: `input_ids` and `attention_mask` stay int64; `past_key_values.*`, `present.*`,
`logits` and `last_hidden_state` become float16 (the cache is where the memory is, so it shrinks too).
LayerNormalization keeps its fp32 statistics (stash_type=1), as ONNX Runtime's kernels do.
"""
from __future__ import annotations

import numpy as np
import onnx_ir as ir
import onnx_ir.passes.common as common

FLOAT, HALF = ir.DataType.FLOAT, ir.DataType.FLOAT16
HALF_MAX = float(np.finfo(np.float16).max)


def to_half(array: np.ndarray) -> np.ndarray:
    """Clip to float16's range first: e.g. a padding bias of float32's min must become -65504, not -inf
    (then 0 * bias is 0, not NaN)."""
    return np.clip(array, -HALF_MAX, HALF_MAX).astype(np.float16)


class ConvertToFloat16Pass(ir.passes.InPlacePass):
    def call(self, model: ir.Model) -> ir.passes.PassResult:
        graph = model.graph
        for value in graph.initializers.values():
            if value.const_value is not None and value.const_value.dtype == FLOAT:
                value.const_value = ir.tensor(to_half(value.const_value.numpy()), name=value.name)
                value.type = ir.TensorType(HALF)
        for value in [*graph.inputs, *graph.outputs]:
            if value.dtype == FLOAT:
                value.type = ir.TensorType(HALF)
        for node in ir.traversal.RecursiveGraphIterator(graph):
            self._convert_node(node)
            for output in node.outputs:  # let shape inference recompute every intermediate type
                if not output.is_graph_output():
                    output.type = None
        common.ShapeInferencePass()(model)
        return ir.passes.PassResult(model, modified=True)

    @staticmethod
    def _convert_node(node: ir.Node) -> None:
        if node.op_type == "Cast" and node.attributes["to"].as_int() == FLOAT:
            node.attributes["to"] = ir.AttrInt64("to", HALF)
        elif node.op_type in ("Constant", "ConstantOfShape"):
            attr = node.attributes.get("value")
            if attr is not None and attr.as_tensor().dtype == FLOAT:
                node.attributes["value"] = ir.AttrTensor("value", ir.tensor(to_half(attr.as_tensor().numpy())))
            elif node.op_type == "Constant" and node.attributes.get("value_float") is not None:
                scalar = node.attributes.pop("value_float").as_float()
                node.attributes["value"] = ir.AttrTensor("value", ir.tensor(to_half(np.array(scalar, dtype=np.float32))))
