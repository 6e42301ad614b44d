"""FuseGqaInputsPass (`--target ort`): one MatMul for Q, K and V, and rotary embedding inside
GroupQueryAttention, as onnxruntime-genai's model builder writes decoders.

After lowering, each layer computes `q = x Wq (+ bq)`, `k = x Wk (+ bk)`, `v = x Wv (+ bv)` from one
normalized input, turns q and k by their positions in the rotate-half layout (`x * cos + cat(-x2, x1) *
sin`, cos and sin from `Cos/Sin(cat(f, f))`, `f = positions * inv_freq`), and feeds GroupQueryAttention
the three. Here that becomes `qkv = x [Wq | Wk | Wv] (+ [bq | bk | bv])` and one GroupQueryAttention
taking the packed input (key and value empty) with `do_rotary=1` and `cos_cache`/`sin_cache`
initializers of `max_seq_len` rows (`cos(p * inv_freq)` for p = 0 .. max_seq_len - 1, the product in
float32 as the export computes it).

Positions: the kernel derives them from `seqlens_k` instead of reading the export's (the attention mask's
cumulative sum). They agree for every lengths form the lowering writes: from shapes (past + i), from the
mask with right padding (row b's new tokens at seqlens_k[b] + 1 - T + i; the first prompt 0 .. T - 1), and
with `query_seqlens` (row s of a chunk at P + s, P the row's tokens before it). For left padding
(`AnyPaddingFromAttentionMaskPass`) they do not: that pass turns rotary back out into explicit
RotaryEmbedding nodes fed the export's positions. A layer whose query or key is not this exact pattern
(MHE's per-head query constant after the rotation) or whose head size is not a multiple of 16 (the
kernel's rotary refuses it) keeps its projections apart, and each of its rotations becomes one
`com.microsoft.RotaryEmbedding` on the export's own (B, T) positions and the same caches. Scaled,
partial or interleaved rotary matches neither and stays written out; a layer with no rotary at all has
its three projections packed only. `modified` says whether any node was rewritten.
"""

from __future__ import annotations

import json

import numpy as np
import onnx_ir as ir
import onnx_ir.passes.common as common

from mhe_edge.contract import KEY_CONFIG, MS_DOMAIN
from mhe_edge.passes._graph import add_concatenated_initializer, add_initializer

COS_CACHE, SIN_CACHE, POSITION_IDS = 7, 8, 9  # GroupQueryAttention's input positions
ROTARY_HEAD_MULTIPLE = 16  # the CPU kernel rotates only head sizes that are a multiple of 16


def _gqa_nodes(graph: ir.Graph) -> list[ir.Node]:
    return [n for n in graph if n.domain == MS_DOMAIN and n.op_type == "GroupQueryAttention"]


def _const(value: ir.Value | None) -> np.ndarray | None:
    tensor = None if value is None else ir.convenience.get_const_tensor(value)
    return None if tensor is None else tensor.numpy()


def _producer(value: ir.Value | None, op_type: str) -> ir.Node | None:
    node = None if value is None else value.producer()
    if node is None or node.op_type != op_type or node.domain not in ("", "ai.onnx"):
        return None
    return node


def _only_read_by(value: ir.Value, node: ir.Node) -> bool:
    return not value.is_graph_output() and all(use.node is node for use in value.uses())


def _projection(value: ir.Value) -> tuple[ir.Value, np.ndarray, np.ndarray | None] | None:
    """(x, W, b) when `value` is `MatMul(x, W)` or `Add(MatMul(x, W), b)`, W a float32 2-D constant, b 1-D."""
    bias = None
    add = _producer(value, "Add")
    if add is not None:
        matmul_out = next((v for v in add.inputs if v is not None and _const(v) is None), None)
        other = next((v for v in add.inputs if v is not matmul_out), None)
        bias = _const(other)
        if (
            matmul_out is None
            or bias is None
            or bias.ndim != 1
            or not _only_read_by(matmul_out, add)
        ):
            return None
        value = matmul_out
    matmul = _producer(value, "MatMul")
    weight = None if matmul is None else _const(matmul.inputs[1])
    if matmul is None or weight is None or weight.ndim != 2 or weight.dtype != np.float32:
        return None
    x = matmul.inputs[0]
    if x is None or (bias is not None and bias.shape != (weight.shape[1],)):
        return None
    return x, weight, bias


