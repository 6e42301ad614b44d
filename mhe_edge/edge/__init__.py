"""Artifacts for apps: the ONNX Runtime mobile (.ort) format, its reduced-build operator config, and what
onnxruntime-genai needs (genai_config.json, the shared-buffer cache)."""

from mhe_edge.edge.genai import genai_config, genai_greedy, share_cache_buffer
from mhe_edge.edge.ort_format import (
    OPTIMIZATION_LEVELS,
    ToOrtReport,
    read_required_operators,
    to_ort,
)

__all__ = [
    "OPTIMIZATION_LEVELS",
    "ToOrtReport",
    "genai_config",
    "genai_greedy",
    "read_required_operators",
    "share_cache_buffer",
    "to_ort",
]
