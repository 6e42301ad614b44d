"""Read an ONNX file's ModelProto without its weights: every field as written, except that the graph's
initializers come without `raw_data`; where each one's bytes lie in the file is returned beside it.

`onnx.load` reads the whole file and then parses it into a second copy, so a command that only needs the
header (config, metadata, graph) held twice the weights before ONNX Runtime even loaded them once. Here
the file is walked field by field (the protobuf wire format: a varint tag, then a varint, a fixed-width
value or a length-prefixed payload); raw tensor payloads are skipped with a seek, so the header costs
the graph's size, not the weights'.
"""

from __future__ import annotations

import importlib.util
import sys
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import BinaryIO

MODEL_GRAPH = 7  # ModelProto.graph
GRAPH_INITIALIZER = 5  # GraphProto.initializer
TENSOR_NAME, TENSOR_RAW_DATA = 8, 9  # TensorProto.name, TensorProto.raw_data
VARINT, FIXED64, LENGTH, FIXED32 = 0, 1, 2, 5  # wire types (groups, 3 and 4, are not in ONNX)


@dataclass(frozen=True)
class RawData:
    """Where an initializer's raw_data lies in the file."""

    offset: int
    length: int


class WireError(ValueError):
    """The bytes are not a well-formed protobuf message."""


def _varint(stream: BinaryIO) -> int | None:
    """The next varint, or None at the end of the stream."""
    result = shift = 0
    while True:
        byte = stream.read(1)
        if not byte:
            if shift:
                raise WireError("truncated varint")
            return None
        result |= (byte[0] & 0x7F) << shift
        if not byte[0] & 0x80:
            return result
        shift += 7
        if shift > 63:
            raise WireError("varint too long")


def _encode_varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _fields(stream: BinaryIO, end: int):
    """(field number, wire type, start of the field's tag, payload start, payload length) up to `end`;
    the stream is left after each field's payload unless the caller reads it itself."""
    while stream.tell() < end:
        start = stream.tell()
        tag = _varint(stream)
        if tag is None:
            return
        number, wire = tag >> 3, tag & 7
        if wire == VARINT:
            _varint(stream)
            yield number, wire, start, None, None
        elif wire in (FIXED64, FIXED32):
            stream.seek(8 if wire == FIXED64 else 4, 1)
            yield number, wire, start, None, None
        elif wire == LENGTH:
            length = _varint(stream)
            if length is None:
                raise WireError("truncated length")
            payload = stream.tell()
            if payload + length > end:
                raise WireError("a field runs past its message")
            yield number, wire, start, payload, length
            stream.seek(payload + length)
        else:
            raise WireError(f"unsupported wire type {wire}")
        if stream.tell() > end:
            raise WireError("a field runs past its message")


def _copy(stream: BinaryIO, start: int, end: int) -> bytes:
    here = stream.tell()
    stream.seek(start)
    data = stream.read(end - start)
    stream.seek(here)
    return data


def _tensor_without_raw_data(stream: BinaryIO, start: int, length: int):
    """A TensorProto's serialized fields minus raw_data, and where raw_data lies (or None)."""
    kept, raw = bytearray(), None
    for number, _wire, tag_start, payload, size in _fields(stream, start + length):
        field_end = stream.tell() if payload is None else payload + size
        if number == TENSOR_RAW_DATA and payload is not None:
            raw = RawData(payload, size)
        else:
            kept += _copy(stream, tag_start, field_end)
    return bytes(kept), raw


_MESSAGES: ModuleType | None = None


def onnx_messages() -> ModuleType:
    """onnx's generated protobuf module (ModelProto, TensorProto, ...) without `import onnx`.

    Importing onnx also loads its C++ checker and shape inference, ~10 MiB of resident memory in a
    process (`generate`, `profile`) whose only use of onnx is reading a file's header. The generated
    module alone registers the same descriptors in protobuf's default pool, so its classes are onnx's
    own (`onnx.ModelProto is onnx_messages().ModelProto`), whichever of the two is loaded first."""
    global _MESSAGES
    if "onnx" in sys.modules:
        return sys.modules["onnx"].onnx_ml_pb2
    if _MESSAGES is None:
        spec = importlib.util.find_spec("onnx")
        if spec is None or not spec.submodule_search_locations:
            raise ImportError("onnx is not installed")
        source = Path(list(spec.submodule_search_locations)[0]) / "onnx_ml_pb2.py"
        generated = importlib.util.spec_from_file_location("mhe_edge._onnx_ml_pb2", source)
        if generated is None or generated.loader is None:
            raise ImportError(f"onnx has no generated protobuf module at {source}")
        module = importlib.util.module_from_spec(generated)
        generated.loader.exec_module(module)
        _MESSAGES = module
    return _MESSAGES


def read_model_without_weights(path) -> tuple[object, dict[str, RawData]]:
    """(ModelProto without initializer raw_data, {initializer name: where its raw_data lies})."""
    messages = onnx_messages()

    model_bytes = bytearray()
    raw_data: dict[str, RawData] = {}
    with open(path, "rb") as stream:
        stream.seek(0, 2)
        size = stream.tell()
        stream.seek(0)
        for number, _wire, tag_start, payload, length in _fields(stream, size):
            field_end = stream.tell() if payload is None else payload + length
            if number != MODEL_GRAPH or payload is None:
                model_bytes += _copy(stream, tag_start, field_end)
                continue
            graph_bytes = bytearray()
            stream.seek(payload)
            for g_number, _g_wire, g_start, g_payload, g_length in _fields(
                stream, payload + length
            ):
                g_end = stream.tell() if g_payload is None else g_payload + g_length
                if g_number != GRAPH_INITIALIZER or g_payload is None:
                    graph_bytes += _copy(stream, g_start, g_end)
                    continue
                here = stream.tell()
                stream.seek(g_payload)
                tensor, raw = _tensor_without_raw_data(stream, g_payload, g_length)
                stream.seek(here)
                if raw is not None:
                    name = messages.TensorProto.FromString(tensor).name
                    raw_data[name] = raw
                graph_bytes += _encode_varint(GRAPH_INITIALIZER << 3 | LENGTH)
                graph_bytes += _encode_varint(len(tensor)) + tensor
            model_bytes += _encode_varint(MODEL_GRAPH << 3 | LENGTH)
            model_bytes += _encode_varint(len(graph_bytes)) + graph_bytes
            stream.seek(field_end)
    return messages.ModelProto.FromString(bytes(model_bytes)), raw_data
