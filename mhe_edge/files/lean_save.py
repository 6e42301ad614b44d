"""Write a single-file ONNX model one tensor at a time.

`onnx_ir.save` of a model without external data builds the whole ModelProto (a copy of every weight) and
then serializes it (a second copy) before writing: a process exporting a model held three times its
weights. Here onnx_ir first writes the model with its weights in a staging `.data` file (which it does
tensor by tensor); then the single file is assembled from that: the model's own fields, then the graph
message, whose initializers are written one by one, each with its bytes copied from the staging file in
chunks. Protobuf parsers take fields in any order, so the graph's initializers may follow its other fields,
and the graph may follow the model's other fields.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import BinaryIO

from mhe_edge.files.lean_proto import (
    GRAPH_INITIALIZER,
    LENGTH,
    MODEL_GRAPH,
    TENSOR_RAW_DATA,
    _encode_varint,
)

COPY_CHUNK = 16 << 20  # bytes copied from the staging file at a time


def _tag(number: int) -> bytes:
    return _encode_varint(number << 3 | LENGTH)


def _length_prefixed(number: int, length: int) -> bytes:
    return _tag(number) + _encode_varint(length)


def save_inline(ir_model, path: Path) -> None:
    """Save `ir_model` to `path` as one file (weights inline), holding at most one chunk of weights."""
    import onnx
    import onnx_ir as ir

    staging = path.with_name(f".{path.name}.weights")
    skeleton_path = path.with_name(f".{path.name}.skeleton")
    try:
        ir.save(ir_model, skeleton_path, external_data=staging.name)
        model = onnx.load(str(skeleton_path), load_external_data=False)
        tensors = list(model.graph.initializer)
        model.graph.ClearField("initializer")
        graph = model.graph.SerializeToString()
        model.ClearField("graph")
        # (tensor fields without its data, its serialized size, where its data lies in the staging file)
        pieces = []
        for tensor in tensors:
            if tensor.data_location == onnx.TensorProto.EXTERNAL:
                where = {entry.key: entry.value for entry in tensor.external_data}
                offset, length = int(where.get("offset", 0)), int(where["length"])
                tensor.ClearField("external_data")
                tensor.data_location = onnx.TensorProto.DEFAULT
            else:  # a tensor onnx_ir kept inline (a small one) already holds its data
                offset, length = 0, -1
            head = tensor.SerializeToString()
            pieces.append((head, _tensor_length(head, length), offset, length))
        graph_length = len(graph) + sum(
            len(_length_prefixed(GRAPH_INITIALIZER, size)) + size for _, size, _, _ in pieces
        )
        with (
            open(path, "wb") as out,
            open(staging, "rb") if staging.exists() else contextlib.nullcontext() as data,
        ):
            out.write(model.SerializeToString())
            out.write(_length_prefixed(MODEL_GRAPH, graph_length))
            out.write(graph)
            for head, size, offset, length in pieces:
                out.write(_length_prefixed(GRAPH_INITIALIZER, size))
                out.write(head)
                if length >= 0:
                    out.write(_length_prefixed(TENSOR_RAW_DATA, length))
                    _copy(data, out, offset, length)
    finally:
        for leftover in (staging, skeleton_path):
            leftover.unlink(missing_ok=True)


def _tensor_length(head: bytes, length: int) -> int:
    """The serialized size of a tensor: its other fields, plus its raw_data field when it has one."""
    return len(head) + (
        len(_length_prefixed(TENSOR_RAW_DATA, length)) + length if length >= 0 else 0
    )


def _copy(source: BinaryIO | None, out: BinaryIO, offset: int, length: int) -> None:
    if source is None:
        raise ValueError("an initializer points at external data that was not written")
    source.seek(offset)
    left = length
    while left:
        chunk = source.read(min(COPY_CHUNK, left))
        if not chunk:
            raise ValueError("the staged weights are shorter than the model says")
        out.write(chunk)
        left -= len(chunk)
