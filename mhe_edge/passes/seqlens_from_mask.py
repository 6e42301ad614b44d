"""SeqlensFromAttentionMaskPass: feed GroupQueryAttention's lengths from an `attention_mask` input.

With a shared past/present buffer (onnxruntime-genai's `past_present_share_buffer`) the cache tensors have
a fixed capacity, so their shape no longer tells how many tokens are valid. The generator then passes
`attention_mask` (int64 [batch, total_sequence], 1 for every token so far) and the kernel's
`seqlens_k` = sum(mask) - 1 and `total_sequence_length` = mask length come from it, as in the graphs
onnxruntime-genai's own model builder writes. Every place the graph read the past length from a past
tensor's shape (the position offset, for one) reads mask length - new tokens instead. Rows of a batch
share positions, so a batch must hold prompts of equal length.
"""

from __future__ import annotations

import onnx_ir as ir
import onnx_ir.passes.common as common

from mhe_edge.contract import ATTENTION_MASK, MS_DOMAIN, PAST_PREFIX
from mhe_edge.passes._graph import GraphRefused, ints

SEQLENS_K, TOTAL_SEQUENCE_LENGTH = 5, 6  # GroupQueryAttention's input positions


def _gqa_nodes(graph: ir.Graph) -> list[ir.Node]:
    return [n for n in graph if n.domain == MS_DOMAIN and n.op_type == "GroupQueryAttention"]


class SeqlensFromAttentionMaskPass(ir.passes.InPlacePass):
    def requires(self, model: ir.Model) -> None:
        if not _gqa_nodes(model.graph):
            raise GraphRefused(
                "a shared cache buffer needs GroupQueryAttention: optimize with --target ort first"
            )

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        graph = model.graph
        gqa = _gqa_nodes(graph)
        if any(v.name == ATTENTION_MASK for v in graph.inputs):
            return ir.passes.PassResult(model, modified=False)
        mask = ir.Value(
            name=ATTENTION_MASK,
            type=ir.TensorType(ir.DataType.INT64),
            shape=ir.Shape(["batch", "total_sequence"]),
        )
        graph.inputs.insert(1, mask)
        valid = ir.node(
            "ReduceSum", [mask, ints(graph, "mask_axis1", [1])], {"keepdims": 0}
        )  # (B,)
        last = ir.node("Sub", [valid.outputs[0], ints(graph, "mask_one", [1])])
        seqlens_k = ir.node("Cast", [last.outputs[0]], {"to": ir.DataType.INT32})
        length = ir.node("Shape", [mask], {"start": 1, "end": 2})
        squeezed = ir.node("Squeeze", [length.outputs[0]])
        total = ir.node("Cast", [squeezed.outputs[0]], {"to": ir.DataType.INT32})
        new_len = ir.node("Shape", [graph.inputs[0]], {"start": 1, "end": 2})  # input_ids: [T]
        past_len = ir.node("Sub", [length.outputs[0], new_len.outputs[0]])  # [total - T]
        new_nodes = [
            valid,
            last,
            seqlens_k,
            length,
            squeezed,
            total,
            new_len,
            past_len,
        ]
        graph.insert_before(next(iter(graph)), new_nodes)
        past_inputs = {v for v in graph.inputs if (v.name or "").startswith(PAST_PREFIX)}
        for node in [n for n in graph if n.op_type == "Shape" and n.inputs[0] in past_inputs]:
            start, end = (node.attributes.get(k) for k in ("start", "end"))
            if start is not None and start.as_int() == 2 and end is not None and end.as_int() == 3:
                node.outputs[0].replace_all_uses_with(past_len.outputs[0])
        for node in gqa:
            node.replace_input_with(SEQLENS_K, seqlens_k.outputs[0])
            node.replace_input_with(TOTAL_SEQUENCE_LENGTH, total.outputs[0])
        common.RemoveUnusedNodesPass()(model)
        return ir.passes.PassResult(model, modified=True)
