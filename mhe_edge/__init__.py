"""mhe-edge: ship MHE-attention transformers to the edge through ONNX and ONNX Runtime.

Names are imported lazily: the runtime and profiler (ONNX Runtime only) never pay for importing torch,
which would also inflate the peak-memory figures they report.
"""
from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_LAZY = {
    "ModelConfig": "mhe_edge.config",
    "preset_config": "mhe_edge.config",
    "MheEdgeError": "mhe_edge.errors",
    "count_parameters": "mhe_edge.accounting",
    "kv_cache_bytes": "mhe_edge.accounting",
    "kv_cache_bytes_per_token": "mhe_edge.accounting",
    "load_model": "mhe_edge.checkpoint",
    "save_checkpoint": "mhe_edge.checkpoint",
    "build_model": "mhe_edge.models",
}

__all__ = ["__version__", *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'mhe_edge' has no attribute {name!r}")
