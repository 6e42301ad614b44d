"""Artifacts for apps: the ONNX Runtime mobile (.ort) format and its reduced-build operator config."""
from mhe_edge.edge.ort_format import OPTIMIZATION_LEVELS, read_required_operators, to_ort

__all__ = ["OPTIMIZATION_LEVELS", "read_required_operators", "to_ort"]
