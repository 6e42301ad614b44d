"""`inspect`: describe a checkpoint (config, parameters, bytes, KV cache) or an ONNX export (metadata, I/O,
opsets, op counts) as a typed result a script can read."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mhe_edge.accounting import count_parameters, kv_cache_bytes_per_token
from mhe_edge.contract import KEY_ATTENTION, KEY_VERSION
from mhe_edge.errors import RequestError
from mhe_edge.results import Result


@dataclass
class Description(Result):
    path: str
    kind: str  # "checkpoint" or "onnx"
    config: dict[str, Any]
    parameters: dict[str, int]  # by component, from the config
    parameter_bytes: int
    file_bytes: int  # with external data, for ONNX
    kv_cache_bytes_per_token: int | None = None  # decoders, fp32
    stored_parameters: int | None = None  # checkpoints and folders: elements actually loaded
    mhe_edge_version: str | None = None  # ONNX from here on
    graph: str | None = None
    attention: str | None = None
    target: str | None = None
    precision: str | None = None
    io: dict[str, Any] | None = None
    opset: dict[str, int] | None = None
    functions: list[str] | None = None
    op_counts: dict[str, int] | None = None
    external_data: list[str] = field(default_factory=list)
    mobile_coverage: dict[str, Any] | None = None  # with mobile=True: NNAPI/CoreML share of nodes

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in super().to_dict().items() if v is not None}


def describe(path: str | os.PathLike, *, mobile: bool = False) -> Description:
    """A checkpoint (.pt / .safetensors), a model folder or an ONNX export (.onnx), described; `mobile` adds
    the share of an export's nodes ONNX Runtime's NNAPI and CoreML providers would take.

    Example: `mhe_edge.describe("model.onnx").op_counts`
    """
    path = Path(path)
    if path.suffix == ".onnx":
        description = _describe_onnx(path)
        if mobile:
            from mhe_edge.edge.mobile import mobile_coverage

            description.mobile_coverage = mobile_coverage(path)
        return description
    if mobile:
        raise RequestError("--mobile describes ONNX files; export the model first")
    folder = path.is_dir()
    if not folder and path.suffix not in (".pt", ".safetensors"):
        raise RequestError(
            f"inspect takes a .pt, .safetensors or .onnx file or a model folder, not {path.name!r}"
        )
    from mhe_edge.models import read_checkpoint

    config, state = read_checkpoint(path)
    parameters = count_parameters(config)
    return Description(
        path=str(path),
        kind="folder" if folder else "checkpoint",
        config=config.to_dict(),
        parameters=parameters,
        parameter_bytes=sum(t.numel() * t.element_size() for t in state.values()),
        file_bytes=sum(f.stat().st_size for f in path.iterdir() if f.is_file())
        if folder
        else path.stat().st_size,
        kv_cache_bytes_per_token=kv_cache_bytes_per_token(config)
        if config.arch == "decoder"
        else None,
        stored_parameters=sum(t.numel() for t in state.values()),
    )


def _describe_onnx(path: Path) -> Description:
    from mhe_edge.files import read_header

    header = read_header(path)
    config, proto = header.config, header.proto
    return Description(
        path=str(path),
        kind="onnx",
        config=config.to_dict(),
        parameters=count_parameters(config),
        parameter_bytes=header.parameter_bytes,
        file_bytes=header.file_bytes,
        kv_cache_bytes_per_token=kv_cache_bytes_per_token(config)
        if config.arch == "decoder"
        else None,
        mhe_edge_version=header.metadata.get(KEY_VERSION),
        graph=header.graph,
        attention=header.metadata.get(KEY_ATTENTION),
        target=header.target,
        precision=header.precision,
        io=header.io,
        opset={imp.domain or "ai.onnx": imp.version for imp in proto.opset_import},
        functions=[f"{f.domain}.{f.name}" for f in proto.functions],
        op_counts=header.op_counts,
        external_data=header.external_files,
    )