def _ints(value: ir.Value | None) -> list[int] | None:
    array = _const(value)
    return None if array is None else [int(a) for a in array.reshape(-1)]


def _is_half(slice_node: ir.Node | None, source: ir.Value, start: int, end: int, size: int) -> bool:
    """Whether `slice_node` takes source[..., start:end] along the last of its 4 axes."""
    if slice_node is None or slice_node.inputs[0] is not source:
        return False
    inputs = list(slice_node.inputs) + [None] * (5 - len(slice_node.inputs))
    starts, ends, axes = _ints(inputs[1]), _ints(inputs[2]), _ints(inputs[3])
    steps = [1] if inputs[4] is None else _ints(inputs[4])
    return (
        starts == [start]
        and ends is not None
        and len(ends) == 1
        and (ends[0] == end or (end == size and ends[0] >= size))
        and axes in ([3], [-1])
        and steps == [1]
    )


def _rotated(
    value: ir.Value, heads: int | None, multiple: int = ROTARY_HEAD_MULTIPLE
) -> tuple[ir.Value, ir.Value, np.ndarray] | None:
    """(the projection before rotation, the angles `cat(f, f)`, inv_freq) when `value` is the rotate-half
    rotation of a (B, T, heads * d) projection, reshaped back to 3-D, d a multiple of `multiple`."""
    back = _producer(value, "Reshape")
    if value.shape is None or len(value.shape) != 3:
        return None
    turned = None if back is None else back.inputs[0]
    add = _producer(turned, "Add")
    if add is None or turned is None or turned.shape is None or len(turned.shape) != 4:
        return None
    if heads is not None and turned.shape[2] != heads or not isinstance(turned.shape[3], int):
        return None
    d = turned.shape[3]
    if d % multiple:
        return None
    muls = [_producer(v, "Mul") for v in add.inputs]
    if any(m is None for m in muls):
        return None
    for cos_mul, sin_mul in (muls, muls[::-1]):
        found = _rotation(cos_mul, sin_mul, d)
        if found is not None:
            return found
    return None


