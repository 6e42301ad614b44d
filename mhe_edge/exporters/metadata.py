"""The I/O contract of an export, and the metadata that lets an app drive the file on its own."""
from __future__ import annotations

import json
import os
from collections import Counter
from pathlib import Path
from typing import Any

from mhe_edge.accounting import count_parameters, kv_cache_bytes_per_token
from mhe_edge.config import ModelConfig
from mhe_edge.errors import ConfigError, ModelFileError

KEY_VERSION = "mhe_edge.version"
KEY_CONFIG = "mhe_edge.config"
KEY_ATTENTION = "mhe_edge.attention"
KEY_IO = "mhe_edge.io"
KEY_GRAPH = "mhe_edge.graph"  # what produced the graph: "export", later the passes applied

PAST_KEY, PAST_VALUE = "past_key_values.{i}.key", "past_key_values.{i}.value"
PRESENT_KEY, PRESENT_VALUE = "present.{i}.key", "present.{i}.value"


def cache_names(config: ModelConfig, templates: tuple[str, str]) -> list[str]:
    return [t.format(i=i) for i in range(config.n_layers) for t in templates]


def input_names(config: ModelConfig) -> list[str]:
    if config.arch == "encoder":
        return ["input_ids", "attention_mask"]
    return ["input_ids", *cache_names(config, (PAST_KEY, PAST_VALUE))]


def output_names(config: ModelConfig) -> list[str]:
    if config.arch == "encoder":
        return ["last_hidden_state"]
    return ["logits", *cache_names(config, (PRESENT_KEY, PRESENT_VALUE))]


def io_layout(config: ModelConfig, dtype: str = "float32") -> dict[str, Any]:
    """Everything an app needs to feed the model: names, shapes (symbolic), dtypes, the cache."""
    layout: dict[str, Any] = {
        "arch": config.arch,
        "inputs": input_names(config),
        "outputs": output_names(config),
        "input_ids": {"dtype": "int64", "shape": ["batch", "sequence"]},
        "float_dtype": dtype,
        "max_seq_len": config.max_seq_len,
        "vocab_size": config.vocab_size,
    }
    if config.arch == "encoder":
        layout["attention_mask"] = {"dtype": "int64", "shape": ["batch", "sequence"], "meaning": "1 attend, 0 padding"}
        layout["last_hidden_state"] = {"shape": ["batch", "sequence", config.d_model]}
    else:
        layout["logits"] = {"shape": ["batch", "sequence", config.vocab_size]}
        layout["kv_cache"] = {
            "num_layers": config.n_layers,
            "kv_heads": config.kv_heads,
            "head_dim": config.head_dim,
            "past_key": PAST_KEY,
            "past_value": PAST_VALUE,
            "present_key": PRESENT_KEY,
            "present_value": PRESENT_VALUE,
            "past_shape": ["batch", config.kv_heads, "past_sequence", config.head_dim],
            "present_shape": ["batch", config.kv_heads, "past_sequence + sequence", config.head_dim],
            "start": "a past of length 0 starts a generation; feed each present back as the next past",
        }
    return layout


def build_metadata(config: ModelConfig, graph: str, dtype: str = "float32") -> dict[str, str]:
    from mhe_edge import __version__

    return {
        KEY_VERSION: __version__,
        KEY_CONFIG: json.dumps(config.to_dict()),
        KEY_ATTENTION: config.attention,
        KEY_IO: json.dumps(io_layout(config, dtype)),
        KEY_GRAPH: graph,
    }


def config_from_metadata(props: dict[str, str], name: str) -> ModelConfig:
    if KEY_CONFIG not in props:
        raise ModelFileError(f"{name} is not an mhe-edge export (no {KEY_CONFIG} metadata)")
    try:
        return ModelConfig.from_dict(json.loads(props[KEY_CONFIG]))
    except (json.JSONDecodeError, ConfigError, TypeError) as exc:
        raise ModelFileError(f"{name} has unreadable mhe-edge metadata: {exc}") from None


