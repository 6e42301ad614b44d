"""DecomposeAttentionPass: write each standard `Attention` node (opset 23) out in basic ops that every runtime
has: Reshape/Transpose into heads, Concat onto the cache, MatMul, scale, mask, Softmax, MatMul.

The KV heads are never copied per query head: queries are grouped as (B, g, n/g, T, d) and keys as
(B, g, 1, S, d), so MatMul broadcasts each KV head over its group. An MHE model folded to one KV head
keeps its one-head cache and its memory saving on any runtime.

Preconditions: the 3-D input form (B, T, heads*d), known head counts, and a mask (if any) with one head.
"""

from __future__ import annotations

import math

import numpy as np
import onnx_ir as ir

from mhe_edge.contract import DOMAIN
from mhe_edge.passes._graph import GraphRefused, NewNodes, add_initializer, input_of, ints


class DecomposeAttentionPass(ir.passes.InPlacePass):
    def requires(self, model: ir.Model) -> None:
        if any(n.domain == DOMAIN for n in model.graph):
            raise GraphRefused(
                "the graph still has mhe_edge MHE attention nodes; fold the head embeddings first"
            )
        for node in _attention_nodes(model.graph):
            where = node.name or "an Attention node"
            query = input_of(node, 0)
            if query.shape is not None and len(query.shape) != 3:
                raise GraphRefused(
                    f"{where} uses the 4-D input form; only the 3-D form is decomposed"
                )
            for name in ("q_num_heads", "kv_num_heads"):
                if node.attributes.get(name) is None:
                    raise GraphRefused(f"{where} has no {name}")
            for name in ("softcap", "qk_matmul_output_mode"):
                if node.attributes.get(name) is not None and node.attributes[name].value:
                    raise GraphRefused(f"{where} uses {name}, which is not decomposed")
            if len(node.outputs) > 3 and node.outputs[3].uses():
                raise GraphRefused(f"{where}'s qk_matmul_output is used")
            mask = node.inputs[3] if len(node.inputs) > 3 else None
            if (
                mask is not None
                and mask.shape is not None
                and (len(mask.shape) != 4 or mask.shape[1] != 1)
            ):
                raise GraphRefused(
                    f"{where} has a mask that is not (B, 1, T, S)"
                )  # (unknown shapes: checked by parity)
            _head_size(node)

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        graph = model.graph
        nodes = _attention_nodes(graph)
        self._causal_cache: dict = {}
        for node in nodes:
            self._decompose(graph, node)
        return ir.passes.PassResult(model, modified=bool(nodes))

    def ensures(self, model: ir.Model) -> None:
        """No attention operator is left: the graph is basic ops only."""
        if _attention_nodes(model.graph):
            raise ir.passes.PostconditionError("an Attention node is left after decomposing")

    def _decompose(self, graph: ir.Graph, node: ir.Node) -> None:
        inputs = list(node.inputs) + [None] * (6 - len(node.inputs))
        query, key, value, mask, past_key, past_value = inputs[:6]
        n = node.attributes["q_num_heads"].as_int()
        g = node.attributes["kv_num_heads"].as_int()
        causal = (
            node.attributes.get("is_causal") is not None
            and node.attributes["is_causal"].as_int() == 1
        )
        prefix = (node.name or "attention").replace("/", "_")
        head_size = _head_size(node)
        scale = (
            node.attributes["scale"].as_float()
            if node.attributes.get("scale") is not None
            else 1.0 / math.sqrt(head_size)
        )
        new_nodes = NewNodes()
        emit = new_nodes.emit

        group = n // g
        q = emit(
            "Transpose",
            [
                emit(
                    "Reshape",
                    [query, ints(graph, f"{prefix}_q_shape", [0, 0, g, group, head_size])],
                )
            ],
            {"perm": [0, 2, 3, 1, 4]},
        )  # (B, g, n/g, T, d)
        kv_shape = ints(graph, f"{prefix}_kv_shape", [0, 0, g, head_size])
        k = emit(
            "Transpose", [emit("Reshape", [key, kv_shape])], {"perm": [0, 2, 1, 3]}
        )  # (B, g, T, d)
        v = emit("Transpose", [emit("Reshape", [value, kv_shape])], {"perm": [0, 2, 1, 3]})
        if past_key is not None:  # (B, g, S, d): the cache grows by this chunk
            k = emit("Concat", [past_key, k], {"axis": 2})
            v = emit("Concat", [past_value, v], {"axis": 2})
        present_key, present_value = k, v
        axis2 = ints(graph, f"{prefix}_axis2", [2])
        k_t = emit(
            "Unsqueeze", [emit("Transpose", [k], {"perm": [0, 1, 3, 2]}), axis2]
        )  # (B, g, 1, d, S)
        dtype = _numpy_dtype(input_of(node, 0))
        scores = emit("MatMul", [q, k_t])  # (B, g, n/g, T, S)
        if scale != 1.0:  # a folded MHE-MUL carries its scale in the query constant already
            scores = emit(
                "Mul",
                [scores, add_initializer(graph, f"{prefix}_scale", np.array(scale, dtype=dtype))],
            )
        if mask is not None:  # (B, 1, T, S) -> (B, 1, 1, T, S)
            scores = emit("Add", [scores, emit("Unsqueeze", [mask, axis2])])
        if causal:
            allowed = self._causal_mask(graph, query, present_key, emit, prefix)
            # The lowest finite float rather than -inf: files with non-finite constants are refused on read, and
            # softmax gives the same zero weight (fp16 clips it to -65504).
            lowest = add_initializer(
                graph, f"{prefix}_lowest", np.array(np.finfo(dtype).min, dtype)
            )
            scores = emit("Where", [allowed, scores, lowest])
        probs = emit("Softmax", [scores], {"axis": -1})
        out = emit("MatMul", [probs, emit("Unsqueeze", [v, axis2])])  # (B, g, n/g, T, d)
        y = emit(
            "Reshape",
            [
                emit("Transpose", [out], {"perm": [0, 3, 1, 2, 4]}),
                ints(graph, f"{prefix}_y_shape", [0, 0, -1]),
            ],
        )
        replacements = [y] + ([present_key, present_value] if past_key is not None else [])
        old_outputs = list(node.outputs[: len(replacements)])
        ir.convenience.replace_nodes_and_values(
            graph, node, [node], new_nodes, old_outputs, replacements
        )

    def _causal_mask(self, graph, query, present_key, emit, prefix):
        """(T, S) bool: query t (absolute position S - T + t) sees keys 0..S-T+t. Every layer of a step shares
        T and S, so it is built once, where the first layer needs it."""
        if "allowed" in self._causal_cache:
            return self._causal_cache["allowed"]
        new_len = emit("Squeeze", [emit("Shape", [query], {"start": 1, "end": 2})])
        total = emit("Squeeze", [emit("Shape", [present_key], {"start": 2, "end": 3})])
        zero, one = (
            add_initializer(graph, f"{prefix}_{name}", np.array(v, np.int64))
            for name, v in (("zero", 0), ("one", 1))
        )
        q_pos = emit(
            "Unsqueeze",
            [
                emit("Range", [emit("Sub", [total, new_len]), total, one]),
                ints(graph, f"{prefix}_axis1", [1]),
            ],
        )
        k_pos = emit("Range", [zero, total, one])
        allowed = emit("LessOrEqual", [k_pos, q_pos])  # (T, S)
        self._causal_cache["allowed"] = allowed
        return allowed


def _attention_nodes(graph: ir.Graph) -> list[ir.Node]:
    return [n for n in graph if n.domain == "" and n.op_type == "Attention"]


def _numpy_dtype(value: ir.Value):
    """The float dtype constants next to `value` need (float32 until a precision pass converts them)."""
    return np.float16 if value.dtype == ir.DataType.FLOAT16 else np.float32


def _head_size(node: ir.Node) -> int:
    """From the cache's last axis, or the key's width over the KV heads, or the query's over the query heads."""
    inputs = list(node.inputs) + [None] * (6 - len(node.inputs))
    past_key = inputs[4]
    if past_key is not None and past_key.shape is not None and isinstance(past_key.shape[-1], int):
        return past_key.shape[-1]
    for value, heads in ((inputs[1], "kv_num_heads"), (inputs[0], "q_num_heads")):
        width = value.shape[-1] if value is not None and value.shape is not None else None
        if isinstance(width, int):
            return width // node.attributes[heads].as_int()
    raise GraphRefused(
        f"{node.name or 'an Attention node'} has a head size that cannot be read from its inputs"
    )
