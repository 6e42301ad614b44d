"""The `mhe_edge.MHEAttentionAdd` and `mhe_edge.MHEAttentionMul` operators, ONNX functions over standard ops.

Stored in every MHE export's `functions`, so stock ONNX Runtime (Python, C++, mobile) runs the model with
no custom-op library: it inlines the body. The body follows the per-head definition literally (it
materialises n key and value heads); the graph passes replace the node with single-KV-head attention.

Inputs:
  query, key, value      (B, T, d)      the shared projections X W_Q + b, X W_K + b, X W_V + b
  q_emb, k_emb, v_emb    (n, d)         the head embeddings
  past_key, past_value   (B, 1, P, d)   the single-head cache (P may be 0)
  attn_bias              additive, broadcastable to (B, n, T, P+T); decoders pass a scalar 0
Attributes: num_heads (n), is_causal (0 | 1; bottom-right aligned with a past).
The mode is the operator itself (one function each, chosen at export), so no runtime has to branch on a
string inside the function (some runtimes cannot).
Outputs: output (B, T, n*d) with head i in columns [i*d, (i+1)*d); present_key, present_value (B, 1, P+T, d).
"""

from __future__ import annotations

import onnx
from onnxscript import opset23 as op
from onnxscript import script
from onnxscript.values import Opset

from mhe_edge.contract import DOMAIN, DOMAIN_VERSION, OP_TYPES

mhe_edge_opset = Opset(DOMAIN, DOMAIN_VERSION)


@script(mhe_edge_opset, default_opset=op)
def MHEAttentionMul(
    query,
    key,
    value,
    q_emb,
    k_emb,
    v_emb,
    past_key,
    past_value,
    attn_bias,
    num_heads: int,
    is_causal: int,
):
    present_key = op.Concat(past_key, op.Unsqueeze(key, [1]), axis=2)  # (B, 1, S, d)
    present_value = op.Concat(past_value, op.Unsqueeze(value, [1]), axis=2)  # (B, 1, S, d)
    q_shared = op.Unsqueeze(query, [1])  # (B, 1, T, d)
    e_q = op.Unsqueeze(q_emb, [0, 2])  # (1, n, 1, d)
    e_k = op.Unsqueeze(k_emb, [0, 2])
    e_v = op.Unsqueeze(v_emb, [0, 2])
    q_heads = op.Mul(
        q_shared, e_q
    )  # (B, n, T, d); the Add function has Add here (see mhe_attention_function)
    k_heads = op.Mul(present_key, e_k)  # (B, n, S, d)
    v_heads = op.Mul(present_value, e_v)
    head_dim = op.Cast(op.Shape(query, start=2), to=1)  # float
    scale = op.CastLike(op.Reciprocal(op.Sqrt(head_dim)), query)
    scores = op.Mul(
        op.MatMul(q_heads, op.Transpose(k_heads, perm=[0, 1, 3, 2])), scale
    )  # (B, n, T, S)
    scores = op.Add(scores, op.CastLike(attn_bias, scores))
    # Causal: query t (absolute position S - T + t) sees keys 0 .. S - T + t.
    q_len = op.Squeeze(op.Shape(query, start=1, end=2))
    kv_len = op.Squeeze(op.Shape(present_key, start=2, end=3))
    q_pos = op.Unsqueeze(
        op.Range(op.Sub(kv_len, q_len), kv_len, op.Constant(value_int=1)), [1]
    )  # (T, 1)
    k_pos = op.Range(op.Constant(value_int=0), kv_len, op.Constant(value_int=1))  # (S,)
    causal = op.Cast(op.Constant(value_int=is_causal), to=9)  # bool
    hidden = op.And(op.Greater(k_pos, q_pos), causal)  # (T, S)
    scores = op.Where(hidden, op.CastLike(op.Constant(value_float=float("-inf")), scores), scores)
    heads = op.MatMul(op.Softmax(scores, axis=-1), v_heads)  # (B, n, T, d)
    output = op.Reshape(
        op.Transpose(heads, perm=[0, 2, 1, 3]), op.Constant(value_ints=[0, 0, -1])
    )  # (B, T, n*d)
    return output, present_key, present_value


HEAD_STEPS = ("q_heads", "k_heads", "v_heads")  # the three nodes where ADD and MUL differ


def mhe_attention_function(mode: str, opset: int) -> onnx.FunctionProto:
    """The FunctionProto for `mode` ("add" or "mul"), importing the model's default-domain opset (the full
    checker insists). One body: the ADD function is the MUL one with its three head steps made Adds."""
    proto = MHEAttentionMul.to_function_proto()
    proto.name = OP_TYPES[mode]
    if mode == "add":
        steps = [node for node in proto.node if node.output and node.output[0] in HEAD_STEPS]
        assert len(steps) == 3, (
            "the MHE function body changed: its head steps are named q_heads, k_heads, v_heads"
        )
        for node in steps:
            node.op_type = "Add"
    for entry in proto.opset_import:
        if entry.domain == "":
            entry.version = opset
    return proto
