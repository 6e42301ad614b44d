"""ONNX export: the fused MHE function op, KV-cache I/O, metadata and parity validation.

`export` is imported lazily so that reading an export's metadata does not import torch.
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = ["ExportReport", "export"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        return getattr(importlib.import_module("mhe_edge.exporters.onnx_export"), name)
    raise AttributeError(f"module 'mhe_edge.exporters' has no attribute {name!r}")
