"""Fold MHE's head embeddings into constants and replace each `mhe_edge.MHEAttentionAdd`/`MHEAttentionMul` node by one
standard `Attention` node with a single KV head (docs/mhe-algebra.md derives the identities).

MUL: head i's query is q * C[i] with C = E_Q * E_K / sqrt(d); every head shares the cached k and v;
     E_V folds into the rows of the output projection W_O (same size).
ADD: head i's query is q + E_Q[i] (scaled by the kernel); E_K drops out (softmax cancels it);
     E_V folds into the output bias, b_O + concat_i(E_V[i]) W_O.
No per-head K or V is ever materialised, and the head-embedding initializers leave the graph.
Preconditions (checked for every node before any is touched): the head embeddings and the output
projection are constants, the output feeds one MatMul, the mode is add or mul. ADD folds E_V into the
output bias, adding one where the projection has none.
"""

from __future__ import annotations

import math

import numpy as np
import onnx_ir as ir

from mhe_edge.contract import DOMAIN, MODES
from mhe_edge.passes._graph import (
    GraphRefused,
    NewNodes,
    add_initializer,
    constant_array,
    ints,
    sole_consumer,
)

LEGACY_OP_TYPE = (
    "MHEAttention"  # earlier exports: one function for both modes, chosen by a "mode" attribute
)


def _mhe_nodes(graph: ir.Graph) -> list[ir.Node]:
    return [
        n
        for n in graph
        if n.domain == DOMAIN and (n.op_type in MODES or n.op_type == LEGACY_OP_TYPE)
    ]


def _mode(node: ir.Node) -> str:
    if node.op_type in MODES:
        return MODES[node.op_type]
    mode = node.attributes["mode"].as_string() if node.attributes.get("mode") is not None else None
    if mode not in ("add", "mul"):
        raise GraphRefused(f"{node.name or node.op_type}: unknown MHE mode {mode!r}")
    return mode


class FoldHeadEmbeddingsPass(ir.passes.InPlacePass):
    def requires(self, model: ir.Model) -> None:
        for node in _mhe_nodes(model.graph):
            _foldable(node)

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        graph = model.graph
        nodes = _mhe_nodes(graph)
        for node in nodes:
            replaced = self._fold(graph, node)
            for (
                value
            ) in replaced:  # the head embeddings and the unfolded projection: now dead weight
                if value.is_initializer() and not value.uses() and not value.is_graph_output():
                    del graph.initializers[value.name]  # type: ignore[arg-type]  # initializers are named
        if nodes and not any(n.domain == DOMAIN for n in graph):
            for key in [k for k in model.functions if k[0] == DOMAIN]:
                del model.functions[key]
            model.opset_imports.pop(DOMAIN, None)
        return ir.passes.PassResult(model, modified=bool(nodes))

    def ensures(self, model: ir.Model) -> None:
        """No MHE node, and no MHE function, is left: every layer is single-KV-head attention."""
        if _mhe_nodes(model.graph) or any(key[0] == DOMAIN for key in model.functions):
            raise ir.passes.PostconditionError("MHE attention is left after folding")

    def _fold(self, graph: ir.Graph, node: ir.Node) -> list[ir.Value]:
        """Rewrite one node; returns the constants it stopped using."""
        query, key, value, e_q_in, e_k_in, e_v_in, past_key, past_value, attn_bias = node.inputs
        mode, n, (e_q, e_k, e_v), out_matmul, bias_add = _foldable(node)
        is_causal = node.attributes["is_causal"].as_int()
        where = node.name or f"an {node.op_type} node"
        d = e_q.shape[1]
        dtype = constant_array(e_q_in, f"{where}: query head embeddings").dtype
        replaced = [e_q_in, e_k_in, e_v_in, attn_bias]
        w_o = constant_array(out_matmul.inputs[1], f"{where}: output projection").astype(
            np.float64
        )  # (n*d, D)
        prefix = (node.name or "mhe").replace("/", "_")

        if mode == "mul":
            query_constant = e_q * e_k / math.sqrt(d)  # (n, d): carries the softmax scale too
            scale = 1.0
            w_folded = w_o * e_v.reshape(n * d, 1)  # diag(E_V[i]) W_O[i*d:(i+1)*d, :]
            replaced.append(out_matmul.inputs[1])
            out_matmul.replace_input_with(
                1, add_initializer(graph, f"{prefix}_out_proj_folded", w_folded.astype(dtype))
            )
        else:  # add
            query_constant = e_q
            scale = 1.0 / math.sqrt(d)
            shift = (
                e_v.reshape(n * d) @ w_o
            )  # rows of P sum to 1, so E_V passes through as a constant
            if bias_add is None:  # no output bias yet: add one holding the shift
                projected = out_matmul.outputs[0]
                shifted = ir.Value(name=f"{prefix}_out_shifted")
                bias = add_initializer(graph, f"{prefix}_out_bias_folded", shift.astype(dtype))
                projected.replace_all_uses_with(shifted, replace_graph_outputs=True)
                if shifted.is_graph_output():  # keep the output's name where the graph exposes it
                    projected.name, shifted.name = shifted.name, projected.name
                graph.insert_after(out_matmul, ir.node("Add", [projected, bias], outputs=[shifted]))
            else:
                bias_index = 1 if bias_add.inputs[0] is out_matmul.outputs[0] else 0
                b_o = constant_array(bias_add.inputs[bias_index], f"{where}: output bias").astype(
                    np.float64
                )
                replaced.append(bias_add.inputs[bias_index])
                bias_add.replace_input_with(
                    bias_index,
                    add_initializer(
                        graph, f"{prefix}_out_bias_folded", (b_o + shift).astype(dtype)
                    ),
                )

        new_nodes = NewNodes()
        emit = new_nodes.emit

        constant = add_initializer(
            graph, f"{prefix}_query_head_constant", query_constant.astype(dtype)
        )  # (n, d)
        per_head = emit("Unsqueeze", [query, ints(graph, f"{prefix}_axis2", [2])])  # (B, T, 1, d)
        per_head = emit("Mul" if mode == "mul" else "Add", [per_head, constant])  # (B, T, n, d)
        q_all = emit(
            "Reshape", [per_head, ints(graph, f"{prefix}_bt_flat", [0, 0, -1])]
        )  # (B, T, n*d)
        mask = None
        if not _is_zero_constant(attn_bias):
            # ONNX Runtime's CPU kernel wants the mask's query axis spelled out: (B, 1, 1, S) -> (B, 1, T, S).
            q_len = emit("Shape", [query], {"start": 1, "end": 2})
            target = emit(
                "Concat",
                [ints(graph, f"{prefix}_ones2", [1, 1]), q_len, ints(graph, f"{prefix}_one", [1])],
                {"axis": 0},
            )
            mask = emit("Expand", [attn_bias, target])
        keep_cache = any(o.uses() or o.is_graph_output() for o in node.outputs[1:])
        attributes = {"q_num_heads": n, "kv_num_heads": 1, "is_causal": is_causal, "scale": scale}
        inputs = [q_all, key, value, mask] + ([past_key, past_value] if keep_cache else [])
        outputs = emit("Attention", inputs, attributes, num_outputs=3 if keep_cache else 1)
        new_values = list(outputs) if keep_cache else [outputs]
        ir.convenience.replace_nodes_and_values(
            graph, node, [node], new_nodes, list(node.outputs[: len(new_values)]), new_values
        )
        return [v for v in replaced if v is not None]