def load_onnx_header(path: str | os.PathLike):
    """The ModelProto without external tensor data (cheap), or one clear error."""
    import onnx

    path = Path(path)
    if not path.is_file():
        raise ModelFileError(f"{str(path)!r} is not a file")
    try:
        return onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # protobuf DecodeError and friends
        raise ModelFileError(f"{path.name} is not a readable ONNX file: {str(exc).strip()[:200] or type(exc).__name__}") from None


def read_metadata(path: str | os.PathLike) -> tuple[ModelConfig, dict[str, str], Any]:
    """Config, metadata and header of an mhe-edge export. Every command that reads an ONNX file comes
    through here first, so the file's tensors are vetted before any runtime or loader touches them."""
    path = Path(path)
    proto = load_onnx_header(path)
    props = {p.key: p.value for p in proto.metadata_props}
    config = config_from_metadata(props, path.name)
    check_tensor_sizes(proto, path)
    return config, props, proto


def check_tensor_sizes(proto, path: Path) -> None:
    """Refuse tensors whose declared size does not match the bytes behind them (a small file declaring a
    huge tensor would otherwise make a loader allocate it), and external data outside the model's folder."""
    external_data_files(proto, path)
    folder = path.resolve().parent
    for tensor in proto.graph.initializer:
        declared = _tensor_bytes(tensor)
        location = {e.key: e.value for e in tensor.external_data}
        if location:
            data = folder / location["location"]
            offset, length = int(location.get("offset", 0)), int(location.get("length", declared))
            if not data.is_file() or offset + length > data.stat().st_size or length != declared:
                raise ModelFileError(f"{path.name}: tensor {tensor.name!r} declares {declared:,} bytes its external data does not hold")
        elif tensor.raw_data and len(tensor.raw_data) != declared:
            raise ModelFileError(
                f"{path.name}: tensor {tensor.name!r} declares {declared:,} bytes but holds {len(tensor.raw_data):,}"
            )


def external_locations(proto) -> set[str]:
    """The external-data file names a model's initializers point to (unchecked)."""
    return {e.value for t in proto.graph.initializer for e in t.external_data if e.key == "location"}


def external_data_files(proto, path: Path) -> set[str]:
    """The external-data files a model names; refuses any that would resolve outside the model's folder."""
    folder = path.resolve().parent
    files = external_locations(proto)
    for name in files:
        if Path(name).is_absolute() or folder not in (folder / name).resolve().parents:
            raise ModelFileError(f"{path.name} points its external data outside its folder ({name!r}); refused")
    return files


def parameter_bytes(proto) -> int:
    """Bytes of every initializer, inline or external, as declared (check_tensor_sizes holds them to it)."""
    return sum(_tensor_bytes(t) for t in proto.graph.initializer)


def _tensor_bytes(tensor) -> int:
    import onnx
    from onnx import helper

    numel = 1
    for dim in tensor.dims:
        numel *= dim
    return numel * helper.tensor_dtype_to_np_dtype(tensor.data_type).itemsize if tensor.data_type != onnx.TensorProto.STRING else 0


def describe_onnx(path: str | os.PathLike) -> dict[str, Any]:
    path = Path(path)
    config, props, proto = read_metadata(path)
    ops = Counter(f"{n.domain}.{n.op_type}" if n.domain else n.op_type for n in proto.graph.node)
    external = external_locations(proto)  # read_metadata has vetted them
    report: dict[str, Any] = {
        "path": str(path),
        "kind": "onnx",
        "mhe_edge_version": props.get(KEY_VERSION),
        "graph": props.get(KEY_GRAPH),
        "attention": props.get(KEY_ATTENTION),
        "config": config.to_dict(),
        "io": json.loads(props.get(KEY_IO, "{}")),
        "opset": {imp.domain or "ai.onnx": imp.version for imp in proto.opset_import},
        "functions": [f"{f.domain}.{f.name}" for f in proto.functions],
        "op_counts": dict(sorted(ops.items())),
        "parameters": count_parameters(config),
        "parameter_bytes": parameter_bytes(proto),
        "file_bytes": path.stat().st_size + sum((path.parent / e).stat().st_size for e in external if (path.parent / e).is_file()),
        "external_data": sorted(external),
    }
    if config.arch == "decoder":
        report["kv_cache_bytes_per_token"] = kv_cache_bytes_per_token(config)
    return report