def _rotation(cos_mul, sin_mul, d: int) -> tuple[ir.Value, ir.Value, np.ndarray] | None:
    for view, cos_u in (cos_mul.inputs, cos_mul.inputs[::-1]):
        reshape = _producer(view, "Reshape")
        for rot, sin_u in (sin_mul.inputs, sin_mul.inputs[::-1]):
            concat = _producer(rot, "Concat")
            if reshape is None or concat is None or len(concat.inputs) != 2:
                continue
            axis = concat.attributes.get("axis")
            if axis is None or axis.as_int() not in (3, -1):
                continue
            neg = _producer(concat.inputs[0], "Neg")
            if neg is None or not _is_half(_producer(neg.inputs[0], "Slice"), view, d // 2, d, d):
                continue
            if not _is_half(_producer(concat.inputs[1], "Slice"), view, 0, d // 2, d):
                continue
            angles = _angles(cos_u, sin_u, d)
            projection = reshape.inputs[0]
            if angles is not None and projection is not None:
                return projection, angles[0], angles[1]
    return None


def _angles(cos_u: ir.Value, sin_u: ir.Value, d: int) -> tuple[ir.Value, np.ndarray] | None:
    """(cat(f, f), inv_freq) when cos_u, sin_u are Unsqueeze(Cos/Sin(cat(f, f))) with f = p * inv_freq."""
    u_cos, u_sin = _producer(cos_u, "Unsqueeze"), _producer(sin_u, "Unsqueeze")
    if u_cos is None or u_sin is None or _ints(u_cos.inputs[1]) != _ints(u_sin.inputs[1]):
        return None
    cos, sin = _producer(u_cos.inputs[0], "Cos"), _producer(u_sin.inputs[0], "Sin")
    if cos is None or sin is None or cos.inputs[0] is not sin.inputs[0]:
        return None
    concat = _producer(cos.inputs[0], "Concat")
    if concat is None or len(concat.inputs) != 2 or concat.inputs[0] is not concat.inputs[1]:
        return None
    axis, mul = concat.attributes.get("axis"), _producer(concat.inputs[0], "Mul")
    out = None if mul is None else mul.outputs[0]
    if axis is None or mul is None or out is None or out.shape is None:
        return None
    if axis.as_int() not in (-1, len(out.shape) - 1) or out.shape[-1] != d // 2:
        return None
    inv_freq = next((a for a in map(_const, mul.inputs) if a is not None), None)
    if inv_freq is None or inv_freq.size != d // 2 or inv_freq.dtype != np.float32:
        return None
    if (inv_freq.ndim > 1 and inv_freq.shape[-1] != d // 2) or cos.inputs[0] is None:
        return None
    return cos.inputs[0], inv_freq.reshape(-1)


def rope_caches(inv_freq: np.ndarray, max_positions: int) -> tuple[np.ndarray, np.ndarray]:
    """(cos_cache, sin_cache), each (max_positions, d/2): the angle p * inv_freq in float32, as the export
    multiplies them, then its cosine and sine."""
    angles = np.arange(max_positions, dtype=np.float32)[:, None] * inv_freq[None, :]
    return (
        np.cos(angles.astype(np.float64)).astype(np.float32),
        np.sin(angles.astype(np.float64)).astype(np.float32),
    )


def _positions(angles: ir.Value) -> ir.Value | None:
    """The int64 (B, T) positions p of `cat(f, f)`, f = Unsqueeze(Cast(p)) * inv_freq."""
    mul = _producer(_producer(angles, "Concat").inputs[0], "Mul")  # type: ignore[union-attr]
    source = next((v for v in mul.inputs if _const(v) is None), None)  # type: ignore[union-attr]
    unsqueeze = _producer(source, "Unsqueeze")
    cast = None if unsqueeze is None else _producer(unsqueeze.inputs[0], "Cast")
    positions = None if cast is None else cast.inputs[0]
    if positions is None or positions.dtype != ir.DataType.INT64 or positions.shape is None:
        return None
    return positions if len(positions.shape) == 2 else None


def _rotary_embeddings(graph: ir.Graph, max_positions: int, caches: dict) -> int:
    """Every rotation left outside the kernel becomes one com.microsoft.RotaryEmbedding on the export's own
    positions; returns how many."""
    count = 0
    for node in [n for n in graph if n.op_type == "Reshape" and n.domain in ("", "ai.onnx")]:
        found = _rotated(node.outputs[0], None, multiple=2)
        positions = None if found is None else _positions(found[1])
        if found is None or positions is None:
            continue
        projection, _, inv_freq = found
        cos, sin = _caches(graph, inv_freq, max_positions, caches)
        rotary = ir.node(
            "RotaryEmbedding",
            [projection, positions, cos, sin],
            {"interleaved": 0},
            domain=MS_DOMAIN,
            name=f"{node.name or 'rope'}_rotary",
        )
        rotary.outputs[0].type, rotary.outputs[0].shape = (
            node.outputs[0].type,
            node.outputs[0].shape,
        )
        ir.convenience.replace_nodes_and_values(
            graph, node, [node], [rotary], list(node.outputs), list(rotary.outputs)
        )
        count += 1
    return count


def _caches(graph: ir.Graph, inv_freq: np.ndarray, max_positions: int, caches: dict):
    key = inv_freq.tobytes()
    if key not in caches:
        cos, sin = rope_caches(inv_freq, max_positions)
        caches[key] = (
            add_initializer(graph, "cos_cache", cos),
            add_initializer(graph, "sin_cache", sin),
        )
    return caches[key]


class FuseGqaInputsPass(ir.passes.InPlacePass):
    def requires(self, model: ir.Model) -> None:
        pass  # any graph: GroupQueryAttention nodes that do not fit are left as they are

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        graph = model.graph
        config = json.loads(model.metadata_props.get(KEY_CONFIG, "{}"))
        max_positions = config.get("max_seq_len")
        caches: dict[bytes, tuple[ir.Value, ir.Value]] = {}
        fused = 0
        for node in _gqa_nodes(graph):
            fused += self._fuse(graph, node, max_positions, caches)
        if isinstance(max_positions, int) and _gqa_nodes(graph):
            fused += _rotary_embeddings(graph, max_positions, caches)
        if fused:
            common.RemoveUnusedNodesPass()(
                model
            )  # the rotation, the separate projections, positions
        return ir.passes.PassResult(model, modified=bool(fused))

    def ensures(self, model: ir.Model) -> None:
        for node in _gqa_nodes(model.graph):
            rotary = node.attributes.get("do_rotary")
            if rotary is not None and rotary.as_int() == 1 and node.inputs[SIN_CACHE] is None:
                raise ir.passes.PostconditionError(f"{node.name}: do_rotary without caches")

    def _fuse(self, graph: ir.Graph, node: ir.Node, max_positions, caches) -> bool:
        inputs = list(node.inputs) + [None] * (POSITION_IDS + 1 - len(node.inputs))
        rotary = node.attributes.get("do_rotary")
        if (rotary is not None and rotary.as_int()) or any(
            inputs[i] is not None for i in (COS_CACHE, SIN_CACHE, POSITION_IDS)
        ):
            return False
        query, key, value = inputs[:3]
        if query is None or key is None or value is None:
            return False
        heads = node.attributes["num_heads"].as_int()
        kv_heads = node.attributes["kv_num_heads"].as_int()
        rot_q, rot_k = _rotated(query, heads), _rotated(key, kv_heads)
        cache = None
        if rot_q is not None and rot_k is not None and isinstance(max_positions, int):
            (query, angles_q, inv_freq), (key, angles_k, _) = rot_q, rot_k
            if angles_q is not angles_k:
                return False
            cache = _caches(graph, inv_freq, max_positions, caches)
        elif _producer(query, "Reshape") is not None or _producer(key, "Reshape") is not None:
            return False  # rotated (or reshaped) in a way this pass does not read: leave it
        found = [_projection(v) for v in (query, key, value)]
        projections = [p for p in found if p is not None]
        if len(projections) != 3 or len({id(p[0]) for p in projections}) != 1:
            return False
        x = projections[0][0]
        weight = add_concatenated_initializer(graph, "qkv_weight", [p[1] for p in projections], 1)
        new_nodes = [ir.node("MatMul", [x, weight])]
        if any(p[2] is not None for p in projections):
            bias = np.concatenate(
                [
                    p[2] if p[2] is not None else np.zeros(p[1].shape[1], np.float32)
                    for p in projections
                ]
            ).astype(np.float32)
            new_nodes.append(
                ir.node("Add", [new_nodes[-1].outputs[0], add_initializer(graph, "qkv_bias", bias)])
            )
        packed = new_nodes[-1].outputs[0]
        packed.type = ir.TensorType(ir.DataType.FLOAT)
        attributes = {k: attr.value for k, attr in node.attributes.items()}
        new_inputs = [packed, None, None, *inputs[3:7]]
        if cache is not None:
            attributes.update(do_rotary=1, rotary_interleaved=0)
            new_inputs += [cache[0], cache[1]]
        else:
            new_inputs += [None, None]
        new_inputs += inputs[POSITION_IDS:]
        while new_inputs and new_inputs[-1] is None:
            new_inputs.pop()
        replacement = ir.node(
            node.op_type,
            new_inputs,
            attributes,
            domain=node.domain,
            num_outputs=len(node.outputs),
            name=node.name,
        )
        new_nodes.append(replacement)
        ir.convenience.replace_nodes_and_values(
            graph, node, [node], new_nodes, list(node.outputs), list(replacement.outputs)
        )
        return True