def _foldable(node: ir.Node):
    """(mode, n, (E_Q, E_K, E_V) as float64, output MatMul, bias Add or None), or GraphRefused saying why not."""
    where = node.name or f"an {node.op_type} node"
    if len(node.inputs) != 9:
        raise GraphRefused(
            f"{where} has {len(node.inputs)} inputs; an mhe_edge MHE attention node has 9"
        )
    attributes = node.attributes
    if any(attributes.get(k) is None for k in ("num_heads", "is_causal")):
        raise GraphRefused(f"{where} lacks one of its attributes num_heads, is_causal")
    mode, n = _mode(node), attributes["num_heads"].as_int()
    embeddings = tuple(
        constant_array(v, f"{where}: head embedding").astype(np.float64) for v in node.inputs[3:6]
    )
    e_q, e_k, e_v = embeddings
    if e_q.ndim != 2 or e_q.shape[0] != n or not e_q.shape == e_k.shape == e_v.shape:
        raise GraphRefused(
            f"{where}: head embeddings of shape {e_q.shape} do not fit num_heads {n}"
        )
    out_matmul = sole_consumer(node.outputs[0], "MatMul")
    if out_matmul is None or out_matmul.inputs[0] is not node.outputs[0]:
        raise GraphRefused(
            f"{where}: its output does not feed one output-projection MatMul; cannot fold E_V"
        )
    w_o = constant_array(out_matmul.inputs[1], f"{where}: output projection")
    if w_o.shape[0] != n * e_q.shape[1]:
        raise GraphRefused(
            f"{where}: the output projection has {w_o.shape[0]} rows, not num_heads * head_dim"
        )
    bias_add = None
    if (
        mode == "add"
    ):  # E_V folds into the output bias: an existing constant one, or one the fold adds
        bias_add = sole_consumer(out_matmul.outputs[0], "Add")
        if bias_add is not None:
            bias = (
                bias_add.inputs[1]
                if bias_add.inputs[0] is out_matmul.outputs[0]
                else bias_add.inputs[0]
            )
            if bias is None or ir.convenience.get_const_tensor(bias) is None:
                # the residual add: this projection has no bias
                bias_add = None
    return mode, n, embeddings, out_matmul, bias_add


def _is_zero_constant(value: ir.Value | None) -> bool:
    if value is None:
        return True
    tensor = ir.convenience.get_const_tensor(value)
    return tensor is not None and not np.any(tensor.numpy())
