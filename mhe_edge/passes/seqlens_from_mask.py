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

import numpy as np
import onnx_ir as ir
import onnx_ir.passes.common as common

from mhe_edge.contract import ATTENTION_MASK, MS_DOMAIN, PAST_PREFIX
from mhe_edge.passes._graph import GraphRefused, add_initializer, ints

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


COS_CACHE, SIN_CACHE, ATTENTION_BIAS, QUERY_SEQLENS = 7, 8, 10, 16  # GroupQueryAttention's inputs
MIN_ORT_ATTENTION_BIAS = (
    "1.22"  # the oldest ONNX Runtime whose GroupQueryAttention takes attention_bias
)


def _rotates(node: ir.Node) -> bool:
    rotary = node.attributes.get("do_rotary")
    return rotary is not None and rotary.as_int() == 1


def _rotary_outside(
    graph: ir.Graph, node: ir.Node, inputs: list, positions: ir.Value
) -> tuple[list, list]:
    """RotaryEmbedding nodes turning query and key by `positions` (B, T), and the kernel's new query, key
    and value: a packed QKV input is split first."""
    heads, kv_heads = (node.attributes[k].as_int() for k in ("num_heads", "kv_num_heads"))
    query, key, value = inputs[:3]
    nodes: list[ir.Node] = []
    if key is None:  # packed (B, T, (heads + 2 kv_heads) d)
        head_size = 2 * inputs[COS_CACHE].shape[1]
        sizes = [heads * head_size, kv_heads * head_size, kv_heads * head_size]
        split = ints(graph, "padding_qkv_sizes", sizes)
        nodes.append(ir.node("Split", [query, split], {"axis": -1}, num_outputs=3))
        query, key, value = nodes[-1].outputs
    interleaved = node.attributes.get("rotary_interleaved")
    turned = []
    for x in (query, key):
        nodes.append(
            ir.node(
                "RotaryEmbedding",
                [x, positions, inputs[COS_CACHE], inputs[SIN_CACHE]],
                {"interleaved": 0 if interleaved is None else interleaved.as_int()},
                domain=MS_DOMAIN,
            )
        )
        turned.append(nodes[-1].outputs[0])
    return nodes, [turned[0], turned[1], value]


