"""Tied heads at int4: a head that reads the embedding table transposed (`MatMul(x, Transpose(E))`) gets
a constant weight of its own to quantize, and the table's Gathers then read the head's 4-bit bytes
(a copy by default, the head's own initializers when shared)."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from mhe_edge.contract import MS_DOMAIN
from mhe_edge.passes._graph import GraphRefused, NewNodes, ints, register_tensor


def tied_heads(model: ir.Model) -> list[tuple[ir.Node, ir.Node]]:
    """(MatMul, Transpose) pairs where the MatMul's weight is a 2-D float32 initializer transposed."""
    pairs = []
    for node in model.graph:
        if node.op_type != "MatMul" or node.domain != "" or node.inputs[1] is None:
            continue
        producer = node.inputs[1].producer()
        if producer is None or producer.op_type != "Transpose" or producer.domain != "":
            continue
        perm = producer.attributes.get("perm")
        source = producer.inputs[0]
        tensor = None if source is None else ir.convenience.get_const_tensor(source)
        if (
            tensor is not None
            and tensor.dtype == ir.DataType.FLOAT
            and len(tensor.shape) == 2
            and (perm is None or list(perm.as_ints()) == [1, 0])
        ):
            pairs.append((node, producer))
    return pairs


def untie_heads(model: ir.Model) -> dict[str, str]:
    """Give each tied head its own constant weight (E transposed, computed only when read), so the
    quantizer sees a MatMul it can take; the Transpose goes once nothing reads it. Returns each head's
    output name with its table's name, for the table to share the head's 4-bit weight afterwards."""
    graph, heads = model.graph, {}
    for matmul, transpose in tied_heads(model):
        table = transpose.inputs[0]
        tensor = None if table is None else ir.convenience.get_const_tensor(table)
        if table is None or table.name is None or tensor is None:  # only constant tables come here
            continue
        matmul.replace_input_with(1, _transposed_initializer(graph, table.name, tensor))
        heads[matmul.outputs[0].name or ""] = table.name
        if not transpose.outputs[0].uses() and not transpose.outputs[0].is_graph_output():
            graph.remove(transpose, safe=True)
    return heads


def _transposed_initializer(graph: ir.Graph, table_name: str, table) -> ir.Value:
    rows, cols = table.shape
    lazy = ir.LazyTensor(
        lambda: ir.tensor(np.ascontiguousarray(table.numpy().T)),
        dtype=ir.DataType.FLOAT,
        shape=ir.Shape([cols, rows]),
        name=f"{table_name}_transposed",
    )
    return register_tensor(graph, lazy)


def tables_from_heads(
    graph: ir.Graph, heads: dict[str, str], block_size: int, share: bool
) -> set[str]:
    """Give each tied table's Gathers its head's 4-bit weight, as a GatherBlockQuantized with the head's
    scales: the head quantizes each row of E in blocks along the width, as the table's own
    round-to-nearest would, so these are the table's bytes without quantizing E a second time. By
    default the table gets a copy, as signed int4 (N, width): ONNX Runtime frees the head's own bytes
    once it has prepacked them, so a session holds one copy of each. With `share` it reads the head's
    packed (N, blocks, bytes) initializer itself, blocks along the last axis (uint8 data follows
    MatMulNBits' conventions, the default zero point 8 included), with the scales as (N, blocks, 1) and
    a Reshape of the gathered rows to (..., width): one copy in the file (a Reshape of the bytes, as
    onnxruntime-genai's builder writes, would be constant-folded into a second one). The names of the
    tables served are returned; a head left float, with zero points (asymmetric and HQQ: their own
    layouts), a width not a multiple of `block_size` or ids of unknown rank leaves the table to its own
    quantization."""
    producers = {out.name: node for node in graph for out in node.outputs}
    served = set()
    for head_output, table_name in heads.items():
        head = producers.get(head_output)
        table = graph.initializers.get(table_name)
        tensor = None if table is None else table.const_value
        if (
            head is None
            or head.op_type != "MatMulNBits"
            or len(head.inputs) > 3
            or table is None
            or tensor is None
            or len(tensor.shape) != 2
        ):
            continue
        rows, width = tensor.shape.numpy()
        gathers = [
            n
            for n in table.consumers()
            if n.op_type == "Gather"
            and n.domain == ""
            and n.inputs[0] is table
            and not n.attributes.get_int("axis")
            and n.inputs[1] is not None
            and n.inputs[1].shape is not None
        ]
        packed, scales = head.inputs[1], head.inputs[2]
        if width % block_size or not gathers or packed is None or scales is None:
            continue
        new = NewNodes()
        if share:  # the head's bytes as (N, blocks, bytes), blocks along the last axis
            data = packed
            blocks_shape = [rows, width // block_size, 1]
            scales = new.emit(
                "Reshape", [scales, ints(graph, f"{table_name}_blocks", blocks_shape)]
            )
        else:  # a copy as signed int4 (N, width): MatMulNBits stores q + 8 in each nibble
            signed = (_array(packed) ^ np.uint8(0x88)).reshape(rows, width // 2)
            data = register_tensor(
                graph,
                ir.PackedTensor(
                    signed, ir.DataType.INT4, shape=[rows, width], name=f"{table_name}_Q4"
                ),
            )
            scales = register_tensor(
                graph, ir.tensor(_array(scales).copy(), name=f"{table_name}_scales")
            )
        for gather in gathers:
            ids = gather.inputs[1]
            assert ids is not None and ids.shape is not None  # as filtered above
            quantize_axis = 2 if share else 1
            gathered = new.emit(
                "GatherBlockQuantized",
                [data, ids, scales],
                {
                    "bits": 4,
                    "block_size": block_size,
                    "gather_axis": 0,
                    "quantize_axis": quantize_axis,
                },
                domain=MS_DOMAIN,
            )  # (*ids, width), or (*ids, blocks, block_size) when shared
            if share:
                width_shape = [0] * len(ids.shape) + [width]
                gathered = new.emit(
                    "Reshape", [gathered, ints(graph, f"{table_name}_row", width_shape)]
                )
            ir.convenience.replace_nodes_and_values(
                graph, gather, [gather], list(new), gather.outputs, [gathered]
            )
            new.clear()
        served.add(table_name)
    return served


def _array(value: ir.Value) -> np.ndarray:
    tensor = value.const_value
    if tensor is None:
        raise GraphRefused(f"{value.name} is not a constant")
    return tensor.numpy()
