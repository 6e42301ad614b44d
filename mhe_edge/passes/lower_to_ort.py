"""Lower standard `Attention` nodes of a decoder to `com.microsoft.GroupQueryAttention` (`--target ort`).

GQA is ONNX Runtime's fused grouped-query kernel (CPU fp32/fp16, CUDA fp16/bf16) with the KV cache in
BNSH layout; after folding, an MHE layer is GQA with kv_num_heads = 1. GQA wants `seqlens_k` (int32 [B],
each row's tokens - 1) and `total_sequence_length` (int32 scalar). A decoder with an `attention_mask` input
gets them from it, as onnxruntime-genai's model builder does (sum of the row's mask - 1, and the mask's
length); the additive mask the export built from it is dropped, so such files need right padding (GQA keeps
each row's tokens first). A decoder exported without the mask gets them from shapes. Only causal
self-attention with a cache is lowered: encoders (bidirectional, with a padding mask) keep the standard op,
which ONNX Runtime also runs natively.
Preconditions: no unfolded mhe_edge node is left (fold first), and every node to lower has a head size
that is a multiple of 8 (the kernel's requirement).
"""

from __future__ import annotations

import onnx_ir as ir

from mhe_edge.contract import ATTENTION_MASK, DOMAIN, MS_DOMAIN
from mhe_edge.passes._graph import GraphRefused, NewNodes, TargetRefused, input_of, ints


class LowerToGroupQueryAttentionPass(ir.passes.InPlacePass):
    def __init__(self, query_seqlens: bool = False):
        super().__init__()
        self.query_seqlens = query_seqlens

    def requires(self, model: ir.Model) -> None:
        if any(n.domain == DOMAIN for n in model.graph):
            raise GraphRefused(
                "the graph still has mhe_edge MHE attention nodes; fold the head embeddings first"
            )
        for node in self._to_lower(model.graph):
            past_key = input_of(node, 4)
            head_size = past_key.shape[-1] if past_key.shape is not None else None
            if not isinstance(head_size, int) or head_size % 8:
                raise TargetRefused(
                    f"GroupQueryAttention needs a head size that is a multiple of 8 (this model's"
                    f" is {head_size}); use --target std"
                )

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        graph = model.graph
        nodes = self._to_lower(graph)
        lengths = None  # every layer of a decoder step shares batch, past and new length: compute them once
        for node in nodes:
            lengths = self._lower(graph, node, lengths)
        if nodes:
            model.opset_imports.setdefault(MS_DOMAIN, 1)
        return ir.passes.PassResult(model, modified=bool(nodes))

    def ensures(self, model: ir.Model) -> None:
        """Every attention the pass lowers is GroupQueryAttention now."""
        if self._to_lower(model.graph):
            raise ir.passes.PostconditionError("standard Attention is left after lowering")

    def _to_lower(self, graph: ir.Graph) -> list[ir.Node]:
        has_mask = any(v.name == ATTENTION_MASK for v in graph.inputs)
        return [
            n
            for n in graph
            if n.domain == "" and n.op_type == "Attention" and self._lowerable(n, has_mask)
        ]

    @staticmethod
    def _lowerable(node: ir.Node, has_mask_input: bool) -> bool:
        inputs = list(node.inputs) + [None] * (6 - len(node.inputs))
        attrs = node.attributes
        return (
            attrs.get("is_causal") is not None
            and attrs["is_causal"].as_int() == 1
            and (inputs[3] is None or has_mask_input)  # no mask, or one GQA's lengths replace
            and inputs[4] is not None
            and inputs[5] is not None  # a cache
            and len(node.outputs) >= 3
            and inputs[0] is not None
            and (inputs[0].shape is None or len(inputs[0].shape) == 3)  # the 3-D form
            and attrs.get("softcap") is None
            and attrs.get("qk_matmul_output_mode") is None
        )

    def _lower(self, graph: ir.Graph, node: ir.Node, lengths: tuple | None) -> tuple:
        """Replace one node; returns (seqlens_k, total_sequence_length, query_seqlens) for the next."""
        query, key, value, _, past_key, past_value = list(node.inputs)[:6]
        n = node.attributes["q_num_heads"].as_int()
        g = node.attributes["kv_num_heads"].as_int()
        attributes: dict[str, int | float] = {"num_heads": n, "kv_num_heads": g}
        if node.attributes.get("scale") is not None:
            attributes["scale"] = node.attributes["scale"].as_float()
        prefix = (node.name or "attention").replace("/", "_")
        new_nodes = NewNodes()
        emit = new_nodes.emit

        if lengths is None:
            new_len = emit("Shape", [query], {"start": 1, "end": 2})  # [T]
            batch = emit("Shape", [query], {"start": 0, "end": 1})  # [B]
            mask = next((v for v in graph.inputs if v.name == ATTENTION_MASK), None)
            if mask is not None:  # per row: its tokens - 1; the total is the mask's length
                total = emit("Shape", [mask], {"start": 1, "end": 2})  # [P + T]
                valid = emit(
                    "ReduceSum", [mask, ints(graph, f"{prefix}_axis1", [1])], {"keepdims": 0}
                )  # (B,)
                seqlens_k = emit(
                    "Cast",
                    [emit("Sub", [valid, ints(graph, f"{prefix}_one", [1])])],
                    {"to": ir.DataType.INT32},
                )
            else:
                past_len = emit("Shape", [past_key], {"start": 2, "end": 3})  # [P]
                total = emit("Add", [past_len, new_len])  # [P + T]
                last = emit("Sub", [total, ints(graph, f"{prefix}_one", [1])])  # [P + T - 1]
                seqlens_k = emit(
                    "Cast", [emit("Expand", [last, batch])], {"to": ir.DataType.INT32}
                )  # (B,)
            total_i32 = emit(
                "Cast", [emit("Squeeze", [total])], {"to": ir.DataType.INT32}
            )  # scalar
            # query_seqlens (every row holds T valid tokens) lets the kernel take batched multi-token chunks
            # with a past, which it otherwise refuses on CPU for batch > 1; only ONNX Runtime 1.32+ has it.
            query_seqlens = None
            if (
                self.query_seqlens and mask is not None
            ):  # per row: the tokens among this call's T (padding is not)
                new_mask = emit(
                    "Slice",
                    [
                        mask,
                        emit("Neg", [new_len]),
                        ints(graph, f"{prefix}_end", [2**62]),
                        ints(graph, f"{prefix}_axis1", [1]),
                    ],
                )
                valid_new = emit(
                    "ReduceSum", [new_mask, ints(graph, f"{prefix}_axis1", [1])], {"keepdims": 0}
                )
                query_seqlens = emit("Cast", [valid_new], {"to": ir.DataType.INT32})  # (B,)
            elif self.query_seqlens:
                query_seqlens = emit(
                    "Cast", [emit("Expand", [new_len, batch])], {"to": ir.DataType.INT32}
                )  # (B,)
            lengths = (seqlens_k, total_i32, query_seqlens)
        seqlens_k, total_i32, query_seqlens = lengths
        outputs = emit(
            "GroupQueryAttention",
            [query, key, value, past_key, past_value, seqlens_k, total_i32]
            + ([None] * 9 + [query_seqlens] if query_seqlens else []),
            attributes,
            domain=MS_DOMAIN,
            num_outputs=3,
        )
        ir.convenience.replace_nodes_and_values(
            graph, node, [node], new_nodes, list(node.outputs[:3]), list(outputs)
        )
        return lengths