class AnyPaddingFromAttentionMaskPass(ir.passes.InPlacePass):
    """Make an ort-target decoder right for left padding (transformers.js and Optimum pad on the left).

    GroupQueryAttention keeps each row's tokens first: `seqlens_k` = sum(mask) - 1 says how many, so a
    left-padded row attends to its padding and misses its last tokens. Here every row's `seqlens_k` is the
    mask's length - 1 (every cache slot holds a position, padding or not) and the mask itself becomes the
    kernel's `attention_bias` (B, 1, T, total): 0 for a token, half the dtype's lowest finite value for
    padding, so a row of only padding stays finite. Positions already count the mask's 1s (the export's
    cumsum). Right padding stays right (its padding is masked the same way), and the in-place cache too:
    a step writes its tokens at the mask's last columns, which is where the runtime's mask puts them.
    `query_seqlens`, where present, becomes T for every row (no row of a chunk is padding any more).
    Rotary inside the kernel (`do_rotary`) would turn each token by its cache slot, not by the export's
    position (the mask's 1s so far): a right-padded row that goes on decoding has slots ahead of its
    positions. So such a node gets explicit `com.microsoft.RotaryEmbedding` nodes for query and key, fed
    the export's positions and the node's own caches (a packed QKV input is split first).
    """

    def requires(self, model: ir.Model) -> None:
        gqa = _gqa_nodes(model.graph)
        if not gqa:
            raise GraphRefused(
                "left padding is only wrong in GroupQueryAttention files (--target ort)"
            )
        if not any(v.name == ATTENTION_MASK for v in model.graph.inputs):
            raise GraphRefused(
                "this file has no attention_mask input (an older export): re-export it to take padding"
            )
        for node in gqa:
            if len(node.inputs) > ATTENTION_BIAS and node.inputs[ATTENTION_BIAS] is not None:
                raise GraphRefused(
                    f"{node.name}: GroupQueryAttention already has an attention_bias"
                )

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        graph = model.graph
        gqa = _gqa_nodes(graph)
        mask = next(v for v in graph.inputs if v.name == ATTENTION_MASK)
        query = gqa[0].inputs[0]
        dtype = query.dtype if query is not None and query.dtype is not None else ir.DataType.FLOAT
        # half the lowest finite value: added to any real score it stays finite (float16 included), so a row
        # of only padding softmaxes to a finite uniform row and no NaN reaches the next layer's keys
        lowest = float(np.finfo(dtype.numpy()).min) / 2
        nodes: list[ir.Node] = []

        def emit(op_type, inputs, attributes=None):
            nodes.append(ir.node(op_type, inputs, attributes))
            return nodes[-1].outputs[0]

        total = emit("Shape", [mask], {"start": 1, "end": 2})  # [total]
        seqlens_k = emit(
            "Cast",
            [emit("Sub", [total, ints(graph, "padding_one", [1])])],
            {"to": ir.DataType.INT32},
        )  # [1]: every row's tokens - 1, padding included
        batch = emit("Shape", [mask], {"start": 0, "end": 1})  # [B]
        seqlens_k = emit("Expand", [seqlens_k, batch])  # (B,)
        new_len = emit("Shape", [graph.inputs[0]], {"start": 1, "end": 2})  # input_ids: [T]
        padding = emit(
            "Cast", [emit("Equal", [mask, ints(graph, "padding_zero", [0])])], {"to": dtype}
        )
        lowest_value = add_initializer(graph, "padding_lowest", np.array(lowest, dtype.numpy()))
        bias = emit(
            "Mul", [padding, lowest_value]
        )  # (B, total): 0, or half the lowest finite value
        bias = emit("Unsqueeze", [bias, ints(graph, "padding_axes", [1, 2])])  # (B, 1, 1, total)
        shape = emit(
            "Concat", [batch, ints(graph, "padding_heads", [1]), new_len, total], {"axis": 0}
        )
        bias = emit("Expand", [bias, shape])  # (B, 1, T, total): the kernel wants T spelled out
        query_seqlens = emit("Cast", [emit("Expand", [new_len, batch])], {"to": ir.DataType.INT32})
        positions = None
        if any(_rotates(node) for node in gqa):  # the export's: the mask's 1s so far - 1, (B, T)
            counted = emit("CumSum", [mask, ints(graph, "padding_axis1", [1])])
            counted = emit(
                "Max",
                [
                    emit("Sub", [counted, ints(graph, "padding_position_one", [1])]),
                    ints(graph, "padding_position_zero", [0]),
                ],
            )
            positions = emit(
                "Slice",
                [
                    counted,
                    emit("Neg", [new_len]),
                    ints(graph, "padding_end", [2**62]),
                    ints(graph, "padding_axis1", [1]),
                ],
            )
        graph.insert_before(next(iter(graph)), nodes)
        for node in gqa:
            inputs = list(node.inputs) + [None] * (ATTENTION_BIAS + 1 - len(node.inputs))
            inputs[SEQLENS_K] = seqlens_k
            inputs[ATTENTION_BIAS] = bias
            if len(inputs) > QUERY_SEQLENS and inputs[QUERY_SEQLENS] is not None:
                inputs[QUERY_SEQLENS] = query_seqlens
            attributes = {k: a.value for k, a in node.attributes.items()}
            rotations: list[ir.Node] = []
            if _rotates(node) and positions is not None:
                rotations, inputs[:3] = _rotary_outside(graph, node, inputs, positions)
                inputs[COS_CACHE] = inputs[SIN_CACHE] = None
                attributes["do_rotary"] = 0
            replacement = ir.node(
                node.op_type,
                inputs,
                attributes,
                domain=node.domain,
                num_outputs=len(node.outputs),
                name=node.name,
            )
            ir.convenience.replace_nodes_and_values(
                graph,
                node,
                [node],
                [*rotations, replacement],
                list(node.outputs),
                list(replacement.outputs),
            )
        common.RemoveUnusedNodesPass()(model)
        return ir.passes.PassResult(model, modified=True)
