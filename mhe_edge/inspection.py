"""`inspect`: describe a checkpoint (config, parameters, bytes, KV cache) as a dict a script can read."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from mhe_edge.accounting import count_parameters, kv_cache_bytes_per_token
from mhe_edge.checkpoint import read_checkpoint
from mhe_edge.errors import RequestError


def describe(path: str | os.PathLike) -> dict[str, Any]:
    """A checkpoint (.pt / .safetensors) or an ONNX export (.onnx), described."""
    path = Path(path)
    if path.suffix == ".onnx":
        from mhe_edge.exporters.metadata import describe_onnx

        return describe_onnx(path)
    if path.suffix not in (".pt", ".safetensors"):
        raise RequestError(f"inspect takes a .pt, .safetensors or .onnx file, not {path.name!r}")
    config, state = read_checkpoint(path)
    parameters = count_parameters(config)
    stored = sum(t.numel() for t in state.values())
    report: dict[str, Any] = {
        "path": str(path),
        "kind": "checkpoint",
        "config": config.to_dict(),
        "parameters": parameters,
        "parameter_bytes": parameters["total"] * 4,  # fp32
        "stored_parameters": stored,
        "file_bytes": path.stat().st_size,
    }
    if config.arch == "decoder":
        report["kv_cache_bytes_per_token"] = kv_cache_bytes_per_token(config)
    return report
