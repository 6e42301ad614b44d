"""ONNX files in one place: the header (graph and metadata without the weights), external-data vetting,
a file's size with its external data, and saving and checking graphs.

`read_header` is the door every command that reads an ONNX file goes through first: it refuses files that
are not mhe-edge exports, external data that resolves outside the model's folder, and tensors whose declared
size the bytes behind them do not hold, before ONNX Runtime or any loader touches the weights.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import numpy as np

from mhe_edge.config import ModelConfig
from mhe_edge.contract import (
    ATTENTION_MASK,
    KEY_CONFIG,
    KEY_GRAPH,
    KEY_IO,
    KEY_PRECISION,
    KEY_QUERY_SEQLENS,
    KEY_TARGET,
    LAST_HIDDEN_STATE,
    LOGITS,
    input_names,
    output_names,
    past_names,
    present_names,
)
from mhe_edge.errors import ConfigError, ExportError, ModelFileError, first_line

# protobuf cannot hold 2 GB; weights past this go to external data, leaving room for the graph itself
EXTERNAL_DATA_THRESHOLD = 1_800_000_000
EXTERNAL_DATA_THRESHOLD_TEXT = "1.8 GB"


@dataclass
class OnnxHeader:
    """An mhe-edge export as read from its header: config, metadata and the ModelProto without weights."""

    path: Path
    config: ModelConfig
    metadata: dict[str, str]
    proto: Any = field(repr=False)

    @property
    def io(self) -> dict[str, Any]:
        """The I/O layout the exporter recorded (names, shapes, float dtype), or a clear refusal."""
        if KEY_IO not in self.metadata:
            raise ModelFileError(
                f"{self.path.name} has no {KEY_IO} metadata; re-export it with mhe-edge"
            )
        return parse_metadata_json(self.metadata[KEY_IO], KEY_IO, self.path.name)

    @property
    def float_dtype(self) -> str:
        """ "float32" or "float16": the dtype of the float inputs and outputs."""
        dtype = self.io.get("float_dtype", "float32")
        if dtype not in ("float32", "float16"):
            raise ModelFileError(
                f"{self.path.name} declares float dtype {dtype!r}; expected float32 or float16"
            )
        return dtype

    @property
    def graph(self) -> str:
        return self.metadata.get(KEY_GRAPH, "export")

    @property
    def target(self) -> str | None:
        """The optimize target the file was made for; None for a plain (unoptimized) export."""
        return self.metadata.get(KEY_TARGET)

    @property
    def precision(self) -> str:
        return self.metadata.get(KEY_PRECISION, "fp16" if self.float_dtype == "float16" else "fp32")

    @property
    def batched_chunks(self) -> bool:
        """Whether a batch may prefill in chunks with a past (not: GroupQueryAttention without query_seqlens)."""
        return self.target != "ort" or self.metadata.get(KEY_QUERY_SEQLENS) == "1"

    @property
    def external_files(self) -> list[str]:
        return sorted(external_locations(self.proto))

    @property
    def file_bytes(self) -> int:
        """The .onnx file plus every external-data file it names (each counted once)."""
        return file_bytes(self.path, self.proto)

    @property
    def parameter_bytes(self) -> int:
        """Bytes of every initializer, inline or external, as declared (the header check holds them to it)."""
        return sum(_tensor_bytes(t) for t in self.proto.graph.initializer)

    @property
    def op_counts(self) -> dict[str, int]:
        return op_counts(self.proto.graph.node)


def load_onnx_header(path: str | os.PathLike, with_raw_data: bool = False):
    """The ModelProto without weights (neither external data nor inline raw_data: the graph's size, not
    the weights'), or one clear error. With `with_raw_data`, also where each inline tensor's bytes lie."""
    from mhe_edge.files.lean_proto import read_model_without_weights

    path = Path(path)
    if not path.is_file():
        raise ModelFileError(f"{str(path)!r} is not a file")
    try:
        proto, raw_data = read_model_without_weights(path)
    except Exception as exc:  # a malformed wire format, protobuf DecodeError and friends
        raise ModelFileError(
            f"{path.name} is not a readable ONNX file: {first_line(exc, 200)}"
        ) from exc
    return (proto, raw_data) if with_raw_data else proto


def read_header(path: str | os.PathLike) -> OnnxHeader:
    """Config, metadata and header of an mhe-edge export, its tensors vetted (read from the file in
    chunks: the header never holds the weights)."""
    path = Path(path)
    proto, raw_data = load_onnx_header(path, with_raw_data=True)
    props = {p.key: p.value for p in proto.metadata_props}
    config = config_from_metadata(props, path.name)
    check_tensor_sizes(proto, path, raw_data)
    check_io_matches_config(proto, config, path.name)
    header = OnnxHeader(path, config, props, proto)
    _ = header.float_dtype  # parses and checks the I/O layout now, not in the middle of a command
    return header


MAX_METADATA_CHARS = 1_000_000  # an honest entry is a few KB
MAX_METADATA_DEPTH = 8  # the deepest entry mhe-edge writes nests 3 levels


def parse_metadata_json(text: str, key: str, name: str) -> dict[str, Any]:
    """A metadata entry as a JSON object, refused when too long, too deeply nested or not JSON."""
    if not isinstance(text, str):  # protobuf hands back bytes for a string field that is not UTF-8
        raise ModelFileError(f"{name}: metadata {key} is not UTF-8 text")
    if len(text) > MAX_METADATA_CHARS:
        raise ModelFileError(f"{name}: metadata {key} is {len(text):,} characters long; refused")
    depth = deepest = 0
    for ch in text:  # cheap bound on nesting before the parser recurses
        depth += ch in "[{"
        depth -= ch in "]}"
        deepest = max(deepest, depth)
    if deepest > MAX_METADATA_DEPTH:
        raise ModelFileError(f"{name}: metadata {key} nests {deepest} levels deep; refused")
    try:
        value = json.loads(text)
    except (json.JSONDecodeError, RecursionError) as exc:
        raise ModelFileError(f"{name}: metadata {key} is not JSON") from exc
    if not isinstance(value, dict):
        raise ModelFileError(f"{name}: metadata {key} is not a JSON object")
    return value


def config_from_metadata(props: dict[str, str], name: str) -> ModelConfig:
    if KEY_CONFIG not in props:
        raise ModelFileError(f"{name} is not an mhe-edge export (no {KEY_CONFIG} metadata)")
    try:
        return ModelConfig.from_dict(parse_metadata_json(props[KEY_CONFIG], KEY_CONFIG, name))
    except (ConfigError, TypeError) as exc:
        raise ModelFileError(f"{name} has unreadable mhe-edge metadata: {exc}") from exc


def check_io_matches_config(proto, config: ModelConfig, name: str) -> None:
    """The graph's own inputs and outputs must be what the metadata's config says: names in order (decoders
    from before the attention_mask input have none), and every fixed size (KV heads, head size,
    vocabulary, width) equal. A file whose metadata lies is refused here, not deep inside a run."""
    inputs = [v.name for v in proto.graph.input]
    outputs = [v.name for v in proto.graph.output]
    expected_inputs = input_names(config)
    without_mask = [
        n for n in expected_inputs if n != ATTENTION_MASK
    ]  # decoders exported before the mask input
    if inputs not in (
        expected_inputs,
        without_mask if config.arch == "decoder" else expected_inputs,
    ) or outputs != output_names(config):
        raise ModelFileError(
            f"{name}: the graph's inputs/outputs do not match its metadata ({len(inputs)} inputs, "
            f"{len(outputs)} outputs; the config describes a {config.n_layers}-layer {config.arch})"
        )
    fixed = {}
    for value in [*proto.graph.input, *proto.graph.output]:
        dims = [
            d.dim_value if d.HasField("dim_value") else None
            for d in value.type.tensor_type.shape.dim
        ]
        fixed[value.name] = dims
    wanted = {
        n: [None, config.kv_heads, None, config.head_dim]
        for n in (*past_names(config.n_layers), *present_names(config.n_layers))
    }
    wanted[LOGITS] = [None, None, config.vocab_size]
    wanted[LAST_HIDDEN_STATE] = [None, None, config.d_model]
    for value_name, want in wanted.items():
        got = fixed.get(value_name)
        if got is None:
            continue
        if len(got) != len(want) or any(
            g is not None and w is not None and g != w for g, w in zip(got, want)
        ):
            raise ModelFileError(
                f"{name}: {value_name} has shape {got} in the graph but {want} by its metadata"
            )


def check_tensor_sizes(proto, path: Path, raw_data: dict | None = None) -> None:
    """Refuse tensors whose declared size does not match the bytes behind them (a small file declaring a
    huge tensor would otherwise make a loader allocate it), and external data outside the model's folder.
    `raw_data` (from `load_onnx_header`) says where inline tensors' bytes lie in `path` when the proto
    holds none."""
    raw_data = raw_data or {}
    external_data_files(proto, path)
    sparse = [t.values.name or "unnamed" for t in proto.graph.sparse_initializer]
    sparse += [
        n.name or n.op_type
        for n in proto.graph.node
        for a in n.attribute
        if a.type == a.SPARSE_TENSOR
    ]
    if sparse:  # densifying one can take any amount of memory; mhe-edge never writes them
        raise ModelFileError(
            f"{path.name} holds sparse tensors ({sparse[0]}); mhe-edge files have none, refused"
        )
    folder = path.resolve().parent
    for tensor in proto.graph.initializer:
        declared = _tensor_bytes(tensor)
        location = {e.key: e.value for e in tensor.external_data}
        if location:
            data = folder / location["location"]
            offset, length = int(location.get("offset", 0)), int(location.get("length", declared))
            if not data.is_file() or offset + length > data.stat().st_size or length != declared:
                raise ModelFileError(
                    f"{path.name}: tensor {tensor.name!r} declares {declared:,} bytes its external data does not hold"
                )
        elif tensor.name in raw_data and not tensor.raw_data:
            where = raw_data[tensor.name]
            if where.length != declared:
                raise ModelFileError(
                    f"{path.name}: tensor {tensor.name!r} declares {declared:,} bytes but holds {where.length:,}"
                )
            if tensor.data_type in _FLOAT_TYPES and not _finite_in_file(
                path, where, _FLOAT_TYPES[tensor.data_type]
            ):
                raise ModelFileError(
                    f"{path.name}: tensor {tensor.name!r} holds NaN or infinite values"
                )
        elif tensor.raw_data and len(tensor.raw_data) != declared:
            raise ModelFileError(
                f"{path.name}: tensor {tensor.name!r} declares {declared:,} bytes but holds {len(tensor.raw_data):,}"
            )
        elif tensor.raw_data and tensor.data_type in _FLOAT_TYPES:
            values = np.frombuffer(tensor.raw_data, dtype=_FLOAT_TYPES[tensor.data_type])
            if not np.isfinite(values).all():
                raise ModelFileError(
                    f"{path.name}: tensor {tensor.name!r} holds NaN or infinite values"
                )


_FLOAT_TYPES = {1: np.float32, 10: np.float16, 11: np.float64}  # TensorProto FLOAT, FLOAT16, DOUBLE
CHECK_CHUNK_BYTES = 4 << 20  # the finite-values check reads weights in chunks of this size


def _finite_in_file(path: Path, where, dtype) -> bool:
    """Whether the `where.length` bytes at `where.offset` of `path` hold only finite `dtype` values."""
    item = np.dtype(dtype).itemsize
    chunk = CHECK_CHUNK_BYTES - CHECK_CHUNK_BYTES % item
    with open(path, "rb") as stream:
        stream.seek(where.offset)
        left = where.length
        while left > 0:
            data = stream.read(min(chunk, left))
            if not data:
                return False
            left -= len(data)
            if not np.isfinite(np.frombuffer(data, dtype=dtype)).all():
                return False
    return True


def external_locations(proto) -> set[str]:
    """The external-data file names a model's initializers point to (unchecked)."""
    return {
        e.value for t in proto.graph.initializer for e in t.external_data if e.key == "location"
    }


def external_data_files(proto, path: Path) -> set[str]:
    """The external-data files a model names; refuses any that would resolve outside the model's folder."""
    folder = path.resolve().parent
    files = external_locations(proto)
    for name in files:
        if Path(name).is_absolute() or folder not in (folder / name).resolve().parents:
            raise ModelFileError(
                f"{path.name} points its external data outside its folder ({name!r}); refused"
            )
    return files


def file_bytes(path: str | os.PathLike, proto=None) -> int:
    """Bytes on disk of an ONNX file and the external-data files its header names (`proto`, or read here)."""
    path = Path(path)
    proto = proto if proto is not None else load_onnx_header(path)
    companions = [path.parent / name for name in external_locations(proto)]
    return path.stat().st_size + sum(p.stat().st_size for p in companions if p.is_file())


def _tensor_bytes(tensor) -> int:
    if tensor.data_type == _STRING:
        return 0
    numel = 1
    for dim in tensor.dims:
        numel *= dim
    if (
        tensor.data_type in _PACKED_4BIT
    ):  # two elements per byte (int4 weights: MatMulNBits, GatherBlockQuantized)
        return (numel + 1) // 2
    if tensor.data_type not in _ITEM_BYTES:
        raise ModelFileError(
            f"tensor {tensor.name!r} has ONNX data type {tensor.data_type}, which mhe-edge does not read"
        )
    return numel * _ITEM_BYTES[tensor.data_type]


_STRING = 8  # TensorProto.STRING: no fixed size
_PACKED_4BIT = {22, 21, 23}  # TensorProto.INT4, UINT4, FLOAT4E2M1
# bytes per element by TensorProto data type: FLOAT, UINT8, INT8, UINT16, INT16, INT32, INT64, -, BOOL,
# FLOAT16, DOUBLE, UINT32, UINT64, COMPLEX64, COMPLEX128, BFLOAT16, the four FLOAT8s and FLOAT8E8M0
# (a table, not onnx.helper, so reading a header needs no `import onnx`)
_ITEM_BYTES = {
    **dict(zip(range(1, 8), (4, 1, 1, 2, 2, 4, 8))),
    **dict(zip(range(9, 17), (1, 2, 8, 4, 8, 8, 16, 2))),
    **{t: 1 for t in (17, 18, 19, 20, 24)},
}


# --- onnx_ir models: counting, saving, checking


def op_counts(nodes) -> dict[str, int]:
    """Nodes by `domain.op_type` (the default domain unprefixed), sorted: an onnx_ir graph or proto nodes."""
    counts = Counter(f"{n.domain}.{n.op_type}" if n.domain else n.op_type for n in nodes)
    return dict(sorted(counts.items()))


def initializer_bytes(ir_model) -> int:
    return sum(
        v.const_value.nbytes
        for v in ir_model.graph.initializers.values()
        if v.const_value is not None
    )


def save_ir_model(ir_model, path: Path, external: bool | None = None) -> bool:
    """Save to `path` (a staging path); external data in `PATH.data` when asked, or automatically when the
    weights pass the protobuf limit. Returns whether the weights went to external data."""
    import onnx_ir as ir

    if external is None:
        external = initializer_bytes(ir_model) > EXTERNAL_DATA_THRESHOLD
    if external:
        ir.save(ir_model, path, external_data=f"{path.name}.data")
    else:  # tensors still pointing at the source's data file are written inline, not left pointing
        from mhe_edge.files.lean_save import save_inline

        save_inline(ir_model, path)
    return external


CHECK_INLINE_BYTES = (
    64 << 10
)  # tensors up to this size keep their bytes for the checker's shape inference


def check_full(path: Path) -> None:
    """The ONNX checker with full shape inference, as one clear error. It is given the graph without its
    large weights (each initializer over CHECK_INLINE_BYTES, or in external data, is declared as a graph
    input of its type and shape instead), so checking costs the graph's size rather than twice the
    weights'; the sizes of those tensors are read_header's to vet."""
    import onnx

    from mhe_edge.files.lean_proto import read_model_without_weights

    lean, raw_data = read_model_without_weights(path)
    proto = cast(onnx.ModelProto, lean)
    kept, declared = [], []
    with open(path, "rb") as stream:
        for tensor in proto.graph.initializer:
            where = raw_data.get(tensor.name)
            external = tensor.data_location == onnx.TensorProto.EXTERNAL
            if external or (where is not None and where.length > CHECK_INLINE_BYTES):
                declared.append(
                    onnx.helper.make_tensor_value_info(tensor.name, tensor.data_type, tensor.dims)
                )
                continue
            if where is not None:  # shapes and scalars: shape inference reads their values
                stream.seek(where.offset)
                tensor.raw_data = stream.read(where.length)
            kept.append(tensor)
    del proto.graph.initializer[:]
    proto.graph.initializer.extend(kept)
    proto.graph.input.extend(declared)
    try:
        onnx.checker.check_model(proto, full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as exc:
        raise ExportError(f"the ONNX checker rejects the graph: {first_line(exc)}") from exc
